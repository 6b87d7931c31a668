#!/usr/bin/env python3
"""`make bench`: every side-by-side benchmark in turn, one combined result file, then the plots.

Runs bench/proxy_cost.py, bench/failover.py (pgha async/sync, Patroni default/fast), bench/scale.py,
bench/bringup.py, bench/backup.py and bench/partition.py (three test hosts) one after the other (never two at once: the machine has 2 cores), each writing
its own result file; then writes ``bench/results/<timestamp>.json`` holding all of them (with their
file names) and draws the PNG plots under docs/img/ (bench/plots.py).

Usage: bench/run_all.py [--only proxy,proxy-target,failover,scale,bringup,backup,partition] [--quick] [--output DIR]
``--quick`` runs fewer rounds and shorter windows (a smoke test of the whole pipeline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS, load, machine, stamp  # noqa: E402

PROXY_PATHS = ["--paths", "direct,pgha-proxy-asyncio,pgha-proxy,pgha-proxy-x2,haproxy"]
BENCHES = {
    "proxy": (["proxy_cost.py", "--rounds", "2", "--duration", "8", *PROXY_PATHS],
              ["proxy_cost.py", "--duration", "3", "--clients", "8", *PROXY_PATHS]),
    "proxy-target": (["proxy_cost.py", "--rounds", "5", "--clients", "8", "--workloads", "select", *PROXY_PATHS,
                      "--label", "target cell: select-only, 8 clients"],
                     ["proxy_cost.py", "--duration", "3", "--clients", "8", "--workloads", "select", *PROXY_PATHS]),
    "failover": (["failover.py", "--systems", "pgha-async,pgha-sync,patroni-default,patroni-fast", "--rounds", "5"],
                 ["failover.py", "--systems", "pgha-async,patroni-fast", "--rounds", "1"]),
    "scale": (["scale.py"], ["scale.py", "--keepers", "3,10", "--window", "5", "--settle", "3"]),
    "bringup": (["bringup.py", "--rounds", "3"], ["bringup.py", "--rounds", "1"]),
    # pgBackRest: 10 PITR targets restored in place, then a replica from backup next to pg_basebackup on ~1 GB
    "backup": (["backup.py"], ["backup.py", "--targets", "3", "--duration", "6", "--scale", "2"]),
    # three test hosts (root): every partition kind in both modes, then 30 minutes of chaos
    "partition": (["partition.py", "--rounds", "10", "--other-rounds", "3", "--chaos-minutes", "30"],
                  ["partition.py", "--rounds", "1", "--other-rounds", "1", "--kinds", "primary,proxy"]),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(BENCHES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output", default=str(RESULTS), help="where result files go (plots: docs/img, or OUTPUT/img)")
    args = p.parse_args()
    out_dir = Path(args.output)
    st = stamp()
    combined: dict = {"benchmark": "all", "time": st, "machine": machine(), "load_before": load(), "results": {}}
    failed = []
    for name in args.only.split(","):
        argv = BENCHES[name][1 if args.quick else 0]
        print(f"=== {name}: {' '.join(argv)}", flush=True)
        proc = subprocess.Popen([sys.executable, str(HERE / argv[0]), *argv[1:], "--output", str(out_dir)],
                                stdout=subprocess.PIPE, text=True)
        written = None
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("written to "):
                written = Path(line.split("written to ", 1)[1].strip())
        if proc.wait() != 0 or written is None:
            failed.append(name)
            continue
        combined["results"][name] = {"file": str(written.relative_to(HERE.parent) if written.is_relative_to(HERE.parent)
                                                 else written),
                                     "data": json.loads(written.read_text())}
    combined["load_after"] = load()
    combined["failed"] = failed
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{st}.json"
    out.write_text(json.dumps(combined, indent=2) + "\n")
    print(f"\ncombined results written to {out}")
    img = HERE.parent / "docs" / "img" if out_dir.resolve() == RESULTS.resolve() else out_dir / "img"
    subprocess.run([sys.executable, str(HERE / "plots.py"), str(out), "--out", str(img)], check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
