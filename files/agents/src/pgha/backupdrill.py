"""The backup drill's client side (``playbooks/backup_drill.yml``): marker rows, the target, the report.

``pgha-drill marks`` writes one marker row every ``--interval`` (1 s) through the proxy, one
transaction each, and records per row the server's clock right after the commit, the WAL position
and file the commit is in, and what the primary had archived at that moment
(``pg_stat_archiver``). When told to stop it writes no more and waits until the WAL file of its last
row is archived, so every target before it can be restored.

``pgha-drill restore-plan`` picks the recovery target from that record: halfway between the commit
of one marker and the start of the next, after the backup ended, so exactly the rows up to that
marker belong to the restored cluster.

``restore_report`` (the ``backup_drill_report`` module) reads the rows of the restored cluster
back and writes the JSON report (missing and extra rows, restore and replay times, WAL replayed,
what a total loss would have cost while the workload ran) and a PNG chart.

The analysis (``load_marks``, ``plan``, ``exposure``, ``compare``, ``segment_lsn``) is pure and
unit-tested; ``marks`` and ``restore_report`` do the I/O.
"""

from __future__ import annotations

import datetime
import json
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors

from pgha.drill import close_quietly, error_line
from pgha.model import lsn_to_int

SEGMENT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Mark:
    i: int
    started: float  # server clock (Unix seconds) when the INSERT began (the row's ``at``)
    committed: float  # server clock right after the commit
    lsn: str  # WAL position after the commit
    walfile: str  # the WAL file that position is in
    archived_wal: str  # the last WAL file the primary had archived then ("" when none)
    archived_at: float | None  # when it was archived (server clock)


@dataclass
class Marks:
    marks: list[Mark] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    started: float | None = None
    stopped: float | None = None
    archived_wal: str | None = None  # what was archived when the last row's WAL file was
    archive_waited: bool = False  # the last row's WAL file was seen archived
    unsure: set[int] = field(default_factory=set)  # rows whose commit the client could not see


def load_marks(path: str | Path) -> Marks:
    """Parse the file ``marks`` wrote (one event per line)."""
    out = Marks()
    for line in Path(path).read_text().splitlines():
        parts = line.split(" ")
        kind = parts[0] if parts else ""
        if kind == "mark" and len(parts) >= 8:
            out.marks.append(Mark(int(parts[1]), float(parts[2]), float(parts[3]), parts[4], parts[5],
                                  "" if parts[6] == "-" else parts[6],
                                  None if parts[7] == "-" else float(parts[7])))
        elif kind == "err" and len(parts) >= 2:
            out.errors.append((float(parts[1]), " ".join(parts[2:])))
        elif kind == "start" and len(parts) >= 2:
            out.started = float(parts[1])
        elif kind == "stop" and len(parts) >= 2:
            out.stopped = float(parts[1])
        elif kind == "unsure" and len(parts) >= 2:
            out.unsure.add(int(parts[1]))
        elif kind == "archived" and len(parts) >= 2:
            out.archived_wal, out.archive_waited = parts[1], True
    return out


def segment_lsn(walfile: str) -> int:
    """The start position of WAL file ``walfile`` (24 hex digits: timeline, log, segment)."""
    return (int(walfile[8:16], 16) << 32) + int(walfile[16:24], 16) * SEGMENT_BYTES


def _archived(walfile: str, archived_wal: str) -> bool:
    """Was ``walfile`` archived when ``archived_wal`` was the last archived file? (Same timeline:
    WAL files are archived in order, and their names sort in that order.)"""
    return bool(archived_wal) and walfile[8:] <= archived_wal[8:]


def iso(epoch: float) -> str:
    """A timestamp with its time zone, as PostgreSQL's recovery_target_time takes it."""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(sep=" ", timespec="microseconds")


def plan(m: Marks, backup_stop: float, fraction: float = 0.5) -> dict[str, Any]:
    """The recovery target: between marker k's commit and marker k+1's start, k the marker at
    ``fraction`` of those written after the backup ended (``backup_stop``, Unix seconds), both
    archived. Raises ValueError when the record has no such pair."""
    after = [mk for mk in m.marks if mk.started > backup_stop]
    last_archived = m.archived_wal if m.archive_waited else None
    pairs = [(a, b) for a, b in zip(after, after[1:])
             if b.i == a.i + 1 and b.started > a.committed and last_archived and _archived(b.walfile, last_archived)]
    if not pairs:
        raise ValueError(f"no two consecutive archived marker rows after the backup ended ({len(after)} rows after it"
                         + ("" if m.archive_waited else "; the last row's WAL was never seen archived") + ")")
    a, b = pairs[min(len(pairs) - 1, max(0, int(len(pairs) * fraction)))]
    target = (a.committed + b.started) / 2
    expected = [mk.i for mk in m.marks if mk.committed <= target]
    return {"target_time": iso(target), "target_epoch": round(target, 6), "last_row": a.i, "next_row": b.i,
            "target_lsn": a.lsn, "expected_rows": len(expected), "rows_written": len(m.marks),
            "margin_s": round(min(target - a.committed, b.started - target), 6)}


