#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: pki
short_description: Keep a pgha cluster's certificate authority, its host certificates and its store passwords
version_added: 0.1.0
description:
  - Makes the cluster's CA in O(pki_dir) once (C(ca.key) mode 0600, C(ca.crt)), and for each entry of
    O(certificates) a key and a certificate signed by it (C(<name>.key), C(<name>.crt)), made again only
    when the CA, the names or the usage changed or less than 30 days remain (C(pgha.pki) of the
    installed pgha library). Keys are ECDSA P-256; certificates have an empty common name, as etcd's JSON
    gateway wants from its clients.
  - Makes each password file of O(passwords) in O(password_dir) that is missing (24 random letters and
    digits, mode 0600). Never returns a key or a password.
  - Runs on the host that keeps the CA (C(pgha_pki_host)); the roles copy each host's files from there.
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    details: Reports what it would make, makes nothing.
  diff_mode:
    support: none
extends_documentation_fragment:
  - pgha.cluster.attributes
options:
  pki_dir:
    description: Directory of the CA and the certificates (made mode 0700, owned by the user running the module).
    type: path
    required: true
  ca_common_name:
    description: Common name of a new CA.
    type: str
    default: pgha cluster CA
  certificates:
    description: The certificates.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: File name stem (letters, digits, C(.), C(_), C(-)).
        type: str
        required: true
      dns:
        description: DNS names in the subject alternative name.
        type: list
        elements: str
        default: []
      ips:
        description: IP addresses in the subject alternative name.
        type: list
        elements: str
        default: []
      server:
        description: Usable as a TLS server certificate.
        type: bool
        default: true
      client:
        description: Usable as a TLS client certificate.
        type: bool
        default: true
  password_dir:
    description: Directory of the password files (made mode 0700 when missing; an existing one is left as it is).
    type: path
  passwords:
    description: Names of the password files to keep in O(password_dir).
    type: list
    elements: str
    default: []
requirements:
  - The C(pgha) Python package and C(cryptography), importable by the interpreter that runs the module
    (the agents' venv has both).
"""

EXAMPLES = r"""
- name: Keep the CA, this host's certificate and the store passwords
  pgha.cluster.pki:
    pki_dir: /opt/pgha/main/secrets/pki
    certificates:
      - {name: db1, dns: [db1, localhost], ips: [10.0.0.11, 127.0.0.1]}
    password_dir: /opt/pgha/main/secrets/store
    passwords: [root, keeper, sentinel, proxy, operator]
"""

RETURN = r"""
made:
  description: What was made (C(ca), certificate names, C(password <name>)).
  returned: always
  type: list
  elements: str
ca_file:
  description: Path of the CA certificate.
  returned: always
  type: str
"""

import os
import re
import secrets
import string

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import pgha_library, require_pgha

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _password():
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for dummy in range(24))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pki_dir=dict(type="path", required=True),
            ca_common_name=dict(type="str", default="pgha cluster CA"),
            certificates=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                dns=dict(type="list", elements="str", default=[]),
                ips=dict(type="list", elements="str", default=[]),
                server=dict(type="bool", default=True),
                client=dict(type="bool", default=True),
            )),
            password_dir=dict(type="path"),
            passwords=dict(type="list", elements="str", default=[], no_log=False),
        ),
        supports_check_mode=True,
    )
    if module.params["passwords"] and not module.params["password_dir"]:
        module.fail_json(msg="passwords needs password_dir")
    require_pgha(module)
    pki = pgha_library("pki")
    if pki is None:
        module.fail_json(msg="the installed pgha has no pgha.pki, or cryptography is missing: install the "
                             "collection's files/agents (site.yml does) into the interpreter running this module")
    p = module.params
    for name in [c["name"] for c in p["certificates"]] + p["passwords"]:
        if not _NAME.match(name) or name in ("ca", ".", ".."):
            module.fail_json(msg="invalid name %r: use letters, digits, '.', '_' and '-' (and not 'ca')" % name)
    made = []
    pki_dir = p["pki_dir"]
    ca_there = os.path.exists(os.path.join(pki_dir, "ca.key")) and os.path.exists(os.path.join(pki_dir, "ca.crt"))
    if module.check_mode:
        if not ca_there:
            made.append("ca")
        made += [c["name"] for c in p["certificates"]
                 if not os.path.exists(os.path.join(pki_dir, c["name"] + ".crt"))]
        made += ["password %s" % n for n in p["passwords"]
                 if not os.path.exists(os.path.join(p["password_dir"], n))]
        module.exit_json(changed=bool(made), made=made, ca_file=os.path.join(pki_dir, "ca.crt"))
    try:
        ca, new = pki.ensure_ca(pki_dir, p["ca_common_name"])
        if new:
            made.append("ca")
        for c in p["certificates"]:
            new = pki.ensure_certificate(pki_dir, ca, c["name"], dns=tuple(c["dns"]), ips=tuple(c["ips"]),
                                         server=c["server"], client=c["client"])[2]
            if new:
                made.append(c["name"])
        if p["passwords"]:
            os.makedirs(p["password_dir"], mode=0o700, exist_ok=True)  # an existing one keeps its owner and mode
            for name in p["passwords"]:
                path = os.path.join(p["password_dir"], name)
                if os.path.exists(path) and os.path.getsize(path) > 0:
                    continue
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(_password())
                made.append("password %s" % name)
    except (OSError, ValueError) as exc:
        module.fail_json(msg="cannot keep the PKI in %s: %s" % (pki_dir, exc))
    module.exit_json(changed=bool(made), made=made, ca_file=os.path.join(pki_dir, "ca.crt"))


if __name__ == "__main__":
    main()
