#!/usr/bin/env python3
"""Bring-up: time from nothing to a healthy 3-member cluster, pgha against Patroni.

* ``pgha-engine``: the engine started by the test harness (etcd, 3 keepers, 2 sentinels, 1 proxy,
  ``pghactl init``) until every keeper is healthy, the replicas stream and the proxy routes to the
  primary (the same ``healthy()`` the failover drills wait for);
* ``pgha-site``: ``ansible-playbook -i inventory/local.yml playbooks/site.yml`` with a cluster name
  and ports of its own (the playbook verifies each layer), then the same health check; torn down
  with playbooks/teardown.yml;
* ``patroni``: etcd and 3 Patroni members until one leads and the two others stream.

Usage: bench/bringup.py [--rounds 3] [--systems pgha-engine,pgha-site,patroni]
Writes bench/results/bringup-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import harness, load, prepare, tmp_dir, write_result  # noqa: E402
from failover import healthy  # noqa: E402


def pgha_engine() -> dict[str, Any]:
    base = tmp_dir("pgha-bench-bringup-")
    cluster = harness.PghaCluster(base / "c")
    try:
        t0 = time.monotonic()
        cluster.start()
        t_init = time.monotonic()
        cluster.wait_for(healthy, timeout=300, what="a healthy cluster", interval=0.2)
        t1 = time.monotonic()
        cluster.check_logs()
    finally:
        cluster.stop()
        harness.remove_tree(base)
    return {"seconds": round(t1 - t0, 2), "start_and_init_s": round(t_init - t0, 2)}


def pgha_site() -> dict[str, Any]:
    name = "bench" + secrets.token_hex(3)
    # blocks of consecutive free ports: etcd client/peer pairs (step 2), keepers' PostgreSQL and API
    blocks: list[int] = []
    for size in (6, 3, 3):
        blocks.append(free_block(size, exclude=blocks))
    extra = {"pgha_cluster_name": name, "pgha_etcd_client_port": blocks[0], "pgha_etcd_peer_port": blocks[0] + 1,
             "keeper_pg_port": blocks[1], "keeper_api_port": blocks[2], "proxy_port": harness.free_port(),
             "proxy_ro_port": harness.free_port(), "proxy_api_port": harness.free_port()}
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections")}
    argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(ROOT / "inventory" / "local.yml"),
            "-e", json.dumps(extra)]
    t0 = time.monotonic()
    res = subprocess.run([*argv, str(ROOT / "playbooks" / "site.yml")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    t1 = time.monotonic()
    out: dict[str, Any] = {"seconds": round(t1 - t0, 2), "rc": res.returncode, "extra_vars": extra}
    if res.returncode != 0:
        out["error_tail"] = (res.stdout + res.stderr).splitlines()[-25:]
    down = subprocess.run([*argv, str(ROOT / "playbooks" / "teardown.yml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out["teardown_rc"] = down.returncode
    return out


def free_block(size: int, exclude: list[int]) -> int:
    import socket

    for start in range(20000, 60000, 10):
        if any(abs(start - e) < 10 for e in exclude):
            continue
        ok = True
        for p in range(start, start + size):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return start
    raise RuntimeError("no free port block")


def patroni_bringup() -> dict[str, Any]:
    import patroni

    base = tmp_dir("pgha-bench-bringup-p-")
    pc = patroni.PatroniCluster(base / "c")
    try:
        t0 = time.monotonic()
        pc.start()
        pc.wait_for(pc.healthy, 300, "a healthy Patroni cluster")
        t1 = time.monotonic()
    finally:
        pc.stop()
        harness.remove_tree(base)
    return {"seconds": round(t1 - t0, 2), "version": patroni.version()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--systems", default="pgha-engine,pgha-site,patroni")
    p.add_argument("--output", default=str(HERE / "results"))
    args = p.parse_args()
    if not prepare():
        return 2
    fns = {"pgha-engine": pgha_engine, "pgha-site": pgha_site, "patroni": patroni_bringup}
    runs: dict[str, list[dict[str, Any]]] = {}
    for i in range(args.rounds):
        for system in args.systems.split(","):
            r = fns[system]()
            r["loadavg_1"] = load()["loadavg_1_5_15"][:1]
            runs.setdefault(system, []).append(r)
            print(f"{system:12} #{i + 1}: {r['seconds']:6.2f}s" + (f" rc={r['rc']}" if "rc" in r else ""), flush=True)
            if system == "pgha-site" and r.get("rc"):
                print("\n".join(r.get("error_tail", [])), file=sys.stderr)
    summary = {}
    for system, rs in runs.items():
        ok = [r["seconds"] for r in rs if not r.get("rc")]
        summary[system] = {"runs": len(rs), "ok": len(ok),
                           "median_s": round(statistics.median(ok), 2) if ok else None,
                           "worst_s": max(ok) if ok else None}
    print(json.dumps(summary, indent=1))
    write_result("bringup", {"summary": summary, "runs": runs, "load_after": load()}, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