def exposure(m: Marks) -> dict[str, Any]:
    """What a total loss would have cost at each marker: the seconds of writes not yet in the
    archive (from the oldest committed marker whose WAL file was not archived to that moment), and
    the age of the last archived WAL file."""
    at_risk: list[float] = []
    ages: list[float] = []
    oldest = 0  # the first marker not known archived (WAL files are archived in order)
    for n, mk in enumerate(m.marks):
        while oldest <= n and _archived(m.marks[oldest].walfile, mk.archived_wal):
            oldest += 1
        at_risk.append(round(mk.committed - m.marks[oldest].committed, 3) if oldest <= n else 0.0)
        if mk.archived_at is not None:
            ages.append(round(mk.committed - mk.archived_at, 3))
    def stats(xs: list[float]) -> dict[str, Any]:
        return {"median": round(statistics.median(xs), 3), "max": max(xs)} if xs else {"median": None, "max": None}
    return {"writes_at_risk_s": stats(at_risk), "archive_age_s": stats(ages), "samples": len(m.marks),
            "series": {"committed": [round(mk.committed, 3) for mk in m.marks], "at_risk_s": at_risk}}


def compare(expected: list[int], found: list[int], unsure: set[int] | None = None) -> dict[str, Any]:
    """Missing and extra rows of the restored table, next to the ones expected (``unsure``: rows
    whose commit time the client never saw, counted neither way)."""
    e, f = set(expected) - (unsure or set()), set(found) - (unsure or set())
    missing, extra = sorted(e - f), sorted(f - e)
    return {"expected": len(e), "found": len(f), "missing": len(missing), "extra": len(extra),
            "missing_rows": missing[:100], "extra_rows": extra[:100]}


# ---------------------------------------------------------------------------------------- I/O

ARCHIVE_SQL = ("SELECT coalesce(last_archived_wal, '-'), "
               "coalesce(extract(epoch FROM last_archived_time)::text, '-') FROM pg_stat_archiver")


def marks(dsn: str, table: str, out: Path, interval: float = 1.0, max_duration: float = 900,
          archive_wait: float = 120.0) -> int:
    """Write a marker row every ``interval`` until SIGTERM/SIGINT or ``max_duration``, then wait up to
    ``archive_wait`` seconds for the last row's WAL file to be archived (``archived`` line)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + max_duration
    conn: Any = None
    n = 0
    last_wal = ""

    def error(f: Any, exc: Exception) -> None:
        nonlocal conn
        f.write(f"err {time.time():.6f} {error_line(exc)}\n")
        close_quietly(conn)
        conn = None

    def connect() -> Any:
        c = psycopg2.connect(dsn, connect_timeout=2)
        c.autocommit = True
        return c

    with open(out, "a", buffering=1) as f:
        f.write(f"start {time.time():.6f}\n")
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = connect()
                    with conn.cursor() as cur:
                        cur.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (i int PRIMARY KEY, '
                                    "at timestamptz NOT NULL DEFAULT clock_timestamp())")
                with conn.cursor() as cur:
                    cur.execute(f'INSERT INTO "{table}" (i) VALUES (%s) RETURNING extract(epoch FROM at)', (n + 1,))
                    started = cur.fetchone()[0]
                    n += 1
                    cur.execute("SELECT extract(epoch FROM clock_timestamp()), pg_current_wal_lsn()::text, "
                                "pg_walfile_name(pg_current_wal_lsn())")
                    committed, lsn, walfile = cur.fetchone()
                    cur.execute(ARCHIVE_SQL)
                    archived, archived_at = cur.fetchone()
                last_wal = walfile
                f.write(f"mark {n} {float(started):.6f} {float(committed):.6f} {lsn} {walfile} "
                        f"{archived} {archived_at}\n")
                stop.wait(interval)
            except psycopg2.errors.UniqueViolation:
                # the last INSERT did commit though its connection broke: no record of when
                n += 1
                f.write(f"unsure {n}\n")
            except psycopg2.Error as exc:
                error(f, exc)
                stop.wait(min(interval, 0.2))
        f.write(f"stop {time.time():.6f}\n")
        # every target up to the last row needs that row's WAL file in the archive
        wait_until = time.monotonic() + archive_wait
        archived = "-"
        while last_wal and time.monotonic() < wait_until:
            try:
                if conn is None:
                    conn = connect()
                with conn.cursor() as cur:
                    cur.execute(ARCHIVE_SQL)
                    archived = cur.fetchone()[0]
                if archived != "-" and _archived(last_wal, archived):
                    f.write(f"archived {archived}\n")
                    break
            except psycopg2.Error as exc:
                error(f, exc)
            time.sleep(0.5)
        else:
            if last_wal:
                f.write(f"err {time.time():.6f} WAL file {last_wal} of the last row not archived within "
                        f"{archive_wait:.0f}s (last archived: {archived})\n")
    close_quietly(conn)
    return 0


def restored_rows(dsn: str, table: str, password: str | None = None, wait: float = 60.0) -> tuple[list[int], float]:
    """The marker rows in the restored cluster (through its proxy), retried while it comes up, and
    when it took a write (a row in ``<table>_after``, which the restore did not bring back)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn = psycopg2.connect(dsn, password=password, connect_timeout=3) if password else \
                psycopg2.connect(dsn, connect_timeout=3)
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f'SELECT i FROM "{table}" ORDER BY i')
                    rows = [r[0] for r in cur.fetchall()]
                    cur.execute(f'CREATE TABLE IF NOT EXISTS "{table}_after" (at timestamptz DEFAULT clock_timestamp())')
                    cur.execute(f'INSERT INTO "{table}_after" DEFAULT VALUES')
                return rows, time.time()
            finally:
                conn.close()
        except psycopg2.Error:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1)


