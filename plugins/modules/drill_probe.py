#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: drill_probe
short_description: Start or stop the client workload of a pgha failover drill
version_added: 0.1.0
description:
  - Starts C(pgha-drill probe) in the background - one acknowledged INSERT every O(interval)
    seconds through O(dsn) (the proxy), each acknowledgement and error recorded in O(events) - or
    stops it with SIGTERM.
  - With O(workload=marks) it starts the backup drill's marker rows instead (C(pgha-drill marks)),
    one row every O(interval) seconds (1 s for the drill), each with the WAL file it is in and what
    the primary had archived. Once stopped, it waits until the last row's WAL file is archived (up
    to 120 s).
  - The password reaches the probe through its environment, never its command line.
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    details: Reports what it would start or stop.
  diff_mode:
    support: none
    details: Nothing to compare.
extends_documentation_fragment:
  - pgha.cluster.attributes
options:
  state:
    description: V(started) launches a probe; V(stopped) ends the one whose O(pid) is given.
    type: str
    choices: [started, stopped]
    default: started
  dsn:
    description: libpq connection string without the password, e.g. C(host=127.0.0.1 port=25432 user=app dbname=app sslmode=require).
    type: str
  password:
    description: Password for O(dsn).
    type: str
  table:
    description: Table the probe writes to (created when absent); use one per drill.
    type: str
    default: pgha_drill
  events:
    description: File the probe appends its events to.
    type: path
  workload:
    description: V(probe), the failover drills' writes, or V(marks), the backup drill's marker rows.
    type: str
    choices: [probe, marks]
    default: probe
  interval:
    description: Seconds between two writes.
    type: float
    default: 0.02
  max_duration:
    description: The probe stops by itself after this many seconds.
    type: float
    default: 900
  pid:
    description: With O(state=stopped), the pid returned when it was started.
    type: int
"""

EXAMPLES = r"""
- name: Start the workload
  pgha.cluster.drill_probe:
    dsn: host=127.0.0.1 port=25432 user=app dbname=app sslmode=require
    password: "{{ lookup('ansible.builtin.file', '/opt/pgha/main/secrets/pg_app_password') }}"
    table: drill_1
    events: /tmp/drill_1.events
  register: probe

- name: Stop it
  pgha.cluster.drill_probe:
    state: stopped
    pid: "{{ probe.pid }}"
"""

RETURN = r"""
pid:
  description: Process id of the probe.
  returned: success
  type: int
  sample: 41234
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import pgha_library, require_pgha

drill = pgha_library("drill")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["started", "stopped"], default="started"),
            dsn=dict(type="str"),
            password=dict(type="str", no_log=True),
            table=dict(type="str", default="pgha_drill"),
            events=dict(type="path"),
            workload=dict(type="str", choices=["probe", "marks"], default="probe"),
            interval=dict(type="float", default=0.02),
            max_duration=dict(type="float", default=900),
            pid=dict(type="int"),
        ),
        required_if=[("state", "started", ("dsn", "events")), ("state", "stopped", ("pid",))],
        supports_check_mode=True,
    )
    require_pgha(module)
    p = module.params
    if p["state"] == "stopped":
        if module.check_mode:
            module.exit_json(changed=True, pid=p["pid"])
        module.exit_json(changed=drill.stop_probe(p["pid"], timeout=150), pid=p["pid"])
    if module.check_mode:
        module.exit_json(changed=True, pid=0)
    try:
        pid = drill.start_probe(p["dsn"], p["table"], p["events"], password=p["password"],
                                interval=p["interval"], max_duration=p["max_duration"], workload=p["workload"])
    except OSError as exc:
        module.fail_json(msg="cannot start the drill probe: %s" % exc)
    module.exit_json(changed=True, pid=pid)


if __name__ == "__main__":
    main()
