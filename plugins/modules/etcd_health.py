#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: etcd_health
short_description: Check that every etcd member of the pgha store is healthy and there is a leader
version_added: 0.1.0
description:
  - Asks each endpoint of O(store_endpoints) for its health and its view of the leader, through the
    pgha library's etcd client.
  - Fails when a member is unhealthy (unless O(min_healthy) allows it) or when no leader is known.
  - Changes nothing. O(cluster_name) and O(store_prefix) are accepted so that the module can share
    C(module_defaults) with the other modules, and are not used.
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.attributes.info_module
  - pgha.cluster.store
options:
  min_healthy:
    description:
      - How many healthy members are enough. By default every endpoint must be healthy.
    type: int
  require_leader:
    description:
      - Fail when no healthy member knows a leader.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Every etcd member is healthy and there is a leader
  pgha.cluster.etcd_health:
    store_endpoints: http://127.0.0.1:12379,http://127.0.0.1:12381,http://127.0.0.1:12383
  register: pgha_etcd
  until: pgha_etcd is succeeded
  retries: 15
  delay: 2

- name: The store is reachable (one member is enough)
  pgha.cluster.etcd_health:
    store_endpoints: http://127.0.0.1:12379
    min_healthy: 1
    require_leader: false
"""

RETURN = r"""
members:
  description: One entry per endpoint.
  returned: always
  type: list
  elements: dict
  sample:
    - endpoint: http://127.0.0.1:12379
      healthy: true
      leader: 8e9e05c52164694d
      member_id: 8e9e05c52164694d
      version: 3.4.23
      error: ""
healthy:
  description: How many members are healthy.
  returned: always
  type: int
  sample: 3
leader:
  description: Member id of the leader, as the healthy members see it (null when none).
  returned: always
  type: str
  sample: 8e9e05c52164694d
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import (
    CtlError,
    StoreError,
    fail_from,
    require_pgha,
    store_argument_spec,
)

try:
    from pgha.store.etcd import EtcdStore
except ImportError:  # reported by require_pgha()
    EtcdStore = None


def check(module, members):
    """Summarize the members; returns (result, failure message or None)."""
    healthy = [m for m in members if m.get("healthy")]
    leaders = sorted({m.get("leader") for m in healthy if m.get("leader")})
    result = dict(changed=False, members=members, healthy=len(healthy),
                  leader=leaders[0] if len(leaders) == 1 else None)
    need = module.params["min_healthy"]
    if need is None:
        need = len(members)
    problems = []
    if len(healthy) < need:
        bad = ["%s (%s)" % (m.get("endpoint"), m.get("error") or "unhealthy") for m in members if not m.get("healthy")]
        problems.append("%d of %d etcd members healthy, %d required; unhealthy: %s"
                        % (len(healthy), len(members), need, ", ".join(bad)))
    if module.params["require_leader"]:
        if not leaders:
            problems.append("no etcd member knows a leader")
        elif len(leaders) > 1:
            problems.append("etcd members disagree on the leader: %s" % ", ".join(leaders))
    return result, "; ".join(problems) or None


def main():
    argument_spec = store_argument_spec()
    argument_spec.update(
        min_healthy=dict(type="int"),
        require_leader=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    require_pgha(module)
    p = module.params
    try:
        store = EtcdStore(p["store_endpoints"], ca_file=p["store_ca_file"], cert_file=p["store_cert_file"],
                          key_file=p["store_key_file"], timeout=p["store_timeout"])
        members = store.member_health()
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, "checking etcd at %s" % p["store_endpoints"], members=[], healthy=0, leader=None)
    result, problem = check(module, members)
    if problem:
        module.fail_json(msg=problem, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