def restore_report(events: str | Path, target: dict[str, Any], backup: dict[str, Any], restored: dict[str, Any],
                   dsn: str, table: str, out_json: str | Path, out_png: str | Path | None = None,
                   password: str | None = None, extra: dict[str, Any] | None = None,
                   deploy_started: float | None = None) -> dict[str, Any]:
    """Read the restored cluster's rows and write the backup drill's report (JSON, and PNG with
    matplotlib). ``target``: what ``plan`` chose; ``backup``: the backup as listed (``label``,
    ``stop``, ``wal_start``, ``lsn_start``...); ``restored``: the restored primary's record
    (``restore_seconds``, ``replay_seconds``...); ``deploy_started``: when the second cluster's
    deployment began (Unix seconds), for the seconds until it took a write."""
    m = load_marks(events)
    expected = [mk.i for mk in m.marks if mk.committed <= float(target["target_epoch"])]
    found, writable_at = restored_rows(dsn, table, password)
    rows = compare(expected, found, m.unsure)
    start = backup.get("lsn_start") or ""
    start_pos = lsn_to_int(start) if start else (segment_lsn(backup["wal_start"]) if backup.get("wal_start") else None)
    replayed = lsn_to_int(target["target_lsn"]) - start_pos if start_pos is not None else None
    exp = exposure(m)
    rep: dict[str, Any] = {
        "drill": "backup",
        "rows": rows,
        "target": {k: target[k] for k in ("target_time", "last_row", "next_row", "margin_s", "rows_written")
                   if k in target},
        "backup": {k: backup.get(k) for k in ("label", "type", "start", "stop", "size_bytes")},
        "restore": {"backup": restored.get("backup"), "stanza": restored.get("stanza"),
                    "timeline": restored.get("timeline"),
                    "restore_s": restored.get("restore_seconds"), "replay_s": restored.get("replay_seconds"),
                    "wal_replayed_bytes": replayed,
                    "deploy_to_writable_s": round(writable_at - deploy_started, 3) if deploy_started else None},
        "total_loss": {"writes_at_risk_s": exp["writes_at_risk_s"], "archive_age_s": exp["archive_age_s"],
                       "samples": exp["samples"]},
        "client_errors": len(m.errors),
    }
    rep.update(extra or {})
    if out_png:
        drawn = _chart(rep, m, exp, float(target["target_epoch"]), backup, Path(out_png))
        rep["chart"] = str(out_png) if drawn else "not drawn: matplotlib is not installed"
    r = rep["restore"]
    rep["summary"] = (f"restored {rows['found']} of {len(m.marks)} marker rows to {target['target_time']}: "
                      f"{rows['missing']} missing, {rows['extra']} extra; restore {r['restore_s']}s, replay "
                      f"{r['replay_s']}s" + (f" ({replayed / 1048576:.1f} MiB of WAL)" if replayed is not None else "")
                      + f"; a total loss would have cost up to {exp['writes_at_risk_s']['max']}s of writes "
                      f"(median {exp['writes_at_risk_s']['median']}s)")
    Path(out_json).write_text(json.dumps(rep, indent=2, sort_keys=True))
    return rep


def _chart(rep: dict[str, Any], m: Marks, exp: dict[str, Any], target: float, backup: dict[str, Any],
           path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t0 = m.marks[0].committed if m.marks else target
    xs = [mk.committed - t0 for mk in m.marks]
    fig, ax = plt.subplots(figsize=(11, 3.8))
    ax.plot(xs, exp["series"]["at_risk_s"], color="#c44e52", drawstyle="steps-post",
            label="seconds of writes not yet archived")
    ax.scatter(xs, [0] * len(xs), marker="|", color="#4c72b0", label="marker rows")
    for name, t, color in (("backup started", backup.get("start"), "#8172b2"),
                           ("backup ended", backup.get("stop"), "#8172b2"), ("recovery target", target, "#55a868")):
        if t is not None:
            ax.axvline(float(t) - t0, color=color, linestyle="--", linewidth=1.2, label=name)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_xlabel("seconds since the first marker row")
    ax.set_ylabel("seconds")
    rows, r = rep["rows"], rep["restore"]
    ax.set_title(f"pgha backup drill: restore into a second cluster\n{rows['missing']} rows missing, "
                 f"{rows['extra']} extra; restore {r['restore_s']}s, replay {r['replay_s']}s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
