#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: drill_disrupt
short_description: Crash, freeze or resume one pgha keeper and its PostgreSQL (local platform)
version_added: 0.1.0
description:
  - V(crash) sends SIGKILL to the keeper and to its PostgreSQL's whole process group. When
    O(supervisor_pidfile) is given, the supervisor is SIGSTOPped first so that it cannot restart
    the keeper at once (the classic Stolon drill orphans the StatefulSet for the same reason);
    V(resume) lets it restart the keeper.
  - V(freeze) sends SIGSTOP to the keeper and to its PostgreSQL; V(resume) sends SIGCONT.
  - Finds the processes from the keeper's data directory (its lock file and postmaster.pid).
  - Runs on the host of the keeper.
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    description: Reports the processes it would signal.
  diff_mode:
    support: none
    description: Nothing to compare.
options:
  action:
    description: What to do.
    type: str
    choices: [crash, freeze, resume]
    required: true
  data_dir:
    description: The keeper's C(--data-dir).
    type: path
    required: true
  supervisor_pidfile:
    description: Pidfile of the supervisord that runs the keeper (paused during a crash drill).
    type: path
"""

EXAMPLES = r"""
- name: Crash the primary
  pgha.cluster.drill_disrupt:
    action: crash
    data_dir: /opt/pgha/main/data/keepers/keeper1
    supervisor_pidfile: /opt/pgha/main/run/supervisord.pid
  register: crash

- name: Let the supervisor restart it
  pgha.cluster.drill_disrupt:
    action: resume
    data_dir: /opt/pgha/main/data/keepers/keeper1
    supervisor_pidfile: /opt/pgha/main/run/supervisord.pid
"""

RETURN = r"""
at:
  description: Wall-clock time (seconds since the epoch) of the disruption.
  returned: success
  type: float
  sample: 1795000000.123
signals:
  description: What was signalled.
  returned: success
  type: list
  elements: str
  sample: ["SIGSTOP supervisor 811", "SIGKILL keeper 901", "SIGKILL PostgreSQL process group 930"]
pids:
  description: The keeper's and the postmaster's pids found.
  returned: success
  type: dict
  sample: {"keeper": 901, "postmaster": 930}
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import require_pgha

try:
    from pgha import drill
except ImportError:  # reported by require_pgha
    drill = None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", choices=["crash", "freeze", "resume"], required=True),
            data_dir=dict(type="path", required=True),
            supervisor_pidfile=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    require_pgha(module)
    p = module.params
    if not os.path.isdir(p["data_dir"]):
        module.fail_json(msg="no keeper data directory %s on this host" % p["data_dir"])
    if module.check_mode:
        module.exit_json(changed=True, pids=drill.keeper_processes(p["data_dir"]), signals=[], at=0.0)
    try:
        res = drill.disrupt(p["action"], p["data_dir"], p["supervisor_pidfile"])
    except (RuntimeError, OSError) as exc:
        module.fail_json(msg="%s of the keeper under %s failed: %s" % (p["action"], p["data_dir"], exc))
    module.exit_json(changed=bool(res["signals"]), **res)


if __name__ == "__main__":
    main()
