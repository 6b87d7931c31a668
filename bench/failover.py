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
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Probe, exit_on_sigterm, harness, load, summarize_drills, write_result  # noqa: E402


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
    probe = Probe(cluster.connect_rw, f"probe_{kind}_{n}").start()
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
    t_end = probe.wait_flowing(t0, timeout=60)
    time.sleep(0.5)
    probe.stop()
    result = {"drill": kind, "old_primary": old, "new_primary": new, **probe.result(t0, t_end)}
    if kind == "crash":
        cluster.keepers[old].start()
    cluster.wait_for(healthy, timeout=180, what="the old primary back as a replica")
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(sorted(summarize_drills(results, lambda r: f"{r['mode']}/{r['drill']}").items()))


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
    exit_on_sigterm()  # unwinds through the finally blocks below, so every agent and etcd is stopped
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
    write_result("failover", {"defaults": "pgha spec defaults", "load_after": load(), "summary": summary,
                              "drills": results}, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
