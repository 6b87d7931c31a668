#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: store_auth
short_description: Turn etcd authentication on with a user per pgha component
version_added: 0.1.0
description:
  - Makes etcd's C(root) user and, for the cluster, the users and roles C(<cluster>-keeper),
    C(<cluster>-sentinel), C(<cluster>-proxy) and C(<cluster>-operator), each allowed to read the
    cluster's keys and to write only what the component writes (the keeper and proxy their status
    keys, the sentinel and the operator the cluster's keys); then turns authentication on
    (C(pgha.store.auth) of the installed pgha library).
  - Idempotent. Once authentication is on it logs in as C(root) with the password of O(password_dir)/root.
  - Passwords are read from files (O(password_dir)/<component>), never given as options, never returned.
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: none
  diff_mode:
    support: none
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.store
options:
  password_dir:
    description: Directory of the password files C(root), C(keeper), C(sentinel), C(proxy), C(operator).
    type: path
    required: true
notes:
  - O(store_user) and O(store_password_file) are not used, the module logs in as C(root).
"""

EXAMPLES = r"""
- name: Turn etcd authentication on
  pgha.cluster.store_auth:
    store_endpoints: https://10.0.0.1:2379
    store_ca_file: /opt/pgha/main/tls/ca.crt
    store_cert_file: /opt/pgha/main/tls/host.crt
    store_key_file: /opt/pgha/main/tls/host.key
    cluster_name: main
    password_dir: /opt/pgha/main/secrets/store
"""

RETURN = r"""
changes:
  description: What was changed, one line each (users, roles, permissions, C(authentication enabled)).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import (
    StoreError,
    fail_from,
    pgha_library,
    require_pgha,
    store_argument_spec,
)


def main():
    spec = store_argument_spec()
    spec.update(password_dir=dict(type="path", required=True))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=False)
    require_pgha(module)
    auth = pgha_library("store.auth")
    if auth is None:
        module.fail_json(msg="the installed pgha has no pgha.store.auth: install the collection's files/agents "
                             "(site.yml does) into the interpreter running this module")
    cli = pgha_library("cli")
    model = pgha_library("model")
    p = module.params
    try:
        passwords = {c: cli.read_secret_file(os.path.join(p["password_dir"], c), "password file")
                     for c in ("root",) + tuple(auth.COMPONENTS)}
        changes = auth.ensure_auth(p["store_endpoints"], model.keys(p["store_prefix"], p["cluster_name"]),
                                   p["cluster_name"], passwords, ca_file=p["store_ca_file"],
                                   cert_file=p["store_cert_file"], key_file=p["store_key_file"],
                                   timeout=p["store_timeout"])
    except StoreError as exc:
        fail_from(module, exc, "setting up etcd authentication at %s" % p["store_endpoints"], changes=[])
    module.exit_json(changed=bool(changes), changes=changes)


if __name__ == "__main__":
    main()
