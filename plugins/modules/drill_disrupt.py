#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: drill_disrupt
short_description: Crash, freeze or resume one pgha keeper, or cut its host off the network (local platform)
version_added: 0.1.0
description:
  - V(crash) sends SIGKILL to the keeper and to its PostgreSQL's whole process group. When
    O(supervisor_pidfile) is given, the supervisor is SIGSTOPped first so that it cannot restart
    the keeper at once (the classic Stolon drill orphans the StatefulSet for the same reason);
    V(resume) lets it restart the keeper.
  - V(freeze) sends SIGSTOP to the keeper and to its PostgreSQL; V(resume) sends SIGCONT.
  - Finds the processes from the keeper's data directory (its lock file and postmaster.pid).
  - V(partition) cuts this host off from O(peers) with an nftables table of its own (both
    directions, established connections included), or only the TCP O(ports) when given; the
    addresses in O(keep) (the controller running the drill) keep their access. V(heal) removes it.
    A timer removes it anyway after O(heal_after) seconds, so a drill that stops halfway never
    leaves a host cut off. Needs nftables on the host.
  - Runs on the host of the keeper (or, for a partition, the host to cut off).
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    details: Reports the processes it would signal, or the rules it would add.
  diff_mode:
    support: none
    details: Nothing to compare.
extends_documentation_fragment:
  - pgha.cluster.attributes
options:
  action:
    description: What to do.
    type: str
    choices: [crash, freeze, resume, partition, heal]
    required: true
  data_dir:
    description: The keeper's C(--data-dir) (V(crash), V(freeze), V(resume)).
    type: path
  supervisor_pidfile:
    description: Pidfile of the supervisord that runs the keeper (paused during a crash drill).
    type: path
  systemd_unit:
    description: The keeper's systemd unit; during a crash drill a run-time drop-in turns its
      C(Restart=) off so that systemd cannot start it at once (V(resume) removes it and starts the unit).
    type: str
  name:
    description: Name of the partition (its nftables table is C(pgha_drill_<name>)).
    type: str
    default: main
  peers:
    description: Addresses to cut this host off from (V(partition)).
    type: list
    elements: str
    default: []
  keep:
    description: Addresses that keep their access (the controller).
    type: list
    elements: str
    default: []
  ports:
    description: Cut only the TCP traffic to and from these ports (for example the store's).
    type: list
    elements: int
    default: []
  heal_after:
    description: Seconds after which the partition heals on its own.
    type: float
    default: 120
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

- name: Cut the primary's host off from the other two, the controller excepted
  pgha.cluster.drill_disrupt:
    action: partition
    peers: [10.0.0.12, 10.0.0.13]
    keep: [10.0.0.1]
    heal_after: 60

- name: Heal it
  pgha.cluster.drill_disrupt:
    action: heal
"""

RETURN = r"""
at:
  description: Wall-clock time (seconds since the epoch) of the disruption.
  returned: success
  type: float
  sample: 1795000000.123
signals:
  description: What was signalled.
  returned: when O(action) is V(crash), V(freeze) or V(resume)
  type: list
  elements: str
  sample: ["SIGSTOP supervisor 811", "SIGKILL keeper 901", "SIGKILL PostgreSQL process group 930"]
pids:
  description: The keeper's and the postmaster's pids found.
  returned: when O(action) is V(crash), V(freeze) or V(resume)
  type: dict
  sample: {"keeper": 901, "postmaster": 930}
table:
  description: The nftables table of the partition.
  returned: when O(action) is V(partition) or V(heal)
  type: str
  sample: pgha_drill_main
rules:
  description: The nftables script of the partition.
  returned: when O(action) is V(partition)
  type: str
  sample: "table inet pgha_drill_main { ... }"
healed:
  description: Whether there was a partition to remove.
  returned: when O(action) is V(heal)
  type: bool
  sample: true
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import pgha_library, require_pgha

drill = pgha_library("drill")
netfault = pgha_library("netfault")


def _network(module):
    p = module.params
    if netfault is None:
        module.fail_json(msg="the pgha installed on this host has no network faults (pgha.netfault): upgrade the "
                             "agents (playbooks/upgrade.yml) before a partition drill")
    try:
        if p["action"] == "partition":
            if module.check_mode:
                rules = netfault.ruleset(netfault.table_name(p["name"]), p["peers"], p["keep"], p["ports"])
                module.exit_json(changed=True, at=0.0, table=netfault.table_name(p["name"]), rules=rules)
            res = netfault.partition(p["name"], p["peers"], p["keep"], p["ports"], p["heal_after"])
            module.exit_json(changed=True, **res)
        if module.check_mode:
            module.exit_json(changed=True, at=0.0, table=netfault.table_name(p["name"]), healed=False)
        res = netfault.heal(p["name"])
        module.exit_json(changed=res["healed"], **res)
    except (netfault.FaultError, OSError) as exc:
        module.fail_json(msg="%s failed: %s" % (p["action"], exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", choices=["crash", "freeze", "resume", "partition", "heal"], required=True),
            data_dir=dict(type="path"),
            supervisor_pidfile=dict(type="path"),
            systemd_unit=dict(type="str"),
            name=dict(type="str", default="main"),
            peers=dict(type="list", elements="str", default=[]),
            keep=dict(type="list", elements="str", default=[]),
            ports=dict(type="list", elements="int", default=[]),
            heal_after=dict(type="float", default=120),
        ),
        required_if=[("action", "crash", ["data_dir"]), ("action", "freeze", ["data_dir"]),
                     ("action", "resume", ["data_dir"]), ("action", "partition", ["peers"])],
        supports_check_mode=True,
    )
    require_pgha(module)
    p = module.params
    if p["action"] in ("partition", "heal"):
        _network(module)
    if not os.path.isdir(p["data_dir"]):
        module.fail_json(msg="no keeper data directory %s on this host" % p["data_dir"])
    if module.check_mode:
        module.exit_json(changed=True, pids=drill.keeper_processes(p["data_dir"]), signals=[], at=0.0)
    try:
        res = drill.disrupt(p["action"], p["data_dir"], p["supervisor_pidfile"], p["systemd_unit"])
    except (RuntimeError, OSError) as exc:
        module.fail_json(msg="%s of the keeper under %s failed: %s" % (p["action"], p["data_dir"], exc))
    module.exit_json(changed=bool(res["signals"]), **res)


if __name__ == "__main__":
    main()
