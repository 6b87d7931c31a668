#!/usr/bin/env python3
"""Partition drills on three real hosts, measured from the clients' view: the multi-host targets.

Three network-namespace hosts of this machine (scripts/testhosts.py), pgha deployed on them over SSH
by playbooks/site.yml with inventory/multihost.example.yml (defaults: one etcd member, keeper,
sentinel and proxy per host), then, for each mode (asynchronous, synchronous), rounds of
``playbooks/failover_drill.yml -e drill_mode=partition`` of each kind:

* ``primary``: the primary's host cut off from the others (the controller keeps its access);
* ``store_minority``: the primary's host keeps its etcd member but loses quorum;
* ``leader_sentinel`` / ``leader_sentinel_with_primary``: the leading sentinel's host, without or
  with the primary on it;
* ``proxy``: a proxy's host without the primary loses the store but still reaches the primary;

and ``fail_interval_8``: the primary partition right after ``pghactl update`` set fail_interval 8 s
(the leases must follow the new TTL). Each round's report (JSON and PNG, written by the playbook)
gives the write unavailability through a majority-side proxy, the acknowledged writes lost (that
client's and one writing straight to the old primary), and the overlap: the old primary's last
acknowledgement minus the new primary's first, negative when the fencing held. ``--chaos-minutes``
adds chaos.yml with kills and partitions in synchronous mode.

Targets (issue 11): overlap < 0 in every kind and mode; 0 acknowledged writes lost in synchronous
mode; median write unavailability after a primary partition <= 4 s in both modes; chaos: 0 lost in
synchronous mode and never two primaries acknowledging at once.

Usage: bench/partition.py [--rounds 10] [--other-rounds 3] [--modes async,sync]
                          [--kinds primary,store_minority,...] [--chaos-minutes 30] [--keep]
Writes bench/results/partition-<timestamp>.json and the drill reports under
bench/results/partition-<timestamp>/. Needs root (test hosts) and `make venv`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "scripts"))

import common  # noqa: E402
import testhosts  # noqa: E402

VENV = Path(os.environ.get("VENV", ROOT / ".venv"))
KINDS = ["primary", "store_minority", "leader_sentinel", "leader_sentinel_with_primary", "proxy", "fail_interval_8"]
FAILOVER_KINDS = {"primary", "store_minority", "leader_sentinel_with_primary", "fail_interval_8"}


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


class Cluster:
    """pgha on the test hosts, driven with ansible-playbook and pghactl as an operator would."""

    def __init__(self, hosts: testhosts.TestHosts, reports: Path) -> None:
        self.hosts = hosts
        self.reports = reports
        self.env = dict(os.environ, **hosts.ansible_env(), ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"))
        self.env.pop("ANSIBLE_INVENTORY", None)
        self.inventory = ["-i", str(ROOT / "inventory" / "multihost.example.yml"), "-i", str(hosts.inventory)]
        self.endpoints = ",".join(f"http://{hosts.address(h)}:12379" for h in hosts.hosts)
        self.wheelhouse = subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh"), "venvs", "wheelhouse"],
                                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]

    def playbook(self, name: str, *extra: str, log: Path) -> int:
        argv = [str(VENV / "bin" / "ansible-playbook"), *self.inventory, str(ROOT / "playbooks" / name),
                "-e", f"pgha_pip_wheelhouse={self.wheelhouse}", *extra]
        with open(log, "w") as out:
            return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT).returncode

    def ctl(self, *args: str) -> str:
        """pghactl as the store's operator, with the settings site.yml wrote for this controller
        (the store on TLS with its users); a plain-HTTP store without that file."""
        env = dict(os.environ, PGHA_CLUSTER_NAME="main", PGHA_STORE_ENDPOINTS=self.endpoints,
                   PGHA_STORE_INSECURE="true")
        operator = Path.home() / ".pgha" / "main" / "pghactl.env"
        if operator.exists():
            env.pop("PGHA_STORE_INSECURE")
            for line in operator.read_text().splitlines():
                if line.startswith("export ") and "=" in line:
                    key, value = line[len("export "):].split("=", 1)
                    env[key] = value.strip("'\"")
        out = subprocess.run([str(VENV / "bin" / "pghactl"), *args], capture_output=True, text=True, env=env,
                             timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"pghactl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def drill(self, kind: str, rounds: int, mode: str) -> list[dict[str, Any]]:
        partition = "primary" if kind == "fail_interval_8" else kind.replace("_with_primary", "")
        extra = ["-e", "drill_mode=partition", "-e", f"drill_partition={partition}", "-e", f"drill_rounds={rounds}",
                 "-e", f"drill_report_dir={self.reports}",
                 "-e", f"drill_with_primary={'true' if kind.endswith('_with_primary') else 'false'}"]
        before = set(self.reports.glob("drill_partition_*.json"))
        rc = self.playbook("failover_drill.yml", *extra, log=self.reports / f"{mode}-{kind}.log")
        found = sorted(set(self.reports.glob("drill_partition_*.json")) - before)
        out = []
        for path in found:
            rep = json.loads(path.read_text())
            ov = (rep.get("overlap") or {})
            out.append({"kind": kind, "mode": mode, "report": _shown(path), "rto_s": rep["rto_s"],
                        "lost": rep["lost_acknowledged_writes"], "main_lost": rep.get("main_lost_acknowledged_writes"),
                        "overlap_s": ov.get("overlap_s"), "old_last_ack_s": ov.get("old_primary_last_ack_s"),
                        "new_first_ack_s": ov.get("new_primary_first_ack_s"),
                        "split_brain_s": rep.get("split_brain", {}).get("worst_s"),
                        "etcd_leader_on_cut_off_host": rep.get("etcd_leader_on_cut_off_host"),
                        "fail_interval": rep.get("fail_interval"), "budget_violations": rep.get("budget_violations")})
        if rc != 0:
            out.append({"kind": kind, "mode": mode, "failed": f"ansible-playbook exited {rc}",
                        "log": _shown(self.reports / f"{mode}-{kind}.log")})
        return out


def summarize(drills: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted({(d["mode"], d["kind"]) for d in drills}):
        rows = [d for d in drills if (d["mode"], d["kind"]) == key and "rto_s" in d]
        failed = [d for d in drills if (d["mode"], d["kind"]) == key and "failed" in d]
        rtos = [d["rto_s"] for d in rows]
        ovs = [d["overlap_s"] for d in rows if d["overlap_s"] is not None]
        out[f"{key[0]}/{key[1]}"] = {
            "rounds": len(rows), "failed_runs": len(failed),
            "rto_median_s": round(statistics.median(rtos), 3) if rtos else None,
            "rto_worst_s": max(rtos) if rtos else None,
            "lost_total": sum(d["lost"] for d in rows),
            "overlap_worst_s": max(ovs) if ovs else None,
            "split_brain_worst_s": max((d["split_brain_s"] or 0) for d in rows) if rows else None,
            "etcd_leader_on_cut_off_host": sum(1 for d in rows if d["etcd_leader_on_cut_off_host"]),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10, help="rounds of the primary partition per mode (default 10)")
    ap.add_argument("--other-rounds", type=int, default=3, help="rounds of every other kind per mode (default 3)")
    ap.add_argument("--modes", default="async,sync", help="async, sync or both (default)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"of {', '.join(KINDS)} (default all)")
    ap.add_argument("--chaos-minutes", type=float, default=0, help="then chaos with kills and partitions (sync)")
    ap.add_argument("--name", default=f"pb{os.getpid() % 100000}", help="test-host run name")
    ap.add_argument("--keep", action="store_true", help="leave the test hosts running")
    ap.add_argument("--output", default=str(common.RESULTS), help="where the result file and the reports go")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS] + [m for m in args.modes.split(",") if m not in ("async", "sync")]
    if bad:
        ap.error(f"unknown kind or mode: {', '.join(bad)}")
    if os.geteuid() != 0:
        print("cannot run: the test hosts need root", file=sys.stderr)
        return 2
    common.exit_on_sigterm()
    stamp = common.stamp()
    reports = Path(args.output) / f"partition-{stamp}"
    reports.mkdir(parents=True, exist_ok=True)
    hosts = testhosts.TestHosts(args.name)
    doc: dict[str, Any] = {"time": stamp, "load_before": common.load(), "drills": [], "chaos": None,
                           "rounds": args.rounds, "other_rounds": args.other_rounds}
    try:
        t0 = time.monotonic()
        hosts.create("namespace", host_names=["pg1", "pg2", "pg3"])
        cluster = Cluster(hosts, reports)
        rc = doc["site_rc"] = cluster.playbook("site.yml", log=reports / "site.log")
        if rc != 0:
            raise RuntimeError(f"site.yml failed (log {reports / 'site.log'})")
        doc["bringup_s"] = round(time.monotonic() - t0, 1)
        for mode in args.modes.split(","):
            cluster.ctl("update", "--patch", json.dumps({"synchronous_replication": mode == "sync",
                                                         "fail_interval": 3}))
            time.sleep(5)
            for kind in kinds:
                if kind == "fail_interval_8":
                    cluster.ctl("update", "--patch", '{"fail_interval": 8}')
                    time.sleep(2)  # a live change: the drill starts while the leases move to the new TTL
                n = args.rounds if kind == "primary" else args.other_rounds
                print(f"{mode} {kind}: {n} round(s)", flush=True)
                rows = cluster.drill(kind, n, mode)
                doc["drills"].extend(rows)
                for r in rows:
                    print("  " + json.dumps({k: r.get(k) for k in ("rto_s", "lost", "overlap_s", "failed")}), flush=True)
                if kind == "fail_interval_8":
                    cluster.ctl("update", "--patch", '{"fail_interval": 3}')
        if args.chaos_minutes > 0:
            cluster.ctl("update", "--patch", '{"synchronous_replication": true, "fail_interval": 3}')
            time.sleep(5)
            seconds = int(args.chaos_minutes * 60)
            before = set(reports.glob("chaos_*.json"))
            rc = cluster.playbook("chaos.yml", "-e", json.dumps({"chaos_faults": ["kill", "partition"],
                                                                 "chaos_duration": seconds,
                                                                 "chaos_report_dir": str(reports)}),
                                  log=reports / "chaos.log")
            found = sorted(set(reports.glob("chaos_*.json")) - before)
            rep = json.loads(found[-1].read_text()) if found else {}
            doc["chaos"] = {"rc": rc, "seconds": seconds, "report": _shown(found[-1]) if found else None,
                            "faults": len(rep.get("faults", [])), "failovers": rep.get("failovers"),
                            "lost": rep.get("lost_acknowledged_writes"), "worst_outage_s": rep.get("rto_s"),
                            "split_brain_windows": len(rep.get("split_brain", {}).get("windows", [])),
                            "budget_violations": rep.get("budget_violations")}
    finally:
        doc["load_after"] = common.load()
        if not args.keep:
            hosts.destroy()
        # the JSON reports hold the analysis: the raw client events and the logs of runs that went
        # well are not kept (the chaos clients' events alone are megabytes)
        failed_logs = {Path(d["log"]).name for d in doc["drills"] if "log" in d} | (
            {"chaos.log"} if doc["chaos"] and doc["chaos"]["rc"] != 0 else set()) | (
            {"site.log"} if doc.get("site_rc") != 0 else set())
        for f in list(reports.glob("*.events")) + [x for x in reports.glob("*.log") if x.name not in failed_logs]:
            f.unlink()
    doc["summary"] = summarize(doc["drills"])
    targets = {}
    for mode in args.modes.split(","):
        p = doc["summary"].get(f"{mode}/primary")
        if p:
            targets[f"{mode}: primary partition median <= 4 s"] = p["rto_median_s"] is not None and p["rto_median_s"] <= 4
    targets["overlap < 0 in every failover round"] = all(
        d["overlap_s"] is not None and d["overlap_s"] < 0 for d in doc["drills"] if d.get("kind") in FAILOVER_KINDS
        and "rto_s" in d)
    targets["0 lost in synchronous mode"] = all(d["lost"] == 0 for d in doc["drills"] if d["mode"] == "sync"
                                                 and "rto_s" in d)
    targets["no failed drill run"] = not any("failed" in d for d in doc["drills"])
    if doc["chaos"]:
        targets["chaos: 0 lost, never two primaries"] = (doc["chaos"]["lost"] == 0
                                                        and doc["chaos"]["split_brain_windows"] == 0)
    doc["targets"] = targets
    print("\n" + f"{'mode/kind':40} {'rounds':>6} {'median':>8} {'worst':>7} {'lost':>5} {'overlap':>8} {'etcd ldr':>8}")
    for key, s in doc["summary"].items():
        print(f"{key:40} {s['rounds']:>6} {s['rto_median_s'] or '-':>8} {s['rto_worst_s'] or '-':>7} "
              f"{s['lost_total']:>5} {s['overlap_worst_s'] if s['overlap_worst_s'] is not None else '-':>8} "
              f"{s['etcd_leader_on_cut_off_host']:>8}")
    for t, ok in targets.items():
        print(f"{'met' if ok else 'NOT MET':8} {t}")
    common.write_result("partition", doc, args.output)
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
