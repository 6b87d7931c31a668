#!/usr/bin/env python3
"""Failover and switchover drills against a real local cluster, measured from a client's view.

For each mode (asynchronous, synchronous) it starts 3 keepers, 2 sentinels and 1 proxy on loopback
(real etcd, real PostgreSQL), runs a client that writes one row every 20 ms through the proxy and
records each acknowledgement, then:

* ``crash``: SIGKILL the primary's keeper and its PostgreSQL; wait for the new primary; restart the
  old keeper and wait until it has rejoined as a replica;
* ``switchover``: ``pghactl switchover`` to the best replica.

Write unavailability of a drill = the longest gap between two consecutive acknowledged writes in
the drill window. Lost writes = acknowledged ids missing on the new primary. Figures are printed as a
table and written to ``bench/results/failover-<timestamp>.json``.

Usage: bench/failover.py [--rounds 5] [--modes async,sync] [--drills crash,switchover]
Needs the agents venv and etcd as for the engine tests (``make venv``); run as root or as a user
that can run PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "files" / "agents" / "tests"))

import psycopg2  # noqa: E402

import harness  # noqa: E402


class Probe:
    """One acknowledged INSERT every ``interval`` through the proxy; reconnects on any error."""

    def __init__(self, cluster: harness.PghaCluster, table: str, interval: float = 0.02) -> None:
        self.cluster = cluster
        self.table = table
        self.interval = interval
        self.acks: list[tuple[int, float]] = []
        self.errors: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def start(self) -> "Probe":
        conn = self.cluster.connect_rw()
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {self.table} (id bigint primary key)")
        conn.close()
        self._thread.start()
        return self

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self.cluster.connect_rw(connect_timeout=2)
                    conn.autocommit = True
                self._n += 1
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (self._n,))
                self.acks.append((self._n, time.monotonic()))
                time.sleep(self.interval)
            except psycopg2.Error:
                self.errors.append(time.monotonic())
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def gap(self, start: float, end: float) -> float:
        times = [t for _, t in self.acks if start - 1.0 <= t <= end]
        before = [t for _, t in self.acks if t < start]
        if before:
            times.insert(0, before[-1])
        gaps = [b - a for a, b in zip(times, times[1:])]
        return max(gaps) if gaps else float("nan")

    def lost(self) -> list[int]:
        conn = self.cluster.connect_rw()
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT id FROM {self.table}")
                have = {r[0] for r in cur.fetchall()}
        finally:
            conn.close()
        return [i for i, _ in self.acks if i not in have]


def healthy(st: dict[str, Any]) -> bool:
    c = st["cluster"]
    if c["phase"] != "normal" or not c["primary"] or c["transition"]:
        return False
    ks = st["keepers"]
    if len(ks) < 3 or not all(k["healthy"] for k in ks):
        return False
    if any(k["uid"] != c["primary"] and not k["streaming"] for k in ks):
        return False
    if c["synchronous_standbys"] and not any(k["sync_candidate"] for k in ks):
        return False
    return all(p["target"] == c["primary"] for p in st["proxies"])


def drill(cluster: harness.PghaCluster, kind: str, n: int) -> dict[str, Any]:
    st = cluster.wait_for(healthy, timeout=180, what="a healthy cluster before the drill")
    old = st["cluster"]["primary"]
    probe = Probe(cluster, f"probe_{kind}_{n}").start()
    time.sleep(1.5)
    t0 = time.monotonic()
    if kind == "crash":
        cluster.keepers[old].signal_tree(signal.SIGKILL)
        st = cluster.wait_for(lambda s: s["cluster"]["primary"] not in (None, old) and not s["cluster"]["transition"]
                              and all(p["target"] == s["cluster"]["primary"] for p in s["proxies"]),
                              timeout=120, what="a new primary")
    else:
        cluster.ctl("switchover", timeout=120)
        st = cluster.status()
    new = st["cluster"]["primary"]
    # keep writing until writes flow again (at least 2 s after the event)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        recent = [t for _, t in probe.acks if t > t0]
        if recent and time.monotonic() - t0 > 2.0:
            break
        time.sleep(0.05)
    t_end = time.monotonic()
    time.sleep(0.5)
    probe.stop()
    if not probe.acks:
        raise RuntimeError(f"the probe never wrote: {len(probe.errors)} errors")
    first_after = next((t for _, t in probe.acks if t > t0), float("nan"))
    result = {
        "drill": kind,
        "old_primary": old,
        "new_primary": new,
        "write_unavailability_s": round(probe.gap(t0, t_end), 3),
        "first_write_after_event_s": round(first_after - t0, 3),
        "acknowledged_writes": len(probe.acks),
        "lost_acknowledged_writes": len(probe.lost()),
        "client_errors": len(probe.errors),
    }
    if kind == "crash":
        cluster.keepers[old].start()
    cluster.wait_for(healthy, timeout=180, what="the old primary back as a replica")
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for mode in sorted({r["mode"] for r in results}):
        for kind in sorted({r["drill"] for r in results}):
            rs = [r for r in results if r["mode"] == mode and r["drill"] == kind]
            if not rs:
                continue
            u = [r["write_unavailability_s"] for r in rs]
            out[f"{mode}/{kind}"] = {
                "drills": len(rs),
                "median_unavailability_s": round(statistics.median(u), 3),
                "worst_unavailability_s": round(max(u), 3),
                "best_unavailability_s": round(min(u), 3),
                "lost_acknowledged_writes": sum(r["lost_acknowledged_writes"] for r in rs),
            }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--modes", default="async,sync")
    p.add_argument("--drills", default="crash,switchover")
    p.add_argument("--output", default=str(HERE / "results"))
    args = p.parse_args()
    missing = harness.missing_requirements(("etcd", "postgres", "user", "agents"))
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2
    # a SIGTERM unwinds through the finally blocks below, so every agent and etcd is stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    results: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        spec = {"synchronous_replication": mode == "sync"}
        base = Path(tempfile.mkdtemp(prefix="pgha-bench-"))
        os.chmod(base, 0o755)
        cluster = harness.PghaCluster(base / "c", spec=spec)
        try:
            cluster.start()
            for kind in args.drills.split(","):
                for i in range(args.rounds):
                    r = drill(cluster, kind, i + 1)
                    r.update(mode=mode, round=i + 1)
                    results.append(r)
                    print(f"{mode:5} {kind:10} #{i + 1}: unavailable {r['write_unavailability_s']:6.3f}s, "
                          f"lost {r['lost_acknowledged_writes']}, {r['old_primary']} -> {r['new_primary']}",
                          flush=True)
        finally:
            cluster.stop()
    summary = summarize(results)
    print()
    print(f"{'mode/drill':22} {'n':>3} {'median s':>9} {'worst s':>8} {'best s':>7} {'lost':>5}")
    for key, s in summary.items():
        print(f"{key:22} {s['drills']:>3} {s['median_unavailability_s']:>9.3f} {s['worst_unavailability_s']:>8.3f} "
              f"{s['best_unavailability_s']:>7.3f} {s['lost_acknowledged_writes']:>5}")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = out_dir / f"failover-{stamp}.json"
    path.write_text(json.dumps({"benchmark": "failover", "time": stamp, "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "defaults": "pgha spec defaults", "summary": summary, "drills": results}, indent=2))
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
