#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: chaos
short_description: Plan the faults of a pgha chaos run, or kill one component on this host (local platform)
version_added: 0.1.0
description:
  - The two parts of C(playbooks/chaos.yml) that are not Ansible.
  - V(plan) chooses one fault per round from O(faults), reproducibly with O(seed) (runs anywhere,
    changes nothing) - a V(kill) of one of O(targets) (etcd members only with O(include_etcd)), or a
    V(partition) of one of O(hosts) from the others (all its traffic, or the store's ports only),
    healed after O(partition_seconds) by a timer on that host. Partitions need three hosts or more.
  - V(kill) sends SIGKILL to program O(name) on this host (a keeper together with its PostgreSQL)
    and lets the platform restart it - supervisord (O(supervisorctl), O(supervisor_config)) or
    systemd (unit C(pgha-<cluster_name>-<name>.service), O(service_manager=systemd)).
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    details: V(plan) changes nothing; V(kill) reports what it would kill.
  diff_mode:
    support: none
    details: Nothing to compare.
extends_documentation_fragment:
  - pgha.cluster.attributes
options:
  action:
    description: What to do.
    type: str
    choices: [plan, kill]
    default: plan
  targets:
    description: The programs a kill may choose from (V(plan)).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Program name (the agent's uid, or the etcd member name).
        type: str
        required: true
      component:
        description: What it is.
        type: str
        required: true
        choices: [keeper, sentinel, proxy, etcd]
      host:
        description: The inventory host it runs on.
        type: str
        default: ""
  hosts:
    description: The cluster's inventory hosts a partition may cut off (V(plan)).
    type: list
    elements: str
    default: []
  faults:
    description: The kinds of fault to choose from (V(plan)).
    type: list
    elements: str
    choices: [kill, partition]
    default: [kill]
  rounds:
    description: How many faults (V(plan)).
    type: int
    default: 12
  partition_seconds:
    description: How long each partition lasts (V(plan)).
    type: float
    default: 8
  include_etcd:
    description: Also kill etcd members.
    type: bool
    default: false
  seed:
    description: Random seed, to replay a run.
    type: int
  name:
    description: The program to kill (V(kill)).
    type: str
  component:
    description: What it is (V(kill); for the report).
    type: str
    default: ""
  cluster_name:
    description: The cluster (systemd unit names).
    type: str
    default: main
  service_manager:
    description: What runs the programs on this host.
    type: str
    choices: [supervisord, systemd]
    default: supervisord
  supervisorctl:
    description: Path of supervisorctl.
    type: path
    default: /opt/pgha/venv/bin/supervisorctl
  supervisor_config:
    description: The cluster's supervisord.conf (supervisord).
    type: path
"""

EXAMPLES = r"""
- name: Plan twelve rounds of kills and partitions
  pgha.cluster.chaos:
    action: plan
    targets:
      - {name: pg1_keeper1, component: keeper, host: pg1}
      - {name: pg2_sentinel1, component: sentinel, host: pg2}
    hosts: [pg1, pg2, pg3]
    faults: [kill, partition]
    rounds: 12
    seed: 7
  register: chaos_plan

- name: Kill a keeper (supervisord restarts it)
  pgha.cluster.chaos:
    action: kill
    name: pg1_keeper1
    component: keeper
    supervisor_config: /opt/pgha/main/supervisord.conf
"""

RETURN = r"""
plan:
  description: One fault per round (V(plan)).
  returned: when O(action=plan)
  type: list
  elements: dict
  sample: [{"round": 1, "fault": "kill", "name": "pg1_keeper1", "component": "keeper", "host": "pg1"},
           {"round": 2, "fault": "partition", "host": "pg3", "scope": "store", "seconds": 8}]
at:
  description: Wall-clock time of the kill.
  returned: when O(action=kill)
  type: float
  sample: 1795000000.1
what:
  description: What was killed.
  returned: when O(action=kill)
  type: str
  sample: SIGKILL keeper pg1_keeper1 (pid 812, 9 processes)
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import pgha_library, require_pgha

chaos = pgha_library("chaos")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", choices=["plan", "kill"], default="plan"),
            targets=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                component=dict(type="str", required=True, choices=["keeper", "sentinel", "proxy", "etcd"]),
                host=dict(type="str", default=""),
            )),
            hosts=dict(type="list", elements="str", default=[]),
            faults=dict(type="list", elements="str", choices=["kill", "partition"], default=["kill"]),
            rounds=dict(type="int", default=12),
            partition_seconds=dict(type="float", default=8),
            include_etcd=dict(type="bool", default=False),
            seed=dict(type="int"),
            name=dict(type="str"),
            component=dict(type="str", default=""),
            cluster_name=dict(type="str", default="main"),
            service_manager=dict(type="str", choices=["supervisord", "systemd"], default="supervisord"),
            supervisorctl=dict(type="path", default="/opt/pgha/venv/bin/supervisorctl"),
            supervisor_config=dict(type="path"),
        ),
        required_if=[("action", "kill", ["name"])],
        supports_check_mode=True,
    )
    require_pgha(module)
    p = module.params
    if p["action"] == "plan":
        targets = [chaos.Target(t["name"], t["component"], t["host"]) for t in p["targets"]]
        try:
            rounds = chaos.plan(targets, p["hosts"], rounds=p["rounds"], faults=tuple(p["faults"]), seed=p["seed"],
                                include_etcd=p["include_etcd"], partition_seconds=p["partition_seconds"])
        except ValueError as exc:
            module.fail_json(msg="cannot plan the chaos: %s" % exc)
        module.exit_json(changed=False, plan=rounds)
    target = chaos.Target(p["name"], p["component"])
    if p["service_manager"] == "systemd":
        platform = chaos.Systemd(p["cluster_name"])
    else:
        if not p["supervisor_config"]:
            module.fail_json(msg="supervisor_config is required with service_manager=supervisord")
        platform = chaos.Supervisor(p["supervisorctl"], p["supervisor_config"])
    if module.check_mode:
        module.exit_json(changed=True, at=0.0, what="would kill %s" % p["name"])
    try:
        res = chaos.kill(target, platform)
    except (RuntimeError, OSError) as exc:
        module.fail_json(msg="cannot kill %s: %s" % (p["name"], exc))
    module.exit_json(changed=not res["what"].endswith("was not running"), **res)


if __name__ == "__main__":
    main()
