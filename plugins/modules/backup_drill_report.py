#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_drill_report
short_description: Check a pgha backup drill's restored rows and write its report
version_added: 0.1.0
description:
  - Reads the marker rows a M(pgha.cluster.drill_probe) with C(workload=marks) recorded, reads
    back the rows of the cluster restored to O(target) through O(dsn), and writes
    a JSON report and a PNG chart (the chart needs matplotlib on the host).
  - The report gives the rows missing and extra (expected are exactly the rows committed at or
    before the target), the restore's and the replay's seconds, the WAL replayed from the backup's
    start to the target, and what a total loss would have cost while the workload ran (the
    seconds of writes not yet archived, and the age of the last archived WAL file).
  - Fails, after writing the report, when a row is missing or extra, or more than O(max_restore_s) passed.
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
    description: The marker rows' record.
    type: path
    required: true
  target:
    description: The recovery target as C(pgha-drill restore-plan) printed it (C(target_time),
      C(target_epoch), C(target_lsn), ...).
    type: dict
    required: true
  backup:
    description: The backup restored, as M(pgha.cluster.backup) returned it.
    type: dict
    required: true
  restored:
    description: The restored primary's record (C(backup.restored) of its keeper in M(pgha.cluster.cluster_info)).
    type: dict
    required: true
  dsn:
    description: Where to read the restored rows (the restored cluster's proxy), without password.
    type: str
    required: true
  password:
    description: Password for O(dsn).
    type: str
  table:
    description: The marker rows' table.
    type: str
    required: true
  report_json:
    description: Path of the JSON report.
    type: path
    required: true
  report_png:
    description: Path of the PNG chart.
    type: path
  deploy_started:
    description: When the restored cluster's deployment began (Unix seconds), for the seconds until
      it took a write through its proxy (C(restore.deploy_to_writable_s); the report writes one row
      into C(<table>_after)).
    type: float
  max_restore_s:
    description: Budget for the restore and the replay together, seconds.
    type: float
  extra:
    description: Merged into the report (e.g. the seconds until the restored cluster took a write).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Report
  pgha.cluster.backup_drill_report:
    events: /opt/pgha/main/drills/backup_1764757200.marks
    target: "{{ plan.stdout | from_json }}"
    backup: "{{ taken.backup }}"
    restored: "{{ (status.keepers | selectattr('role', 'equalto', 'primary') | first).backup.restored }}"
    dsn: host=127.0.0.1 port=26432 user=app dbname=app sslmode=require
    password: "{{ restored_app_password }}"
    table: backup_1764757200
    report_json: /opt/pgha/main/drills/backup_1764757200.json
    report_png: /opt/pgha/main/drills/backup_1764757200.png
"""

RETURN = r"""
rows:
  description: Rows expected, found, missing and extra in the restored table.
  returned: success
  type: dict
  sample: {"expected": 31, "found": 31, "missing": 0, "extra": 0, "missing_rows": [], "extra_rows": []}
restore:
  description: What was restored and how long it took.
  returned: success
  type: dict
  sample: {"backup": "20261203-101500F", "restore_s": 1.9, "replay_s": 2.4, "wal_replayed_bytes": 50331648, "timeline": 2,
           "deploy_to_writable_s": 48.2}
total_loss:
  description: Seconds of writes a total loss would have cost (median and max over the workload), and the archive's age.
  returned: success
  type: dict
  sample: {"writes_at_risk_s": {"median": 4.0, "max": 10.1}, "archive_age_s": {"median": 5.2, "max": 10.9}, "samples": 45}
summary:
  description: One line for humans.
  returned: success
  type: str
  sample: "restored 31 of 45 marker rows to 2026-12-03 10:21:05.5+00:00: 0 missing, 0 extra; restore 1.9s, replay 2.4s"
budget_violations:
  description: What failed the drill (empty when it passed).
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

backupdrill = pgha_library("backupdrill")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            events=dict(type="path", required=True),
            target=dict(type="dict", required=True),
            backup=dict(type="dict", required=True),
            restored=dict(type="dict", required=True),
            dsn=dict(type="str", required=True),
            password=dict(type="str", no_log=True),
            table=dict(type="str", required=True),
            report_json=dict(type="path", required=True),
            report_png=dict(type="path"),
            deploy_started=dict(type="float"),
            max_restore_s=dict(type="float"),
            extra=dict(type="dict", default={}),
        ),
        supports_check_mode=False,
    )
    require_pgha(module)
    p = module.params
    try:
        rep = backupdrill.restore_report(p["events"], p["target"], p["backup"], p["restored"], p["dsn"], p["table"],
                                         p["report_json"], p["report_png"], password=p["password"], extra=p["extra"],
                                         deploy_started=p["deploy_started"])
    except (OSError, KeyError, ValueError) as exc:
        module.fail_json(msg="cannot write the backup drill's report: %s" % exc)
    except psycopg2.Error as exc:
        module.fail_json(msg="cannot read the restored rows: %s" % str(exc).strip())
    budgets = []
    if rep["rows"]["missing"] or rep["rows"]["extra"]:
        budgets.append("%d rows missing and %d extra after the restore (expected %d)"
                       % (rep["rows"]["missing"], rep["rows"]["extra"], rep["rows"]["expected"]))
    took = (rep["restore"].get("restore_s") or 0) + (rep["restore"].get("replay_s") or 0)
    if p["max_restore_s"] is not None and took > p["max_restore_s"]:
        budgets.append("restore and replay took %.1fs > budget %.1fs" % (took, p["max_restore_s"]))
    result = dict(changed=False, rows=rep["rows"], restore=rep["restore"], total_loss=rep["total_loss"],
                  summary=rep["summary"], budget_violations=budgets, report_json=p["report_json"])
    if budgets:
        module.fail_json(msg="backup drill failed: " + "; ".join(budgets) + " (report " + p["report_json"] + ")", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
