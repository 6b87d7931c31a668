#!/usr/bin/env python3
"""Backups with pgBackRest on a real pgha cluster (real etcd, PostgreSQL 15 and pgBackRest, 2 keepers,
1 sentinel, 1 proxy, the repository on this machine's disk):

* **PITR exactness**: a full backup, then one row per transaction every ``--interval`` seconds for
  ``--duration`` seconds through the proxy, the server's clock read after each commit. ``--targets``
  target times spread over the writes, each halfway between a row's commit and the next one's.
  Each is restored in place (``pghactl init --yes`` with ``init_mode: pitr``), latest first, and the
  rows are counted: missing (committed before the target, not restored) and extra (committed after
  it, restored). Restoring the latest target first keeps every earlier one on the history the
  recovery follows (each recovery forks a new timeline at its target).
* **Size**: ``pgbench -i -s --scale`` (70 is about 1 GB), a full backup, then a replica added with
  ``replica_create_method: backup`` and one with ``basebackup``, in the same run: the time each
  took to be created (the keepers' own log lines), and what each read from the primary. A base
  backup reads the whole database (its size is given). A replica from backup reads only the WAL
  written since the backup; the figure is the primary's WAL position when the replica streams minus
  its position when the backup ended, an upper bound.

Writes bench/results/backup-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import harness, load, prepare, tmp_dir, write_result  # noqa: E402

from pgha.model import lsn_to_int  # noqa: E402


def healthy(n: int, not_uid: tuple[str, ...] = ()):
    def pred(st: dict[str, Any]) -> bool:
        c = st["cluster"]
        ks = st["keepers"]
        return (c["phase"] == "normal" and bool(c["primary"]) and not c.get("transition")
                and c["uid"] not in not_uid and len(ks) >= n and all(k["healthy"] for k in ks)
                and all(k["streaming"] for k in ks if k["uid"] != c["primary"])
                and all(p["target"] == c["primary"] for p in st["proxies"]))
    return pred


def superuser(cluster: Any, uid: str, db: str = "app") -> Any:
    conn = cluster.connect_superuser(uid, dbname=db)
    conn.autocommit = True
    return conn


def one(conn: Any, sql: str, *args: Any) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchone()[0]


def archive_all(cluster: Any, primary: str) -> None:
    conn = superuser(cluster, primary, "postgres")
    try:
        segment = one(conn, "SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 120
        while (one(conn, "SELECT last_archived_wal FROM pg_stat_archiver") or "")[8:] < segment[8:]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{segment} not archived within 120 s")
            time.sleep(0.2)
    finally:
        conn.close()


def exactness(cluster: Any, args: argparse.Namespace) -> dict[str, Any]:
    st = cluster.status()
    primary = st["cluster"]["primary"]
    conn = cluster.connect_rw()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE marks (i int PRIMARY KEY)")
    conn.close()
    backup = json.loads(cluster.ctl("backup", "--format", "json", timeout=600).stdout)
    conn = cluster.connect_rw()
    conn.autocommit = True
    committed: list[tuple[int, float]] = []  # (row, server clock after its commit, epoch seconds)
    t_end = time.monotonic() + args.duration
    i = 0
    with conn.cursor() as cur:
        while time.monotonic() < t_end:
            i += 1
            cur.execute("INSERT INTO marks (i) VALUES (%s)", (i,))
            cur.execute("SELECT extract(epoch FROM clock_timestamp())")
            committed.append((i, float(cur.fetchone()[0])))
            time.sleep(args.interval)
    conn.close()
    archive_all(cluster, primary)
    picks = [committed[round(k * (len(committed) - 2) / (args.targets - 1))] for k in range(args.targets)]
    rows = []
    seen = (st["cluster"]["uid"],)
    for row, at in sorted(picks, reverse=True):
        target = datetime.datetime.fromtimestamp(at + args.interval / 2, datetime.timezone.utc).isoformat(sep=" ")
        t0 = time.monotonic()
        cluster.ctl("init", "--yes", "--spec", json.dumps({"init_mode": "pitr", "pitr": {"target_time": target}}))
        st = cluster.wait_for(healthy(2, seen), timeout=600, what=f"the restore to {target}")
        seconds = time.monotonic() - t0
        seen += (st["cluster"]["uid"],)
        conn = cluster.connect_rw()
        with conn.cursor() as cur:
            cur.execute("SELECT i FROM marks")
            got = {r[0] for r in cur.fetchall()}
        conn.close()
        expected = set(range(1, row + 1))
        p = next(k for k in st["keepers"] if k["uid"] == st["cluster"]["primary"])
        restored = (p.get("backup") or {}).get("restored") or {}
        rows.append({"target": target, "last_row_before": row, "rows_restored": len(got),
                     "missing": len(expected - got), "extra": len(got - expected),
                     "seconds_to_healthy": round(seconds, 2), "timeline": p["timeline"],
                     "backup": restored.get("backup")})
        print(f"  target {target}: {len(got)} rows, missing {len(expected - got)}, extra {len(got - expected)}, "
              f"{seconds:.1f} s to a healthy cluster (timeline {p['timeline']})", flush=True)
    return {"backup": backup["label"], "rows_written": len(committed), "interval_s": args.interval,
            "targets": rows, "missing_total": sum(r["missing"] for r in rows),
            "extra_total": sum(r["extra"] for r in rows),
            "seconds_to_healthy_median": round(statistics.median(r["seconds_to_healthy"] for r in rows), 2)}


def log_seconds(agent: Any, pattern: str) -> float | None:
    m = re.search(pattern, agent.log_text())
    return float(m.group(1)) if m else None


def size(cluster: Any, args: argparse.Namespace) -> dict[str, Any]:
    st = cluster.status()
    primary = st["cluster"]["primary"]
    t0 = time.monotonic()
    port = cluster.keeper_pg_port[primary]
    subprocess.run([f"{harness.PG_BIN}/pgbench", "-i", "-q", "-s", str(args.scale), "-h",
                    str(cluster.tmp / primary / "data" / "run"), "-p", str(port), "-U", "postgres", "app"],
                   check=True, capture_output=True, text=True)
    pgbench_s = time.monotonic() - t0
    conn = superuser(cluster, primary, "postgres")
    db_bytes = int(one(conn, "SELECT sum(pg_database_size(datname)) FROM pg_database"))
    conn.close()
    t0 = time.monotonic()
    backup = json.loads(cluster.ctl("backup", "--format", "json", timeout=3600).stdout)
    backup_s = time.monotonic() - t0
    conn = superuser(cluster, primary, "postgres")
    lsn_after_backup = lsn_to_int(one(conn, "SELECT pg_current_wal_lsn()::text"))
    conn.close()
    print(f"  {db_bytes / 1e9:.2f} GB (pgbench -s {args.scale} in {pgbench_s:.0f} s); full backup {backup['label']} "
          f"in {backup_s:.0f} s, {backup['size_bytes'] / 1e6:.0f} MB in the repository", flush=True)

    t0 = time.monotonic()
    cluster.add_keeper("frombackup").start()
    cluster.wait_for(healthy(3), timeout=3600, what="the replica from backup streaming")
    from_backup_wall = time.monotonic() - t0
    conn = superuser(cluster, primary, "postgres")
    wal_served = lsn_to_int(one(conn, "SELECT pg_current_wal_lsn()::text")) - lsn_after_backup
    conn.close()
    from_backup_s = log_seconds(cluster.keepers["frombackup"], r"replica created from backup \S+ \(.*?\) in ([\d.]+)s")

    cluster.ctl("update", "--patch", '{"replica_create_method": "basebackup"}')
    t0 = time.monotonic()
    cluster.add_keeper("basebackup").start()
    cluster.wait_for(healthy(4), timeout=3600, what="the replica from pg_basebackup streaming")
    basebackup_wall = time.monotonic() - t0
    basebackup_s = log_seconds(cluster.keepers["basebackup"], r"base backup from \S+ done in ([\d.]+)s")
    out = {"scale": args.scale, "database_bytes": db_bytes, "backup": backup["label"],
           "backup_seconds": round(backup_s, 1), "backup_repository_bytes": backup["size_bytes"],
           "replica_from_backup": {"create_seconds": from_backup_s, "seconds_to_streaming": round(from_backup_wall, 1),
                                   "bytes_from_primary_at_most": wal_served},
           "replica_from_basebackup": {"create_seconds": basebackup_s,
                                       "seconds_to_streaming": round(basebackup_wall, 1),
                                       "bytes_from_primary_about": db_bytes},
           "from_backup_reads_of_basebackup": round(wal_served / db_bytes, 4) if db_bytes else None}
    print(f"  replica from backup: {from_backup_s} s ({from_backup_wall:.0f} s to streaming), at most "
          f"{wal_served / 1e6:.1f} MB from the primary; from pg_basebackup: {basebackup_s} s "
          f"({basebackup_wall:.0f} s to streaming), about {db_bytes / 1e6:.0f} MB", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", type=int, default=10, help="PITR targets (default 10)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of writes the targets spread over")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between two rows")
    p.add_argument("--scale", type=int, default=70, help="pgbench scale of the size part (70: about 1 GB); 0 skips it")
    p.add_argument("--output", default=str(HERE / "results"))
    args = p.parse_args()
    if args.targets < 2:
        p.error("--targets: at least 2")
    if not prepare("pgbackrest is not installed" if subprocess.run(["sh", "-c", "command -v pgbackrest"],
                                                                   capture_output=True).returncode else ""):
        return 2
    base = tmp_dir("pgha-bench-backup-")
    cluster = harness.PghaCluster(base / "c", keepers=2, sentinels=1, proxies=1, backup_repo=True)
    load_before = load()
    try:
        cluster.start()
        cluster.wait_for(healthy(2), timeout=180, what="a healthy 2-keeper cluster")
        cluster.wait_for(lambda s: all((k.get("backup") or {}).get("stanza") for k in s["keepers"]
                                       if k["uid"] == s["cluster"]["primary"]), timeout=120, what="the stanza")
        print(f"PITR exactness: {args.targets} targets over {args.duration:.0f} s of writes", flush=True)
        doc: dict[str, Any] = {"exactness": exactness(cluster, args)}
        if args.scale > 0:
            print(f"size: pgbench scale {args.scale}", flush=True)
            doc["size"] = size(cluster, args)
        doc["load_before"], doc["load_after"] = load_before, load()
    finally:
        cluster.stop()
        harness.remove_tree(base)
    path = write_result("backup", doc, args.output)
    e = doc["exactness"]
    print(f"missing {e['missing_total']}, extra {e['extra_total']} over {len(e['targets'])} targets; "
          f"median {e['seconds_to_healthy_median']} s from init to a healthy cluster")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
