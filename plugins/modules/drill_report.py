#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: drill_report
short_description: Measure a pgha failover drill from the client's view and write its report
version_added: 0.1.0
description:
  - Reads the events a M(pgha.cluster.drill_probe) recorded, the O(markers) of the drill and the
    cluster's last transition timeline, reads every acknowledged id back through O(dsn), and
    writes a JSON report and a PNG chart (successful writes per 100 ms, events marked; the chart
    needs matplotlib on the host).
  - With O(others), more workloads of the same drill (a client writing straight to the old
    primary, a client of a proxy cut off from the store) are read back and charted too. With
    O(old_server) and O(new_server) the report says which PostgreSQL acknowledged each write and
    the overlap of the two primaries (the old one's last acknowledgement minus the new one's first).
  - Fails when O(max_rto), O(max_lost) or O(max_overlap) is exceeded, after writing the report.
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: none
    details: Measures only what has happened; nothing to plan.
  diff_mode:
    support: none
    details: Nothing to compare.
extends_documentation_fragment:
  - pgha.cluster.attributes
options:
  events:
    description: The probe's events file.
    type: path
    required: true
  markers:
    description: Wall-clock times of the drill's events; must contain V(kill), V(crash), V(freeze), V(switchover) or V(partition).
    type: dict
    required: true
  transition:
    description: The cluster's C(last_transition) (from M(pgha.cluster.cluster_info)).
    type: dict
  dsn:
    description: Where to read the acknowledged writes back (through the proxy), without password.
    type: str
    required: true
  password:
    description: Password for O(dsn).
    type: str
  table:
    description: The probe's table.
    type: str
    default: pgha_drill
  report_json:
    description: Path of the JSON report.
    type: path
    required: true
  report_png:
    description: Path of the PNG chart.
    type: path
  title:
    description: Chart title.
    type: str
    default: "pgha failover drill: the client's view"
  max_rto:
    description: Budget for the write unavailability, seconds.
    type: float
  max_lost:
    description: Budget for acknowledged writes lost (all workloads).
    type: int
  others:
    description: More workloads of the drill.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The workload's name in the report.
        type: str
        required: true
      events:
        description: Its probe's events file.
        type: path
        required: true
      table:
        description: Its probe's table.
        type: str
        required: true
      description:
        description: What it does (in the report and the chart's legend).
        type: str
        default: ""
  old_server:
    description: C(address:port) of the old primary's PostgreSQL.
    type: str
  new_server:
    description: C(address:port) of the new primary's PostgreSQL.
    type: str
  max_overlap:
    description: Budget for the overlap of the two primaries, seconds; V(0) fails the drill when both
      acknowledged writes at the same time.
    type: float
  extra:
    description: Merged into the report (e.g. the keepers before and after).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Report
  pgha.cluster.drill_report:
    events: /tmp/drill_1.events
    markers: {kill: "{{ crash.at }}"}
    transition: "{{ after.cluster.last_transition }}"
    dsn: host=127.0.0.1 port=25432 user=app dbname=app sslmode=require
    password: "{{ app_password }}"
    table: drill_1
    report_json: /tmp/drill_1.json
    report_png: /tmp/drill_1.png
    max_rto: 10
    max_lost: 0
"""

RETURN = r"""
rto_s:
  description: Longest time without an acknowledged write, from the disruption on.
  returned: success
  type: float
  sample: 3.52
total_unavailable_s:
  description: Sum of every outage a client noticed (gaps well above the write interval) from the disruption on.
  returned: success
  type: float
  sample: 4.1
lost_acknowledged_writes:
  description: Acknowledged writes missing afterwards (all workloads).
  returned: success
  type: int
  sample: 0
overlap:
  description: Which PostgreSQL acknowledged writes, when, and the overlap of the two primaries.
  returned: when O(old_server) and O(new_server) differ
  type: dict
  sample: {"overlap_s": -1.52, "old_primary_last_ack_s": 1.83, "new_primary_first_ack_s": 3.35,
           "two_primaries_acknowledged": false}
events:
  description: Seconds from the disruption to each event (detection, election, promotion, first successful write).
  returned: success
  type: dict
  sample: {"kill": 0.0, "detection": 3.1, "election": 3.2, "promotion": 3.4, "first_successful_write": 3.5}
summary:
  description: One line for humans.
  returned: success
  type: str
  sample: writes unavailable 3.52s, 0 acknowledged writes lost of 812
budget_violations:
  description: Budgets exceeded (empty when within budget).
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.client import pgha_library, require_pgha

try:
    import psycopg2
except ImportError:  # comes with pgha: reported by require_pgha
    psycopg2 = None

drill = pgha_library("drill")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            events=dict(type="path", required=True),
            markers=dict(type="dict", required=True),
            transition=dict(type="dict"),
            dsn=dict(type="str", required=True),
            password=dict(type="str", no_log=True),
            table=dict(type="str", default="pgha_drill"),
            report_json=dict(type="path", required=True),
            report_png=dict(type="path"),
            title=dict(type="str", default="pgha failover drill: the client's view"),
            max_rto=dict(type="float"),
            max_lost=dict(type="int"),
            extra=dict(type="dict", default={}),
            others=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                events=dict(type="path", required=True),
                table=dict(type="str", required=True),
                description=dict(type="str", default=""),
            )),
            old_server=dict(type="str"),
            new_server=dict(type="str"),
            max_overlap=dict(type="float"),
        ),
        supports_check_mode=False,
    )
    require_pgha(module)
    p = module.params
    try:
        markers = dict((k, float(v)) for k, v in p["markers"].items())
        rep = drill.report(p["events"], markers, p["transition"], p["dsn"], p["table"], p["report_json"],
                           p["report_png"], p["title"], p["max_rto"], p["max_lost"], p["extra"],
                           password=p["password"], others=dict((o["name"], o) for o in p["others"]) or None,
                           old_server=p["old_server"], new_server=p["new_server"], max_overlap=p["max_overlap"])
    except (ValueError, TypeError) as exc:
        module.fail_json(msg="cannot analyze the drill: %s" % exc)
    except (psycopg2.Error, OSError) as exc:
        module.fail_json(msg="cannot read the acknowledged writes back: %s" % str(exc).strip())
    result = dict(changed=True, rto_s=rep["rto_s"], total_unavailable_s=rep["total_unavailable_s"],
                  lost_acknowledged_writes=rep["lost_acknowledged_writes"],
                  events=rep["events"], summary=rep["summary"], budget_violations=rep["budget_violations"],
                  report_json=p["report_json"], chart=rep.get("chart"))
    if "overlap" in rep:
        result["overlap"] = dict((k, v) for k, v in rep["overlap"].items() if k != "acknowledged_by_server")
    if rep["budget_violations"]:
        module.fail_json(msg="drill over budget: " + "; ".join(rep["budget_violations"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
