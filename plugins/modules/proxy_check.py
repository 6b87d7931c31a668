#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: proxy_check
short_description: Connect through a pgha proxy and check where its ports lead
version_added: 0.1.0
description:
  - Connects with psycopg2 to the proxy's read-write port and checks that it reaches the primary
    (C(pg_is_in_recovery()) is false); when O(ro_port) is given, connects to the read-only port too
    and reports whether it reached a replica.
  - Changes nothing.
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.attributes.info_module
options:
  host:
    description:
      - Address the proxy listens on.
    type: str
    default: 127.0.0.1
  port:
    description:
      - The proxy's read-write port.
    type: int
    required: true
  ro_port:
    description:
      - The proxy's read-only port. Not checked when left out.
    type: int
  require_replica:
    description:
      - Fail unless the read-only port reaches a replica (C(pg_is_in_recovery()) true).
    type: bool
    default: false
  user:
    description:
      - PostgreSQL user to connect as (the keepers refuse the superuser over TCP).
    type: str
    default: app
  password:
    description:
      - Password of O(user). Mutually exclusive with O(password_file).
    type: str
  password_file:
    description:
      - File holding the password of O(user), for example the application role's password file.
    type: path
  database:
    description:
      - Database to connect to.
    type: str
    default: app
  connect_timeout:
    description:
      - Seconds before a connection attempt fails.
    type: int
    default: 5
requirements:
  - psycopg2 (installed with the pgha agents)
"""

EXAMPLES = r"""
- name: The proxy routes writes to the primary and reads to a replica
  pgha.cluster.proxy_check:
    port: 25432
    ro_port: 25433
    require_replica: true
    password_file: /opt/pgha/main/secrets/pg_app_password
  register: pgha_proxy
  until: pgha_proxy is succeeded
  retries: 20
  delay: 2
"""

RETURN = r"""
rw:
  description: What the read-write port reached.
  returned: success
  type: dict
  sample:
    in_recovery: false
    server_port: 5433
    version: PostgreSQL 15.18
ro:
  description: What the read-only port reached (only when O(ro_port) is given).
  returned: when O(ro_port) is given
  type: dict
  sample:
    in_recovery: true
    server_port: 5434
    version: PostgreSQL 15.18
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

PSYCOPG2_IMPORT_ERROR = None
try:
    import psycopg2
except ImportError:
    psycopg2 = None
    PSYCOPG2_IMPORT_ERROR = traceback.format_exc()


def probe(module, port, password):
    p = module.params
    try:
        conn = psycopg2.connect(host=p["host"], port=port, user=p["user"], password=password,
                                dbname=p["database"], connect_timeout=p["connect_timeout"],
                                application_name="pgha.cluster.proxy_check")
    except psycopg2.Error as exc:
        return None, "cannot connect through %s:%d: %s" % (p["host"], port, str(exc).strip())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery(), inet_server_port(), current_setting('server_version')")
            in_recovery, server_port, version = cur.fetchone()
    except psycopg2.Error as exc:
        return None, "query through %s:%d failed: %s" % (p["host"], port, str(exc).strip())
    finally:
        conn.close()
    return dict(in_recovery=in_recovery, server_port=server_port, version="PostgreSQL %s" % version), None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", default="127.0.0.1"),
            port=dict(type="int", required=True),
            ro_port=dict(type="int"),
            require_replica=dict(type="bool", default=False),
            user=dict(type="str", default="app"),
            password=dict(type="str", no_log=True),
            password_file=dict(type="path", no_log=False),  # a path, not a secret
            database=dict(type="str", default="app"),
            connect_timeout=dict(type="int", default=5),
        ),
        mutually_exclusive=[("password", "password_file")],
        supports_check_mode=True,
    )
    if psycopg2 is None:
        module.fail_json(msg=missing_required_lib("psycopg2"), exception=PSYCOPG2_IMPORT_ERROR)
    p = module.params
    password = p["password"]
    if p["password_file"]:
        try:
            with open(p["password_file"]) as f:
                password = f.read().strip()
        except OSError as exc:
            module.fail_json(msg="cannot read password_file %s: %s" % (p["password_file"], exc.strerror))

    result = dict(changed=False)
    rw, error = probe(module, p["port"], password)
    if error:
        module.fail_json(msg="read-write port: " + error, **result)
    result["rw"] = rw
    if rw["in_recovery"]:
        module.fail_json(msg="read-write port %d reached a server in recovery (port %s), not the primary"
                         % (p["port"], rw["server_port"]), **result)
    if p["ro_port"] is not None:
        ro, error = probe(module, p["ro_port"], password)
        if error:
            module.fail_json(msg="read-only port: " + error, **result)
        result["ro"] = ro
        if p["require_replica"] and not ro["in_recovery"]:
            module.fail_json(msg="read-only port %d reached the primary (port %s), not a replica"
                             % (p["ro_port"], ro["server_port"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
