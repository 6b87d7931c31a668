#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster_info
short_description: Read the status of a pgha cluster
version_added: 0.1.0
description:
  - Returns what C(pghactl status --format json) prints - the cluster phase and elected primary,
    every keeper with its role and replication state, the sentinels and the proxies - together
    with the normalized cluster spec.
  - Changes nothing.
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.attributes.info_module
  - pgha.cluster.store
options: {}
"""

EXAMPLES = r"""
- name: Read the cluster status
  pgha.cluster.cluster_info:
    cluster_name: main
    store_endpoints: http://127.0.0.1:12379,http://127.0.0.1:12381
  register: pgha_status

- name: Wait until a primary is elected
  pgha.cluster.cluster_info:
    store_endpoints: http://127.0.0.1:12379
  register: pgha_status
  until: pgha_status.cluster.primary is truthy
  retries: 30
  delay: 2

- name: Show the replicas
  ansible.builtin.debug:
    msg: "{{ pgha_status.keepers | selectattr('role', '==', 'replica') | map(attribute='uid') }}"
"""

RETURN = r"""
initialized:
  description: Whether the cluster has been initialized (it has a spec).
  returned: success
  type: bool
  sample: true
cluster:
  description: The cluster as a whole.
  returned: success
  type: dict
  sample:
    name: main
    phase: normal
    primary: keeper1
    generation: 4
    message: ""
keepers:
  description: Every registered keeper.
  returned: success
  type: list
  elements: dict
  sample:
    - uid: keeper1
      healthy: true
      role: primary
      address: 127.0.0.1:5433
      timeline: 1
      lsn: 0/3000060
      synchronous: false
      streaming: false
      lag: null
    - uid: keeper2
      healthy: true
      role: replica
      address: 127.0.0.1:5434
      timeline: 1
      lsn: 0/3000060
      synchronous: false
      streaming: true
      lag: 0
sentinels:
  description: Every live sentinel; C(leader) marks the elected one.
  returned: success
  type: list
  elements: dict
  sample:
    - uid: sentinel1
      leader: true
    - uid: sentinel2
      leader: false
proxies:
  description: Every live proxy, with the keeper it routes writes to.
  returned: success
  type: list
  elements: dict
  sample:
    - uid: proxy1
      address: 127.0.0.1:25432
      ro_address: 127.0.0.1:25433
      target: keeper1
spec:
  description: The normalized cluster spec (defaults filled in), or null before init.
  returned: success
  type: dict
  sample:
    sleep_interval: 0.5
    fail_interval: 3.0
    synchronous_replication: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import (
    CtlError,
    StoreError,
    fail_from,
    open_ctl,
    store_argument_spec,
)


def main():
    module = AnsibleModule(argument_spec=store_argument_spec(), supports_check_mode=True)
    ctl = open_ctl(module)
    try:
        status = ctl.status()
        spec = ctl.get_spec()
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, "reading the status of cluster %s" % module.params["cluster_name"])
    module.exit_json(
        changed=False,
        initialized=spec is not None,
        cluster=status.get("cluster", {}),
        keepers=status.get("keepers", []),
        sentinels=status.get("sentinels", []),
        proxies=status.get("proxies", []),
        spec=spec,
    )


if __name__ == "__main__":
    main()
