#!/usr/bin/env python3
"""What a proxy costs: pgbench straight to PostgreSQL, through pgha-proxy and through HAProxy.

Starts one pgha keeper (real PostgreSQL), one sentinel and one pgha-proxy on loopback with a real
etcd, plus Debian's haproxy in TCP mode (a config generated into a temp dir, default threading)
in front of the same PostgreSQL. For each workload (select-only ``-S`` and the TPC-B-like default)
and client count it runs pgbench against the three paths in turn (interleaved, so drift in the
machine's load hits all three alike) and records TPS and the p99 latency computed from pgbench's
per-transaction log (``--log``).

Each round starts the paths at a different place in the list (rotation), so that no path always runs
first after a quiet spell or last after the others warmed the caches; an untimed warm-up run goes
first. Two figures are kept for the target cell: the ratio of the median TPS of each path, and the
median of the per-round ratios (pgha-proxy and HAProxy measured in the same round, a minute apart).
For every proxy path the CPU time its processes used (utime + stime from /proc) is divided by the
transactions relayed: CPU microseconds per transaction, a figure that does not depend on how the
2 cores were shared at that moment.

Paths: direct, pgha-proxy (one process, uvloop), pgha-proxy-asyncio (one process, the standard
loop), pgha-proxy-x2 (two pgha-proxy processes sharing their ports with --reuse-port: what the proxy
role deploys by default, proxy_workers 2, as HAProxy uses one thread per CPU), haproxy. The target
(select-only, 8 clients, at least 0.9 of HAProxy) is judged on pgha-proxy-x2 when it is measured.

Usage: bench/proxy_cost.py [--duration 10] [--rounds 1] [--clients 1,8,32] [--scale 10]
           [--workloads select,tpcb] [--paths direct,pgha-proxy,haproxy] [--label before]
Writes bench/results/proxy-cost-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import harness, load, prepare, share_proxy_ports, tmp_dir, write_result  # noqa: E402

PGBENCH = os.path.join(harness.PG_BIN, "pgbench")
SSLMODE = "require"  # the clients' (--sslmode)
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

HAPROXY_CFG = """\
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen pg
    bind 127.0.0.1:{port}
    server pg 127.0.0.1:{pg_port}
