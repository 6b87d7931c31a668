#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_info
short_description: List the backups of a pgha cluster and its WAL archiving state
version_added: 0.1.0
description:
  - Returns what C(pghactl backups --format json) prints - the backups in the pgBackRest
    repository, oldest first - and, per keeper, what C(pghactl status) says of its backups and
    archiving (seconds since the last backup and the last archived WAL segment, archive
    failures, what a point-in-time recovery restored).
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
- name: List the backups
  pgha.cluster.backup_info:
    cluster_name: main
    store_endpoints: https://127.0.0.1:12379
  register: pgha_backups

- name: The latest backup's label
  ansible.builtin.debug:
    msg: "{{ (pgha_backups.backups | last).label }}"
"""

RETURN = r"""
backups:
  description: The repository's backups, oldest first (times in Unix seconds).
  returned: success
  type: list
  elements: dict
  sample:
    - label: 20261203-101500F
      type: full
      start: 1764756900
      stop: 1764756920
      wal_start: "000000010000000000000004"
      wal_stop: "000000010000000000000004"
      lsn_start: "0/4000028"
      lsn_stop: "0/4000100"
      size_bytes: 4000000
keepers:
  description: Each keeper's backup state (null for a keeper without a repository).
  returned: success
  type: dict
  sample:
    keeper1:
      stanza: true
      backups: 1
      seconds_since_backup: 35.2
      seconds_since_archived: 4.1
      failed_count: 0
      restored: null
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
        listed = ctl.backups()
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, "listing the backups of cluster %s" % module.params["cluster_name"])
    module.exit_json(changed=False, backups=listed,
                     keepers={k["uid"]: k.get("backup") for k in status.get("keepers", [])})


if __name__ == "__main__":
    main()
