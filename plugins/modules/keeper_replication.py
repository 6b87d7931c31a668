#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: keeper_replication
short_description: Assert that every keeper of a pgha cluster is healthy and every replica streams
version_added: 0.1.0
description:
  - Reads the cluster status and fails, saying which keeper is the problem and why, unless there is
    an elected primary, every keeper is healthy, and every keeper other than the primary is a
    replica streaming from it (within O(max_lag) when given).
  - Changes nothing. Use it with C(until) to wait for replication to settle.
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.attributes.info_module
  - pgha.cluster.store
options:
  keepers:
    description:
      - Uids of the keepers that must be registered. Keepers registered but not listed are checked
        too. By default, the registered keepers (at least one).
    type: list
    elements: str
    default: []
  max_lag:
    description:
      - Largest acceptable replication lag in bytes. No limit when left out.
    type: int
"""

EXAMPLES = r"""
- name: Wait until the three keepers replicate
  pgha.cluster.keeper_replication:
    store_endpoints: http://127.0.0.1:12379
    keepers: [keeper1, keeper2, keeper3]
  register: pgha_replication
  until: pgha_replication is succeeded
  retries: 30
  delay: 2
"""

RETURN = r"""
primary:
  description: Uid of the elected primary.
  returned: always
  type: str
  sample: keeper1
replicas:
  description: Uids of the streaming replicas.
  returned: always
  type: list
  elements: str
  sample: [keeper2, keeper3]
problems:
  description: One sentence per keeper that is not as it should be (empty on success).
  returned: always
  type: list
  elements: str
  sample: ["keeper3: replica not streaming"]
keepers:
  description: The keepers as C(pgha.cluster.cluster_info) returns them.
  returned: always
  type: list
  elements: dict
  sample:
    - uid: keeper2
      healthy: true
      role: replica
      streaming: true
      lag: 0
cluster:
  description: The cluster part of the status (phase, primary, transition, message, ...), as in M(pgha.cluster.cluster_info).
  returned: always
  type: dict
sentinels:
  description: The live sentinels, each with C(uid) and C(leader).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import (
    CtlError,
    StoreError,
    fail_from,
    open_ctl,
    store_argument_spec,
)


def assess(status, expected, max_lag):
    """(primary, streaming replica uids, problems) for a status document."""
    cluster = status.get("cluster") or {}
    keepers = status.get("keepers") or []
    primary = cluster.get("primary")
    problems = []
    if cluster.get("phase") is None:
        problems.append("cluster %s is not initialized" % cluster.get("name"))
    if not primary:
        problems.append("no primary is elected" + (": %s" % cluster["message"] if cluster.get("message") else ""))
    seen = {k.get("uid") for k in keepers}
    for uid in expected:
        if uid not in seen:
            problems.append("%s: not registered in the store" % uid)
    if not keepers and not expected:
        problems.append("no keeper is registered")
    replicas = []
    for k in keepers:
        uid = k.get("uid")
        if not k.get("healthy"):
            problems.append("%s: not healthy (role %s)" % (uid, k.get("role")))
            continue
        if uid == primary:
            if k.get("role") != "primary":
                problems.append("%s: elected primary but running as %s" % (uid, k.get("role")))
            continue
        if k.get("role") != "replica":
            problems.append("%s: expected a replica, is %s" % (uid, k.get("role")))
        elif not k.get("streaming"):
            problems.append("%s: replica not streaming" % uid)
        elif max_lag is not None and k.get("lag") is not None and k["lag"] > max_lag:
            problems.append("%s: lag %d bytes exceeds %d" % (uid, k["lag"], max_lag))
        else:
            replicas.append(uid)
    return primary, replicas, problems


def main():
    argument_spec = store_argument_spec()
    argument_spec.update(
        keepers=dict(type="list", elements="str", default=[]),
        max_lag=dict(type="int"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    ctl = open_ctl(module)
    try:
        status = ctl.status()
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, "reading the status of cluster %s" % module.params["cluster_name"])
    primary, replicas, problems = assess(status, module.params["keepers"], module.params["max_lag"])
    result = dict(changed=False, primary=primary, replicas=replicas, problems=problems,
                  keepers=status.get("keepers") or [], cluster=status.get("cluster") or {},
                  sentinels=status.get("sentinels") or [])
    if problems:
        module.fail_json(msg="replication of cluster %s is not healthy: %s"
                         % (module.params["cluster_name"], "; ".join(problems)), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