"""


def start_haproxy(tmp: Path, pg_port: int) -> tuple[harness.Agent, int]:
    port = harness.free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, pg_port=pg_port))
    agent = harness.Agent("haproxy", [HAPROXY, "-f", str(cfg), "-db"], tmp / "haproxy.log", cwd=tmp)
    agent.start()
    if not harness.wait_port(port, 10):
        raise RuntimeError(f"haproxy did not listen:\n{agent.log_tail()}")
    return agent, port


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes ``pids`` (seconds), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def syscalls_per_tx(port: int, pids: list[int], password: str, log_dir: Path, seconds: int = 3) -> dict[str, float]:
    """System calls per transaction of the processes ``pids`` during a short select-only run with 8
    clients, counted by ``strace -c -f`` (which slows everything down: only the counts are kept)."""
    out = log_dir / "strace.txt"
    tracers = [subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", f"{out}.{pid}"],
                                stderr=subprocess.DEVNULL) for pid in pids]
    try:
        time.sleep(0.5)  # strace attached
        r = pgbench(port, password, "select", 8, seconds, log_dir)
    finally:
        for t in tracers:
            t.send_signal(signal.SIGINT)
            t.wait(30)
    calls: dict[str, int] = {}
    for pid in pids:
        for line in Path(f"{out}.{pid}").read_text().splitlines():
            f = line.split()
            if len(f) >= 5 and f[3].isdigit() and f[-1] != "total":
                calls[f[-1]] = calls.get(f[-1], 0) + int(f[3])
    n = max(1, r["transactions"])
    return {name: round(c / n, 2) for name, c in sorted(calls.items(), key=lambda kv: -kv[1]) if c / n >= 0.01}


def rotated(paths: list[str], n: int) -> list[str]:
    """``paths`` starting at position ``n`` (modulo their number)."""
    k = n % len(paths)
    return paths[k:] + paths[:k]


def pgbench(port: int, password: str, workload: str, clients: int, duration: int, log_dir: Path) -> dict[str, Any]:
    """One pgbench run; TPS from its report, latencies (ms) from its per-transaction log."""
    for f in log_dir.glob("tx*"):
        f.unlink()
    argv = [PGBENCH, "-h", "127.0.0.1", "-p", str(port), "-U", "app", "-n", "-c", str(clients),
            "-j", str(min(clients, 2)), "-T", str(duration), "--log", f"--log-prefix={log_dir / 'tx'}"]
    if workload == "select":
        argv.append("-S")
    argv.append("app")
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": SSLMODE}
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 120, cwd=log_dir)
    if res.returncode != 0:
        raise RuntimeError(f"pgbench failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", res.stdout)
    if not m:
        raise RuntimeError(f"no tps in pgbench output:\n{res.stdout}")
    lat: list[float] = []
    for f in log_dir.glob("tx*"):
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]) / 1000.0)
    lat.sort()
    failed = re.search(r"number of failed transactions: (\d+)", res.stdout)
    return {"tps": round(float(m.group(1)), 1), "transactions": len(lat),
            "p50_ms": round(percentile(lat, 0.5), 3), "p99_ms": round(percentile(lat, 0.99), 3),
            "failed": int(failed.group(1)) if failed else 0}


def cluster_ready(st: dict[str, Any]) -> bool:
    c = st["cluster"]
    return bool(c["primary"]) and not c["transition"] and bool(st["proxies"]) \
        and all(p["target"] == c["primary"] for p in st["proxies"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    p.add_argument("--rounds", type=int, default=1, help="runs per cell (the median TPS run is kept)")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--workloads", default="select,tpcb")
    p.add_argument("--paths", default="direct,pgha-proxy,haproxy")
    p.add_argument("--proxy-event-loop", default="", choices=("", "auto", "uvloop", "asyncio"),
                   help="pgha-proxy --event-loop (empty: the proxy's default; an old proxy has no such flag)")
    p.add_argument("--syscalls", action="store_true",
                   help="also count each proxy's system calls per transaction (strace -c, a separate short run)")
    p.add_argument("--sslmode", default="require", choices=("require", "disable"),
                   help="the clients' libpq sslmode (require: TLS to PostgreSQL, which the proxy and HAProxy pass "
                        "through; disable: a cluster without TLS)")
    p.add_argument("--label", default="", help="free text stored in the result (e.g. 'before', 'after')")
    p.add_argument("--output", default=str(HERE / "results"))
    args = p.parse_args()
    if not prepare("" if os.access(HAPROXY, os.X_OK) else "haproxy not installed (apt-get install haproxy)"):
        return 2
    base = tmp_dir("pgha-bench-proxy-")
    paths = args.paths.split(",")
    # path "pgha-proxy-asyncio": a second pgha-proxy forced onto the standard asyncio loop, measured in
    # the same run as the default one (same load), to show what the event loop changes
    # path "pgha-proxy-x2": two pgha-proxy processes sharing their ports (--reuse-port), the kernel
    # spreading connections over them, as HAProxy spreads them over its threads (one per CPU)
    extra = (["asyncio"] if "pgha-proxy-asyncio" in paths else []) + (["x2a", "x2b"] if "pgha-proxy-x2" in paths else [])
    global SSLMODE
    SSLMODE = args.sslmode
    cluster = harness.PghaCluster(base / "c", keepers=1, sentinels=1, proxies=1 + len(extra),
                                  pg_tls=args.sslmode != "disable")
    name = {kind: f"proxy{i + 1}" for i, kind in enumerate(extra)}
    # each pgha path and the pgha-proxy processes behind it (the first one's port is the path's)
    proxy_paths = {"pgha-proxy": ["proxy0"]}
    if "asyncio" in name:
        proxy_paths["pgha-proxy-asyncio"] = [name["asyncio"]]
    if "x2a" in name:
        proxy_paths["pgha-proxy-x2"] = [name["x2a"], name["x2b"]]
        share_proxy_ports(cluster, proxy_paths["pgha-proxy-x2"])
    if args.proxy_event_loop:
        for uid in proxy_paths["pgha-proxy"] + proxy_paths.get("pgha-proxy-x2", []):
            cluster.proxies[uid].argv += ["--event-loop", args.proxy_event_loop]
    if "asyncio" in name:
        cluster.proxies[name["asyncio"]].argv += ["--event-loop", "asyncio"]
    haproxy: harness.Agent | None = None
    cells: list[dict[str, Any]] = []
    syscalls: dict[str, dict[str, float]] = {}
    load_before = load()
    try:
        cluster.start()
        st = cluster.wait_for(cluster_ready, timeout=120, what="a primary and a routed proxy")
        primary = st["cluster"]["primary"]
        pg_port = cluster.keeper_pg_port[primary]
        haproxy, ha_port = start_haproxy(base, pg_port)
        ports = {"direct": pg_port, "haproxy": ha_port}
        pids = {"haproxy": [haproxy.proc.pid]}
        for path, uids in proxy_paths.items():
            ports[path] = cluster.proxy_port[uids[0]]
            pids[path] = [cluster.proxies[uid].proc.pid for uid in uids]
        init = subprocess.run([PGBENCH, "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p", str(pg_port),
                               "-U", "app", "app"], env={**os.environ, "PGPASSWORD": cluster.app_password,
                                                         "PGSSLMODE": SSLMODE},
                              capture_output=True, text=True, timeout=600)
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed:\n{init.stderr}")
        log_dir = base / "pgbench"
        log_dir.mkdir()
        pgbench(pg_port, cluster.app_password, "select", 2, min(3, args.duration), log_dir)  # warm-up, not kept
        for workload in args.workloads.split(","):
            for clients in [int(c) for c in args.clients.split(",")]:
                runs: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
                for rnd in range(args.rounds):
                    for path in rotated(paths, rnd):
                        before = cpu_seconds(pids[path]) if path in pids else None
                        r = pgbench(ports[path], cluster.app_password, workload, clients, args.duration, log_dir)
                        if before is not None and r["transactions"]:
                            used = cpu_seconds(pids[path]) - before
                            r["proxy_cpu_us_per_tx"] = round(1e6 * used / r["transactions"], 1)
                        r["round"] = rnd
                        r["loadavg_1"] = load()["loadavg_1_5_15"][:1]
                        runs[path].append(r)
                        cpu = f"  proxy CPU {r['proxy_cpu_us_per_tx']:5.1f} us/tx" if "proxy_cpu_us_per_tx" in r else ""
                        print(f"{workload:6} c={clients:<3} r{rnd} {path:18} tps {r['tps']:9.1f}  p50 {r['p50_ms']:7.3f} ms"
                              f"  p99 {r['p99_ms']:7.3f} ms{cpu}", flush=True)
                for path in paths:
                    rs = sorted(runs[path], key=lambda r: r["tps"])
                    best = rs[len(rs) // 2]
                    cell = {"workload": workload, "clients": clients, "path": path, **best,
                            "all_tps": [r["tps"] for r in runs[path]]}
                    if path in pids:
                        cell["proxy_cpu_us_per_tx"] = statistics.median(r["proxy_cpu_us_per_tx"] for r in runs[path]
                                                                        if "proxy_cpu_us_per_tx" in r)
                        cell["all_proxy_cpu_us_per_tx"] = [r.get("proxy_cpu_us_per_tx") for r in runs[path]]
                    if path != "haproxy" and "haproxy" in runs:
                        paired = [a["tps"] / b["tps"] for a, b in zip(runs[path], runs["haproxy"])]
                        cell["paired_over_haproxy"] = [round(x, 3) for x in paired]
                    cells.append(cell)
        if args.syscalls and not shutil.which("strace"):
            print("--syscalls: strace is not installed (apt-get install strace); not counted", file=sys.stderr)
        elif args.syscalls:
            for path in paths:
                if path in pids:
                    syscalls[path] = syscalls_per_tx(ports[path], pids[path], cluster.app_password, log_dir)
                    print(f"system calls per transaction, {path}: {syscalls[path]}", flush=True)
        cluster.check_logs()
    finally:
        if haproxy is not None:
            haproxy.stop()
        cluster.stop()
        harness.remove_tree(base)
    ratios = []
    for workload in args.workloads.split(","):
        for clients in [int(c) for c in args.clients.split(",")]:
            by = {c["path"]: c for c in cells if c["workload"] == workload and c["clients"] == clients}
            row: dict[str, Any] = {"workload": workload, "clients": clients}
            for path, c in by.items():
                row[f"{path}_tps"] = c["tps"]
                row[f"{path}_p99_ms"] = c["p99_ms"]
            if "direct" in by:
                for path in by:
                    if path != "direct":
                        row[f"{path}/direct"] = round(by[path]["tps"] / by["direct"]["tps"], 3)
            for path in ("pgha-proxy", "pgha-proxy-asyncio", "pgha-proxy-x2"):
                if path in by and "haproxy" in by:
                    row[f"{path}/haproxy"] = round(by[path]["tps"] / by["haproxy"]["tps"], 3)
                    row[f"{path}/haproxy_paired_median"] = round(statistics.median(by[path]["paired_over_haproxy"]), 3)
            for path, c in by.items():
                if "proxy_cpu_us_per_tx" in c:
                    row[f"{path}_cpu_us_per_tx"] = c["proxy_cpu_us_per_tx"]
            ratios.append(row)
    print()
    for row in ratios:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    cell = next((r for r in ratios if r["workload"] == "select" and r["clients"] == 8), {})
    # the target is judged on pgha-proxy as the proxy role deploys it: proxy_workers (2) sharing the ports
    target_path = "pgha-proxy-x2" if "pgha-proxy-x2/haproxy" in cell else "pgha-proxy"
    target = cell.get(f"{target_path}/haproxy")
    target_paired = cell.get(f"{target_path}/haproxy_paired_median")
    haproxy_version = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    write_result("proxy-cost", {
        "label": args.label, "sslmode": args.sslmode, "proxy_event_loop": args.proxy_event_loop or "proxy default", "duration_s": args.duration, "rounds": args.rounds, "scale": args.scale,
        "pgbench_threads": "min(clients, 2)", "haproxy": haproxy_version, "haproxy_config": HAPROXY_CFG,
        "load_before": load_before, "load_after": load(),
        "path_order": "rotated by one place each round, after an untimed warm-up run",
        "target_path": target_path,
        "target_select_8_pgha_over_haproxy": target,
        "target_select_8_one_worker_over_haproxy": cell.get("pgha-proxy/haproxy"),
        "target_select_8_paired_median": target_paired,
        "target_select_8_cpu_us_per_tx": {k[:-len("_cpu_us_per_tx")]: v for k, v in cell.items()
                                           if k.endswith("_cpu_us_per_tx")},
        "target_met": target is not None and target >= 0.9,
        "ratios": ratios, "cells": cells,
        "syscalls_per_tx_select_8": syscalls,
        "median_tps_by_path": {path: statistics.median([c["tps"] for c in cells if c["path"] == path])
                               for path in {c["path"] for c in cells}},
    }, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
