"""Pieces shared by the benchmarks: the write probe, machine/load facts, result files, cleanup.

The probe is the client's view of a drill: one acknowledged INSERT every ``interval`` seconds over
whatever connection a ``connect()`` callable gives (pgha-proxy for pgha, a libpq multi-host string
for Patroni). Write unavailability is the longest gap between two acknowledged writes around the
event; lost writes are acknowledged ids that the new primary does not have.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "files" / "agents" / "tests"))

import psycopg2  # noqa: E402

import harness  # noqa: E402,F401  (re-exported for the benchmarks)
from pgha.drill import close_quietly, missing  # noqa: E402

Connect = Callable[..., Any]


class Probe:
    """One acknowledged INSERT every ``interval`` through ``connect()``; reconnects on any error."""

    def __init__(self, connect: Connect, table: str, interval: float = 0.02) -> None:
        self.connect = connect
        self.table = table
        self.interval = interval
        self.acks: list[tuple[int, float]] = []
        self.errors: list[float] = []
        self.servers: list[tuple[float, int]] = []  # (time, PostgreSQL port) of each connection made
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def start(self) -> "Probe":
        deadline = time.monotonic() + 15
        while True:  # a connection may be closed by a proxy that is still settling: try again briefly
            try:
                conn = self.connect()
                break
            except psycopg2.OperationalError as exc:
                self.errors.append(time.monotonic())
                if time.monotonic() > deadline:
                    raise
                print(f"probe: first connection failed, retrying: {str(exc).strip()}", file=sys.stderr)
                time.sleep(0.2)
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
                    conn = self.connect(connect_timeout=2)
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute("SELECT inet_server_port()")
                        self.servers.append((time.monotonic(), cur.fetchone()[0]))
                self._n += 1
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (self._n,))
                self.acks.append((self._n, time.monotonic()))
                time.sleep(self.interval)
            except psycopg2.Error:
                self.errors.append(time.monotonic())
                close_quietly(conn)
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def acks_after(self, t0: float) -> int:
        return sum(1 for _, t in self.acks if t > t0)

    def gap(self, start: float, end: float) -> float:
        """Longest gap between acknowledged writes from just before ``start`` to ``end``; when no write
        was acknowledged after ``start`` at all, the time from the last one before it to ``end``."""
        times = [t for _, t in self.acks if start - 1.0 <= t <= end]
        before = [t for _, t in self.acks if t < start]
        if before:
            times.insert(0, before[-1])
        if not any(t > start for t in times):
            times.append(end)
        gaps = [b - a for a, b in zip(times, times[1:])]
        return max(gaps) if gaps else float("nan")

    def lost(self) -> list[int]:
        return missing(self.connect(), self.table, (i for i, _ in self.acks))

    def wait_flowing(self, t0: float, t_new: float, min_after: float = 2.0, writes: int = 5,
                     timeout: float = 120.0) -> float:
        """Wait until ``writes`` writes were acknowledged after ``t_new`` (when the new primary was seen)
        and at least ``min_after`` s passed since the event at ``t0``; returns the time.

        Counting from ``t_new``, not ``t0``: a write acknowledged by the old primary in the instant
        between the event and its effect must not count as writes flowing again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.acks_after(t_new) >= writes and time.monotonic() - t0 > min_after:
                break
            time.sleep(0.05)
        return time.monotonic()

    def result(self, t0: float, t_end: float) -> dict[str, Any]:
        if not self.acks:
            raise RuntimeError(f"the probe never wrote: {len(self.errors)} errors")
        first_after = next((t for _, t in self.acks if t > t0), float("nan"))
        return {
            "write_unavailability_s": round(self.gap(t0, t_end), 3),
            "first_write_after_event_s": round(first_after - t0, 3),
            "acknowledged_writes": len(self.acks),
            "lost_acknowledged_writes": len(self.lost()),
            "client_errors": len(self.errors),
            "servers_written_after_event": sorted({port for t, port in self.servers if t > t0}),
        }


def summarize_drills(results: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """Median/worst/best unavailability and lost writes per ``key(result)``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for name, rs in groups.items():
        u = [r["write_unavailability_s"] for r in rs]
        out[name] = {
            "drills": len(rs),
            "median_unavailability_s": round(statistics.median(u), 3),
            "worst_unavailability_s": round(max(u), 3),
            "best_unavailability_s": round(min(u), 3),
            "lost_acknowledged_writes": sum(r["lost_acknowledged_writes"] for r in rs),
        }
    return out


def share_proxy_ports(cluster: "harness.PghaCluster", uids: list[str]) -> None:
    """Make the proxies ``uids`` of a not yet started cluster workers of one proxy, as the proxy role
    deploys them (proxy_workers): all listen on the first one's ports with --reuse-port, each keeps
    its uid and API port."""
    first = uids[0]
    for uid in uids:
        argv = cluster.proxies[uid].argv
        argv[argv.index("--port") + 1] = str(cluster.proxy_port[first])
        argv[argv.index("--ro-port") + 1] = str(cluster.proxy_ro_port[first])
        cluster.proxy_port[uid], cluster.proxy_ro_port[uid] = cluster.proxy_port[first], cluster.proxy_ro_port[first]
        argv += ["--reuse-port", "true"]


def load() -> dict[str, Any]:
    """Load averages and uptime text now (the machine is shared: figures are read with this)."""
    try:
        la = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        la = []
    return {"loadavg_1_5_15": la, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def write_result(name: str, doc: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``doc`` (plus machine facts) to ``<out_dir>/<name>-<timestamp>.json``; returns the path."""
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    st = doc.setdefault("time", stamp())
    doc.setdefault("benchmark", name)
    doc.setdefault("machine", machine())
    path = out / f"{name}-{st}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nwritten to {path}", flush=True)
    return path


def tmp_dir(prefix: str) -> Path:
    """A fresh directory the agent user can reach."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    return base


def prepare(*also_missing: str) -> bool:
    """Whether a benchmark can run: etcd, PostgreSQL, the agents' user and venv are there, and none of
    ``also_missing`` (reasons found by the caller) is set. Prints why not; when it can run, a SIGTERM
    from then on unwinds through the benchmark's ``finally`` blocks (see exit_on_sigterm)."""
    missing = [m for m in (harness.missing_requirements(("etcd", "postgres", "user", "agents")), *also_missing) if m]
    if missing:
        print(f"cannot run: {'; '.join(missing)}", file=sys.stderr)
        return False
    exit_on_sigterm()
    return True


def exit_on_sigterm() -> None:
    """A SIGTERM unwinds through ``finally`` blocks (which stop every process a benchmark started)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
