#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup
short_description: Back up a pgha cluster with pgBackRest now
version_added: 0.1.0
description:
  - Asks the primary's keeper for a pgBackRest backup (C(pghactl backup)) and waits for it to
    finish. The keepers need a backup repository (pgha-keeper C(--backup-repo-path), the
    C(pgha_backup_repo_path) variable of the roles); the stanza is the cluster's name.
  - Every run takes a backup, so it always reports a change. The primary's keeper runs pgBackRest;
    the files are copied from a streaming replica on the primary's machine when there is one
    (pgBackRest's backup-standby), so the primary only starts and stops the backup. A replica on
    another machine is not used yet (that needs a pgBackRest server on each host).
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.store
attributes:
  check_mode:
    support: full
    details: Reports that a backup would be taken, and which backups the repository holds.
  diff_mode:
    support: none
options:
  type:
    description:
      - V(full) copies every file; V(diff) what changed since the last full backup; V(incr) what
        changed since the last backup of any type. A V(diff) or V(incr) without a full backup
        before it is taken as a full one by pgBackRest.
    type: str
    choices: [full, diff, incr]
    default: full
  timeout:
    description:
      - Seconds to wait for the backup to finish before failing (the backup goes on).
    type: float
    default: 3600.0
  source:
    description:
      - Whose files the backup copies. V(auto) takes a streaming replica on the primary's machine
        when there is one and the primary otherwise (and again when the one from the replica
        fails); V(standby) fails without such a replica; V(primary) never uses one.
    type: str
    choices: [auto, standby, primary]
    default: auto
"""

EXAMPLES = r"""
- name: Take a full backup
  pgha.cluster.backup:
    cluster_name: main
    store_endpoints: https://127.0.0.1:12379
  register: pgha_backup

- name: Take an incremental backup
  pgha.cluster.backup:
    type: incr
"""

RETURN = r"""
backup:
  description: The backup taken, as C(pghactl backups) lists it, with the request's id, the keeper
    that took it (C(keeper)), the one whose files it copied (C(from)) and how long it took (null
    in check mode).
  returned: success
  type: dict
  sample:
    label: 20261203-101500F
    type: full
    start: 1764756900
    stop: 1764756920
    wal_start: "000000010000000000000004"
    wal_stop: "000000010000000000000004"
    lsn_start: "0/4000028"
    lsn_stop: "0/4000100"
    size_bytes: 4000000
    keeper: keeper1
    from: keeper2
    seconds: 20.1
backups:
  description: The backups in the repository afterwards, oldest first (before, in check mode).
  returned: success
  type: list
  elements: dict
"""

from ansible_collections.pgha.cluster.plugins.module_utils.client import (
    CtlError,
    StoreError,
    fail_from,
    open_ctl,
    run_ctl_module,
)


def run(module, ctl):
    what = "backup of cluster %s" % module.params["cluster_name"]
    if module.check_mode:
        try:
            listed = ctl.backups()
        except (CtlError, StoreError) as exc:
            fail_from(module, exc, what)
        return {"changed": True, "backup": None, "backups": listed}
    try:
        done = ctl.backup(module.params["type"], timeout=module.params["timeout"], source=module.params["source"])
        listed = ctl.backups()
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, what)
    return {"changed": True, "backup": done, "backups": listed}


def main():
    run_ctl_module(run, dict(
        type=dict(type="str", choices=["full", "diff", "incr"], default="full"),
        timeout=dict(type="float", default=3600.0),
        source=dict(type="str", choices=["auto", "standby", "primary"], default="auto"),
    ), open_ctl)


if __name__ == "__main__":
    main()
