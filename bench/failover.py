#!/usr/bin/env python3
"""Failover and switchover drills against a real local cluster, measured from a client's view.

For each mode (asynchronous, synchronous) it starts 3 keepers, 2 sentinels and 1 proxy (as the proxy
role deploys it: ``--proxy-workers`` 2 processes sharing its ports) on loopback
(real etcd, real PostgreSQL), runs a client that writes one row every 20 ms through the proxy and
records each acknowledgement, then:

* ``crash``: SIGKILL the primary's keeper and its PostgreSQL; wait for the new primary; restart the
  old keeper and wait until it has rejoined as a replica;
* ``switchover``: ``pghactl switchover`` to the best replica.

With ``--systems`` it also drives Patroni (``bench/patroni.py``) side by side, 3 members on the
same kind of etcd, through a libpq multi-host string with ``target_session_attrs=read-write``:
``patroni-default`` (ttl 30, loop_wait 10, retry_timeout 10) and ``patroni-fast`` (ttl 20,
loop_wait 1, retry_timeout 3: the smallest values Patroni accepts). Its crash drill SIGKILLs the
leader's Patroni and its PostgreSQL; its switchover is ``patronictl switchover --force``.

Write unavailability of a drill = the longest gap between two consecutive acknowledged writes in
the drill window. Lost writes = acknowledged ids missing on the new primary. Figures are printed as a
table and written to ``bench/results/failover-<timestamp>.json``.

Usage: bench/failover.py [--rounds 5] [--modes async,sync] [--drills crash,switchover]
       bench/failover.py --systems pgha-async,pgha-sync,patroni-default,patroni-fast
Needs the agents venv and etcd as for the engine tests (``make venv``); run as root or as a user
that can run PostgreSQL.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import Probe, harness, load, prepare, share_proxy_ports, summarize_drills, tmp_dir, write_result  # noqa: E402


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
    # keep writing until writes flow again on the new primary (at least 2 s after the event)
    t_end = probe.wait_flowing(t0, time.monotonic(), timeout=60)
    time.sleep(0.5)
    probe.stop()
    result = {"drill": kind, "old_primary": old, "new_primary": new, **probe.result(t0, t_end)}
    if kind == "crash":
        cluster.keepers[old].start()
    cluster.wait_for(healthy, timeout=180, what="the old primary back as a replica")
    return result


def patroni_drill(pc: Any, kind: str, n: int) -> dict[str, Any]:
    c = pc.wait_for(pc.healthy, 300, "a healthy Patroni cluster before the drill")
    old = pc.leader(c)
    probe = Probe(pc.connect_rw, f"probe_{kind}_{n}").start()
    time.sleep(1.5)
    t0 = time.monotonic()
    survivors: list[int] = []
    if kind == "crash":
        pc.members[old].signal_tree(signal.SIGKILL)
        time.sleep(0.2)
        survivors = pc.members[old].pids()  # anything of the old leader still alive (should be nothing)
        c = pc.wait_for(lambda c: pc.leader(c) not in (None, old), 300, "a new leader", exclude=old)
    else:
        candidate = sorted(m["name"] for m in c["members"] if m["name"] != old)[0]
        pc.switchover(old, candidate)
        c = pc.wait_for(lambda c: pc.leader(c) not in (None, old), 120, "the candidate leading")
    new = pc.leader(c)
    t_end = probe.wait_flowing(t0, time.monotonic(), timeout=120)
    time.sleep(0.5)
    probe.stop()
    result = {"drill": kind, "old_primary": old, "new_primary": new, **probe.result(t0, t_end),
              "old_leader_processes_left": len(survivors)}
    if kind == "crash":
        pc.members[old].start()
    pc.wait_for(pc.healthy, 300, "the old leader back as a replica")
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(sorted(summarize_drills(results, lambda r: f"{r['system']}/{r['drill']}").items()))


def run_system(system: str, drills: list[str], rounds: int, results: list[dict[str, Any]],
               proxy_workers: int = 2, secure_store: bool = False, pg_tls: bool = True) -> dict[str, Any]:
    """All drills of one system on a fresh cluster; appends to ``results``; returns facts about the system."""
    base = tmp_dir("pgha-bench-failover-")
    facts: dict[str, Any] = {"load_before": load()}
    keep = False
    try:
        if system.startswith("patroni"):
            import patroni

            timings = system.split("-", 1)[1]
            cluster: Any = patroni.PatroniCluster(base / "c", timings=timings)
            facts.update(version=patroni.version(), timings=cluster.timings)
            run_drill = patroni_drill
        else:
            mode = system.split("-", 1)[1]
            cluster = harness.PghaCluster(base / "c", spec={"synchronous_replication": mode == "sync"},
                                          proxies=proxy_workers, secure_store=secure_store, pg_tls=pg_tls)
            if proxy_workers > 1:
                share_proxy_ports(cluster, [f"proxy{i}" for i in range(proxy_workers)])
            facts.update(spec={"synchronous_replication": mode == "sync"}, note="other spec keys at their defaults",
                         proxy_workers=proxy_workers, pg_tls=pg_tls,
                         store="https, client certificates, etcd users" if secure_store else "plain http")
            run_drill = drill
        try:
            cluster.start()
            for kind in drills:
                for i in range(rounds):
                    try:
                        r = run_drill(cluster, kind, i + 1)
                    except Exception as exc:  # noqa: BLE001 - recorded; the logs are kept for a look
                        keep = True
                        facts.setdefault("errors", []).append(f"{kind} #{i + 1}: {type(exc).__name__}: {exc}"[:2000])
                        print(f"{system:16} {kind:10} #{i + 1}: FAILED ({type(exc).__name__}: {str(exc)[:300]}); "
                              f"logs kept in {base}", flush=True)
                        break
                    r.update(system=system, mode=system.split("-", 1)[1], round=i + 1, loadavg_1=load()["loadavg_1_5_15"][:1])
                    results.append(r)
                    print(f"{system:16} {kind:10} #{i + 1}: unavailable {r['write_unavailability_s']:6.3f}s, "
                          f"lost {r['lost_acknowledged_writes']}, {r['old_primary']} -> {r['new_primary']}",
                          flush=True)
        finally:
            cluster.stop()
    finally:
        if not keep:
            harness.remove_tree(base)
    facts["load_after"] = load()
    return facts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--modes", default="async,sync", help="pgha modes (when --systems is not given)")
    p.add_argument("--systems", default="",
                   help="comma list of pgha-async, pgha-sync, patroni-default, patroni-fast (overrides --modes)")
    p.add_argument("--drills", default="crash,switchover")
    p.add_argument("--proxy-workers", type=int, default=2,
                   help="pgha-proxy processes sharing the proxy's ports (--reuse-port), as the proxy role's "
                        "proxy_workers (default 2); the probe connects to their shared port")
    p.add_argument("--secure-store", action="store_true",
                   help="pgha on an etcd with TLS, client certificates and a user per component (pgha_store_tls)")
    p.add_argument("--no-pg-tls", action="store_true", help="pgha's PostgreSQL without TLS (the harness default is on)")
    p.add_argument("--output", default=str(HERE / "results"))
    args = p.parse_args()
    if args.proxy_workers < 1:
        p.error(f"--proxy-workers must be at least 1, got {args.proxy_workers}")
    if not prepare():
        return 2
    systems = args.systems.split(",") if args.systems else [f"pgha-{m}" for m in args.modes.split(",")]
    if any(s.startswith("patroni") for s in systems):
        import patroni

        why = patroni.missing()
        if why:
            print(f"cannot run: {why}", file=sys.stderr)
            return 2
    results: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}
    for system in systems:
        facts[system] = run_system(system, args.drills.split(","), args.rounds, results, args.proxy_workers,
                                   args.secure_store, not args.no_pg_tls)
    summary = summarize(results)
    print()
    print(f"{'system/drill':28} {'n':>3} {'median s':>9} {'worst s':>8} {'best s':>7} {'lost':>5}")
    for key, s in summary.items():
        print(f"{key:28} {s['drills']:>3} {s['median_unavailability_s']:>9.3f} {s['worst_unavailability_s']:>8.3f} "
              f"{s['best_unavailability_s']:>7.3f} {s['lost_acknowledged_writes']:>5}")
    write_result("failover", {"defaults": "pgha spec defaults", "systems": facts, "summary": summary,
                              "drills": results}, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
