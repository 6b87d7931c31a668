#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: chaos
short_description: Kill random pgha components for a while and count the failovers (local platform)
version_added: 0.1.0
description:
  - A built-in chaoskube. Every O(interval) seconds for O(duration) seconds it sends SIGKILL to a
    random one of O(targets) (a keeper together with its PostgreSQL) and lets supervisord restart
    it, the way the platform would. etcd members are only chosen with O(include_etcd). Never more
    than O(max_down) targets are down at once.
  - Samples the cluster's primary between kills and returns the failovers it saw.
  - Runs on the host whose supervisord runs the targets.
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.store
attributes:
  check_mode:
    support: full
    description: Returns the targets it would choose from and kills nothing.
  diff_mode:
    support: none
    description: Nothing to compare.
options:
  targets:
    description: Supervisord program names with their component.
    type: list
    elements: dict
    required: true
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
  interval:
    description: Seconds between two kills.
    type: float
    default: 10
  duration:
    description: Seconds of chaos.
    type: float
    default: 120
  max_down:
    description: Most targets down at once.
    type: int
    default: 1
  include_etcd:
    description: Also kill etcd members.
    type: bool
    default: false
  seed:
    description: Random seed, to replay a run.
    type: int
  supervisorctl:
    description: Path of supervisorctl.
    type: path
    default: /opt/pgha/venv/bin/supervisorctl
  supervisor_config:
    description: The cluster's supervisord.conf.
    type: path
    required: true
"""

EXAMPLES = r"""
- name: Two minutes of chaos
  pgha.cluster.chaos:
    cluster_name: main
    store_endpoints: http://127.0.0.1:12379
    targets:
      - {name: keeper1, component: keeper}
      - {name: sentinel1, component: sentinel}
      - {name: proxy1, component: proxy}
    interval: 10
    duration: 120
    supervisor_config: /opt/pgha/main/supervisord.conf
  register: chaos
"""

RETURN = r"""
kills:
  description: Each kill with its wall-clock time.
  returned: success
  type: list
  elements: dict
  sample: [{"at": 1795000000.1, "name": "keeper2", "component": "keeper", "what": "SIGKILL keeper keeper2 (pid 812, 9 processes)"}]
failovers:
  description: Primary changes seen during the run.
  returned: success
  type: int
  sample: 2
primaries:
  description: The primary over time, as [time, uid] at each change.
  returned: success
  type: list
  elements: list
skipped:
  description: Rounds without a kill because O(max_down) targets were still down.
  returned: success
  type: int
  sample: 1
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import (
    CtlError,
    StoreError,
    open_ctl,
    store_argument_spec,
)

try:
    from pgha import chaos
except ImportError:  # reported by open_ctl
    chaos = None


def main():
    argument_spec = store_argument_spec()
    argument_spec.update(
        targets=dict(type="list", elements="dict", required=True, options=dict(
            name=dict(type="str", required=True),
            component=dict(type="str", required=True, choices=["keeper", "sentinel", "proxy", "etcd"]),
        )),
        interval=dict(type="float", default=10),
        duration=dict(type="float", default=120),
        max_down=dict(type="int", default=1),
        include_etcd=dict(type="bool", default=False),
        seed=dict(type="int"),
        supervisorctl=dict(type="path", default="/opt/pgha/venv/bin/supervisorctl"),
        supervisor_config=dict(type="path", required=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    ctl = open_ctl(module)
    p = module.params
    targets = [chaos.Target(t["name"], t["component"]) for t in p["targets"]]
    if module.check_mode:
        module.exit_json(changed=False, kills=[], failovers=0, primaries=[], skipped=0,
                         targets=[t.name for t in targets if p["include_etcd"] or t.component != "etcd"])
    if p["max_down"] < 1:
        module.fail_json(msg="max_down must be at least 1")

    def observe():
        try:
            return ctl.status()["cluster"]["primary"]
        except (CtlError, StoreError):
            return None

    res = chaos.run(targets, chaos.Supervisor(p["supervisorctl"], p["supervisor_config"]),
                    interval=p["interval"], duration=p["duration"], max_down=p["max_down"],
                    include_etcd=p["include_etcd"], seed=p["seed"], observe=observe)
    module.exit_json(changed=bool(res.kills), kills=res.kills, failovers=res.failovers,
                     primaries=[list(x) for x in res.primaries], skipped=res.skipped)


if __name__ == "__main__":
    main()
