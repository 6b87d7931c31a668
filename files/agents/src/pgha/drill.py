"""pgha-drill: the client's view of a failover drill.

``pgha-drill probe`` writes one row every ``--interval`` through a connection string (the proxy)
and records every acknowledgement and every error, one line each, in an events file. It reconnects
on any error and stops on SIGTERM/SIGINT or after ``--max-duration``.

``pgha-drill report`` reads the events file, the markers the playbook recorded (kill, resume, ...)
and the cluster's ``last_transition`` timeline, reads back every acknowledged id from the (new)
primary, and writes a JSON report and, when matplotlib is installed, a PNG chart of successful
writes per 100 ms with the events marked. It prints a one-line summary and exits non-zero when a
budget (``--max-rto``, ``--max-lost``) is exceeded.

``pgha-drill marks`` and ``pgha-drill restore-plan`` are the backup drill's
(``playbooks/backup_drill.yml``): a marker row every second with the WAL file it is in and what was
archived, and the recovery target chosen between two of them (``pgha.backupdrill``).

The analysis (``analyze``) is a pure function of the events and markers, unit-tested on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import psycopg2

from pgha.log import redact
from pgha.procs import descendants, pid_alive, signal_tree

# marker names of the disruption a drill measures from, in the order they are looked for
DISRUPTIONS = ("kill", "crash", "freeze", "switchover", "partition", "disrupt")


@dataclass
class Events:
    acks: list[tuple[int, float]] = field(default_factory=list)  # (id, wall time of the acknowledgement)
    errors: list[tuple[float, str]] = field(default_factory=list)
    started: float | None = None
    stopped: float | None = None
    servers: dict[int, str] = field(default_factory=dict)  # id -> "address:port" of the PostgreSQL that acknowledged
    timelines: dict[int, int] = field(default_factory=dict)  # id -> the timeline that PostgreSQL wrote on

    @staticmethod
    def load(path: str | Path) -> "Events":
        ev = Events()
        for line in Path(path).read_text().splitlines():
            parts = line.split(" ", 2)
            if not parts or not parts[0]:
                continue
            kind = parts[0]
            if kind == "ok" and len(parts) >= 3:
                at, _, rest = parts[2].partition(" ")
                server, _, timeline = rest.partition(" ")
                ev.acks.append((int(parts[1]), float(at)))
                if server:
                    ev.servers[int(parts[1])] = server
                if timeline.isdigit():
                    ev.timelines[int(parts[1])] = int(timeline)
            elif kind == "err" and len(parts) >= 2:
                ev.errors.append((float(parts[1]), parts[2] if len(parts) > 2 else ""))
            elif kind == "start":
                ev.started = float(parts[1])
            elif kind == "stop":
                ev.stopped = float(parts[1])
        return ev


# ---------------------------------------------------------------------------------------- probe



def close_quietly(conn: Any) -> None:
    """Close a psycopg2 connection (or None) that may already be broken."""
    if conn is not None:
        try:
            conn.close()
        except psycopg2.Error:
            pass

def error_line(exc: Exception) -> str:
    """The first line of a client error, passwords redacted (an events file's ``err`` line)."""
    text = str(exc).strip()
    return redact(text.splitlines()[0] if text else type(exc).__name__)


def probe(dsn: str, table: str, out: Path, interval: float, max_duration: float) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + max_duration
    n = 0
    conn = None
    with open(out, "a", buffering=1) as f:
        f.write(f"start {time.time():.6f}\n")
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = psycopg2.connect(dsn, connect_timeout=2)
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (id bigint PRIMARY KEY, '
                                    "at timestamptz DEFAULT now())")
                n += 1
                with conn.cursor() as cur:
                    # which PostgreSQL acknowledged it (through a proxy: the one it routed to), and the
                    # timeline it writes on: each promotion starts a higher one
                    cur.execute(f'INSERT INTO "{table}" (id) VALUES (%s) '
                                "RETURNING coalesce(host(inet_server_addr()), 'local'), inet_server_port(), "
                                "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int", (n,))
                    addr, port, tli = cur.fetchone()
                f.write(f"ok {n} {time.time():.6f} {addr}:{port} {tli}\n")
                stop.wait(interval)
            except psycopg2.Error as exc:
                f.write(f"err {time.time():.6f} {error_line(exc)}\n")
                close_quietly(conn)
                conn = None
                stop.wait(min(interval, 0.05))
        f.write(f"stop {time.time():.6f}\n")
    if conn is not None:
        conn.close()
    return 0


# ---------------------------------------------------------------------------------------- analysis


def analyze(ev: Events, markers: dict[str, float], transition: dict[str, Any] | None = None,
            bucket: float = 0.1) -> dict[str, Any]:
    """Write unavailability and the event timeline, from the client's acknowledgements.

    ``markers`` must hold the disruption time under ``kill`` (or ``switchover``, ``freeze``).
    The unavailability is the longest gap between two consecutive acknowledgements that spans or
    follows the disruption; with no acknowledgement after it, it runs to the end of the probe."""
    event = next((markers[k] for k in DISRUPTIONS if k in markers), None)
    if event is None:
        raise ValueError("markers need the disruption time: " + ", ".join(DISRUPTIONS))
    times = [t for _, t in ev.acks]
    before = [t for t in times if t <= event]
    after = [t for t in times if t > event]
    last_before = before[-1] if before else (ev.started if ev.started is not None else event)
    first_after = after[0] if after else None
    end = ev.stopped if ev.stopped is not None else (times[-1] if times else event)
    gaps = [(b - a, a, b) for a, b in zip([last_before] + after, after)]
    if first_after is None:
        worst = (end - last_before, last_before, end)
    else:
        worst = max(gaps, key=lambda g: g[0])
    timeline: dict[str, float | None] = {k: v for k, v in markers.items()}
    if transition:
        # the sentinel's times (detection: it saw the failure; election: every proxy had acknowledged
        # the fence and it ordered the promotion; promotion: it saw the new primary) and, where the
        # parties record their own, theirs: the prober's first refused connection and its confirmed
        # crash, the last proxy's fence applied, the new primary's pg_promote() called and done
        names = {"suspected": "suspicion", "confirmed": "confirmation", "detected": "detection",
                 "fence_acknowledged": "fence_acknowledged", "promoted": "election",
                 "promote_called": "promote_called", "promote_done": "promoted",
                 "completed": "promotion"}
        for k, name in names.items():
            v = transition.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v:
                timeline[name] = float(v)
    # the client's writes resume at the end of the outage (an acknowledgement already in flight when
    # the disruption hit is not a resumption)
    resumed = worst[2] if first_after is not None else None
    timeline["first_successful_write"] = resumed
    t0 = ev.started if ev.started is not None else (times[0] if times else event)
    # every outage a client would notice: gaps well above the write interval
    typical = sorted(b - a for a, b in zip(times, times[1:]))
    floor = max(0.2, 5 * typical[len(typical) // 2]) if typical else 0.2
    outages = [g for g in gaps if g[0] >= floor] if first_after is not None else [worst]
    return {
        "rto_s": round(worst[0], 3),
        "total_unavailable_s": round(sum(g[0] for g in outages), 3),
        "outages": [{"from": a, "to": b, "seconds": round(d, 3)} for d, a, b in outages],
        "outage_from": worst[1],
        "outage_to": worst[2],
        "first_write_after_event_s": round(resumed - event, 3) if resumed is not None else None,
        "acknowledged_writes": len(ev.acks),
        "client_errors": len(ev.errors),
        "events": {k: (round(v - event, 3) if v is not None else None) for k, v in sorted(
            timeline.items(), key=lambda kv: kv[1] if kv[1] is not None else float("inf"))},
        "events_wall": timeline,
        "series": {"start": t0, "bucket_s": bucket, "writes": series(ev, t0, end, bucket)},
    }


def by_server(workloads: dict[str, Events]) -> dict[str, dict[str, Any]]:
    """For each PostgreSQL that acknowledged writes: how many, and the first and last (wall time)."""
    out: dict[str, dict[str, Any]] = {}
    for name, ev in workloads.items():
        for i, t in ev.acks:
            server = ev.servers.get(i, "unknown")
            row = out.setdefault(server, {"acknowledged": 0, "first": t, "last": t, "workloads": []})
            row["acknowledged"] += 1
            row["first"], row["last"] = min(row["first"], t), max(row["last"], t)
            if name not in row["workloads"]:
                row["workloads"].append(name)
    return out


def overlap(workloads: dict[str, Events], old: str, new: str, event: float) -> dict[str, Any]:
    """Did two primaries acknowledge writes at once? ``old`` and ``new`` are the two primaries'
    "address:port". ``overlap_s`` is the old primary's last acknowledgement after ``event`` minus the
    new primary's first: negative when the old one had stopped before the new one acknowledged
    anything (the fencing held), positive for how long both accepted writes."""
    servers = by_server(workloads)
    old_last = max((t for ev in workloads.values() for i, t in ev.acks
                    if ev.servers.get(i) == old), default=None)
    new_first = min((t for ev in workloads.values() for i, t in ev.acks
                     if ev.servers.get(i) == new and t > event), default=None)
    value = round(old_last - new_first, 3) if old_last is not None and new_first is not None else None
    return {
        "old_primary_server": old,
        "new_primary_server": new,
        "old_primary_last_ack_s": round(old_last - event, 3) if old_last is not None else None,
        "new_primary_first_ack_s": round(new_first - event, 3) if new_first is not None else None,
        "overlap_s": value,
        "two_primaries_acknowledged": value is not None and value >= 0,
        "acknowledged_by_server": {k: {**v, "first": round(v["first"] - event, 3), "last": round(v["last"] - event, 3)}
                                   for k, v in sorted(servers.items())},
    }


def split_brain(workloads: dict[str, Events]) -> dict[str, Any]:
    """Did an older primary acknowledge a write after a newer one had? Every promotion starts a
    higher timeline, so over all the clients' acknowledgements, in time order, a write on timeline
    T acknowledged after the first one on a higher timeline means two primaries accepted writes at
    once. ``windows`` lists each (the older timeline's last acknowledgement after the newer's first,
    and by how long); ``worst_s`` is the longest, 0 when there is none."""
    acks = sorted((t, ev.timelines[i], ev.servers.get(i, "unknown"), name)
                  for name, ev in workloads.items() for i, t in ev.acks if i in ev.timelines)
    first: dict[int, tuple[float, str]] = {}
    for t, tli, server, _ in acks:
        first.setdefault(tli, (t, server))
    windows = []
    for newer, (t_new, s_new) in sorted(first.items()):
        late = [(t, tli, server, name) for t, tli, server, name in acks if tli < newer and t > t_new]
        if late:
            t_last, tli, server, name = late[-1]
            windows.append({"older_timeline": tli, "older_server": server, "newer_timeline": newer,
                            "newer_server": s_new, "newer_first_ack": t_new, "older_last_ack": t_last,
                            "seconds": round(t_last - t_new, 3), "late_acks": len(late), "workload": name})
    return {"timelines": {str(k): {"first_ack": v[0], "server": v[1]} for k, v in sorted(first.items())},
            "windows": windows, "worst_s": max((w["seconds"] for w in windows), default=0.0),
            "acknowledgements_with_timeline": len(acks)}


def missing(conn: Any, table: str, acked: Iterable[int]) -> list[int]:
    """The acknowledged ids that ``table`` does not hold, in order; closes ``conn``. Shared by the
    drills, the integration tests' writer and the benchmarks' probe."""
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT id FROM "{table}"')
            have = {r[0] for r in cur.fetchall()}
    finally:
        conn.close()
    return [i for i in acked if i not in have]


def missing_ids(ev: Events, dsn: str, table: str, password: str | None = None, wait: float = 30.0) -> list[int]:
    """The acknowledged ids of ``ev`` missing from ``table`` on ``dsn``. A server that cannot answer
    yet (starting up, a proxy between two routes) is asked again for up to ``wait`` seconds: a
    moment's unavailability after the drill must not fail its read-back."""
    kw = {"password": password} if password else {}
    acked = [i for i, _ in ev.acks]
    deadline = time.monotonic() + wait
    while True:
        try:
            return missing(psycopg2.connect(dsn, connect_timeout=5, **kw), table, acked)
        except psycopg2.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def series(ev: Events, t0: float, end: float, bucket: float = 0.1) -> list[int]:
    """Acknowledgements per ``bucket`` seconds from ``t0`` to ``end``."""
    n = int((end - t0) / bucket) + 1 if end > t0 else 1
    out = [0] * n
    for _, t in ev.acks:
        i = int((t - t0) / bucket)
        if 0 <= i < n:
            out[i] += 1
    return out


def chart(report: dict[str, Any], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    s = report["series"]
    xs = [i * s["bucket_s"] for i in range(len(s["writes"]))]
    fig, ax = plt.subplots(figsize=(11, 3.8))
    others = report.get("workloads", {})
    ax.bar(xs, s["writes"], width=s["bucket_s"], align="edge", color="#4c72b0",
           label="writes through the proxy" if others else None)
    for (name, w), color in zip(sorted(others.items()), ("#dd8452", "#8c564b", "#17becf")):
        ys = w["series"]
        ax.bar([i * s["bucket_s"] for i in range(len(ys))], ys, width=s["bucket_s"], align="edge", color=color,
               alpha=0.6, label=f"{name} writes ({w.get('description', '')})".replace(" ()", ""))
    colors = {"kill": "#c44e52", "crash": "#c44e52", "freeze": "#c44e52", "switchover": "#c44e52",
              "partition": "#c44e52", "resume": "#8172b2", "heal": "#8172b2",
              "detection": "#dd8452", "election": "#937860", "promotion": "#55a868",
              "first_successful_write": "#2ca02c"}
    event_t = next((report["events_wall"][k] for k in DISRUPTIONS
                    if report["events_wall"].get(k) is not None), s["start"])
    for name, t in sorted(report["events_wall"].items(), key=lambda kv: kv[1] if kv[1] is not None else 0):
        if t is None:
            continue
        ax.axvline(t - s["start"], color=colors.get(name, "#333333"), linestyle="--", linewidth=1.2,
                   label=f"{name.replace('_', ' ')} (+{t - event_t:.2f}s)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_xlabel("seconds since the probe started")
    ax.set_ylabel(f"writes per {int(s['bucket_s'] * 1000)} ms")
    sub = (f"writes unavailable {report['rto_s']}s, "
           f"{report.get('lost_acknowledged_writes', '?')} acknowledged writes lost")
    ov = (report.get("overlap") or {}).get("overlap_s")
    if ov is not None:
        sub += f", overlap of the two primaries {ov:+.2f}s"
    ax.set_title(f"{title}\n{sub}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------- disruption


def keeper_processes(data_dir: str | Path) -> dict[str, int | None]:
    """The keeper's pid (from its data-directory lock) and its postmaster's (from postmaster.pid)."""
    d = Path(data_dir)
    out: dict[str, int | None] = {"keeper": None, "postmaster": None}
    for name, path in (("keeper", d / "pgha.lock"), ("postmaster", d / "postgres" / "postmaster.pid")):
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if pid_alive(pid):
            out[name] = pid
    return out


def _systemctl(*args: str) -> None:
    out = subprocess.run(["systemctl", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"systemctl {' '.join(args)}: {out.stdout.decode(errors='replace').strip()}")


def _no_restart_dropin(unit: str) -> Path:
    """A run-time drop-in that turns the unit's Restart= off (a runtime mask cannot hide a unit
    defined in /etc/systemd/system; a drop-in under /run applies to it)."""
    return Path("/run/systemd/system") / f"{unit}.d" / "pgha-drill-no-restart.conf"


def disrupt(action: str, data_dir: str | Path, supervisor_pidfile: str | Path | None = None,
            systemd_unit: str | None = None) -> dict[str, Any]:
    """Local-platform fault injection on one keeper.

    * ``crash``: SIGKILL the keeper and PostgreSQL's whole process group. The supervisor (when its
      pidfile is given) is SIGSTOPped first so that it cannot restart the keeper at once — the way
      the classic Stolon drill orphans the StatefulSet — and resumed by ``resume``. Under systemd
      (``systemd_unit``) a run-time drop-in turns the unit's ``Restart=`` off instead; ``resume``
      removes it and starts the unit.
    * ``freeze``: SIGSTOP the keeper and PostgreSQL's process group.
    * ``resume``: SIGCONT the supervisor, the keeper and PostgreSQL (whatever is still there).
    """
    procs = keeper_processes(data_dir)
    sup = None
    if supervisor_pidfile:
        try:
            sup = int(Path(supervisor_pidfile).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            sup = None
    done: list[str] = []
    at = time.time()
    if action == "crash":
        if procs["keeper"] is None and procs["postmaster"] is None:
            raise RuntimeError(f"no running keeper or PostgreSQL under {data_dir}")
        if sup:
            os.kill(sup, signal.SIGSTOP)
            done.append(f"SIGSTOP supervisor {sup}")
        if systemd_unit:
            dropin = _no_restart_dropin(systemd_unit)
            dropin.parent.mkdir(parents=True, exist_ok=True)
            dropin.write_text("# pgha crash drill: the keeper stays down until the drill resumes it\n"
                              "[Service]\nRestart=no\n")
            _systemctl("daemon-reload")
            done.append(f"Restart=no for {systemd_unit} (run-time drop-in)")
        at = time.time()
        if procs["keeper"]:
            n = signal_tree(procs["keeper"], signal.SIGKILL)
            done.append(f"SIGKILL keeper {procs['keeper']} and PostgreSQL ({n} processes)")
        if procs["postmaster"]:
            n = signal_tree(procs["postmaster"], signal.SIGKILL)
            if n:
                done.append(f"SIGKILL PostgreSQL {procs['postmaster']} ({n} processes)")
    elif action == "freeze":
        if procs["keeper"] is None:
            raise RuntimeError(f"no running keeper under {data_dir}")
        at = time.time()
        n = signal_tree(procs["keeper"], signal.SIGSTOP)
        done.append(f"SIGSTOP keeper {procs['keeper']} and its PostgreSQL ({n} processes)")
        if procs["postmaster"] and procs["postmaster"] not in descendants(procs["keeper"]):
            n = signal_tree(procs["postmaster"], signal.SIGSTOP)
            done.append(f"SIGSTOP PostgreSQL {procs['postmaster']} ({n} processes)")
    elif action == "resume":
        for name, pid in (("keeper", procs["keeper"]), ("PostgreSQL", procs["postmaster"])):
            n = signal_tree(pid, signal.SIGCONT)
            if n:
                done.append(f"SIGCONT {name} {pid} ({n} processes)")
        if systemd_unit and _no_restart_dropin(systemd_unit).exists():
            _no_restart_dropin(systemd_unit).unlink()
            _systemctl("daemon-reload")
            subprocess.run(["systemctl", "reset-failed", systemd_unit], check=False, capture_output=True)
            _systemctl("start", systemd_unit)
            done.append(f"Restart= restored and {systemd_unit} started")
        if sup and pid_alive(sup):
            os.kill(sup, signal.SIGCONT)
            done.append(f"SIGCONT supervisor {sup}")
    else:
        raise ValueError(f"unknown action {action!r}: expected crash, freeze or resume")
    return {"action": action, "at": at, "signals": done, "pids": procs, "supervisor": sup}


# ---------------------------------------------------------------------------------------- probe control


def start_probe(dsn: str, table: str, out: str | Path, password: str | None = None, interval: float = 0.02,
                max_duration: float = 900, program: str | None = None, workload: str = "probe") -> int:
    """Start ``pgha-drill probe`` (or ``marks``, the backup drill's marker rows) detached; the
    password goes through the environment, never argv."""
    if workload not in ("probe", "marks"):
        raise ValueError(f"workload {workload!r}: probe or marks")
    exe = program or str(Path(sys.executable).with_name("pgha-drill"))
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    proc = subprocess.Popen([exe, workload, "--dsn", dsn, "--table", table, "--out", str(out),
                             "--interval", str(interval), "--max-duration", str(max_duration)],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    return proc.pid


def stop_probe(pid: int, timeout: float = 30) -> bool:  # marks: its archive wait is at most 120 s
    """SIGTERM the probe and wait for it; True when it was running."""
    if not pid_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            if not pid_alive(pid):
                return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


# ---------------------------------------------------------------------------------------- report


def report(events: str | Path, markers: dict[str, float], transition: dict[str, Any] | None, dsn: str,
           table: str, out_json: str | Path, out_png: str | Path | None = None, title: str = "",
           max_rto: float | None = None, max_lost: int | None = None,
           extra: dict[str, Any] | None = None, password: str | None = None,
           others: dict[str, dict[str, str]] | None = None, old_server: str | None = None,
           new_server: str | None = None, max_overlap: float | None = None) -> dict[str, Any]:
    """Analyze a probe's events, read the acknowledged ids back, write JSON (and PNG).

    ``others``: more workloads run during the same drill ({name: {"events", "table",
    "description"}}, e.g. a client writing straight to the old primary); their acknowledged ids are
    read back too and count in ``lost_acknowledged_writes``. With ``old_server`` and
    ``new_server`` ("address:port" of the old and the new primary) the report gives the
    ``overlap`` (see ``overlap()``); ``max_overlap`` fails the drill when it is not below it."""
    ev = Events.load(events)
    rep = analyze(ev, markers, transition)
    lost = missing_ids(ev, dsn, table, password=password)
    total_lost = len(lost)
    workloads = {"main": ev}
    event = next(markers[k] for k in DISRUPTIONS if k in markers)
    if others:
        rep["workloads"] = {}
        t0, end = rep["series"]["start"], ev.stopped if ev.stopped is not None else event
        for name, w in sorted(others.items()):
            oev = Events.load(w["events"])
            workloads[name] = oev
            olost = missing_ids(oev, dsn, w["table"], password=password)
            total_lost += len(olost)
            after = [t for _, t in oev.acks if t > event]
            rep["workloads"][name] = {
                "description": w.get("description", ""),
                "acknowledged_writes": len(oev.acks),
                "client_errors": len(oev.errors),
                "lost_acknowledged_writes": len(olost),
                "lost_ids": olost[:100],
                "last_ack_after_event_s": round(after[-1] - event, 3) if after else None,
                "series": series(oev, t0, max(end, oev.stopped or end), rep["series"]["bucket_s"]),
            }
    rep["split_brain"] = split_brain(workloads)
    rep["main_lost_acknowledged_writes"] = len(lost)
    rep["lost_acknowledged_writes"] = total_lost
    rep["lost_ids"] = lost[:100]
    if old_server and new_server and old_server != new_server:
        rep["overlap"] = overlap(workloads, old_server, new_server, event)
    elif old_server:
        rep["acknowledged_by_server"] = {k: {**v, "first": round(v["first"] - event, 3),
                                             "last": round(v["last"] - event, 3)}
                                         for k, v in sorted(by_server(workloads).items())}
    rep.update(extra or {})
    if out_png:
        drawn = chart(rep, Path(out_png), title or "pgha failover drill: the client's view")
        rep["chart"] = str(out_png) if drawn else "not drawn: matplotlib is not installed"
    budgets = []
    if max_rto is not None and rep["rto_s"] > max_rto:
        budgets.append(f"write unavailability {rep['rto_s']}s > budget {max_rto}s")
    if max_lost is not None and total_lost > max_lost:
        budgets.append(f"{total_lost} acknowledged writes lost > budget {max_lost}")
    ov = (rep.get("overlap") or {}).get("overlap_s")
    if max_overlap is not None and ov is not None and ov >= max_overlap:
        budgets.append(f"two primaries acknowledged writes: overlap {ov}s >= budget {max_overlap}s")
    if max_overlap is not None and rep["split_brain"]["windows"]:
        w = max(rep["split_brain"]["windows"], key=lambda x: x["seconds"])
        budgets.append(f"two primaries acknowledged writes: timeline {w['older_timeline']} ({w['older_server']}) "
                       f"acknowledged {w['late_acks']} write(s) up to {w['seconds']}s after timeline "
                       f"{w['newer_timeline']} ({w['newer_server']}) did")
    rep["budget_violations"] = budgets
    rep["summary"] = (f"writes unavailable {rep['rto_s']}s, {total_lost} acknowledged writes lost of "
                      f"{sum(len(w.acks) for w in workloads.values())}"
                      + (f", overlap {ov:+.3f}s" if ov is not None else "")
                      + ("; BUDGET EXCEEDED: " + "; ".join(budgets) if budgets else ""))
    Path(out_json).write_text(json.dumps(rep, indent=2, sort_keys=True))
    return rep


# ---------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pgha-drill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("probe", help="write a row every --interval, recording each acknowledgement")
    sp.add_argument("--dsn", required=True, help="libpq connection string (through the proxy)")
    sp.add_argument("--table", default="pgha_drill", help="table to write to (created if absent)")
    sp.add_argument("--out", required=True, help="events file to append to")
    sp.add_argument("--interval", type=float, default=0.02, help="seconds between writes (default 0.02)")
    sp.add_argument("--max-duration", type=float, default=600, help="stop after this many seconds")
    sp = sub.add_parser("marks", help="backup drill: a marker row every --interval, with its WAL file and what "
                        "was archived; after the stop, waits for the last row's WAL file to be archived")
    sp.add_argument("--dsn", required=True, help="libpq connection string (through the proxy)")
    sp.add_argument("--table", default="pgha_backup_drill", help="table to write to (created if absent)")
    sp.add_argument("--out", required=True, help="file to append the record to")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between rows (default 1)")
    sp.add_argument("--max-duration", type=float, default=900, help="stop writing after this many seconds")
    sp.add_argument("--archive-wait", type=float, default=120, help="seconds to wait for the archive (default 120)")
    sp = sub.add_parser("restore-plan", help="backup drill: print the recovery target (JSON) chosen from the "
                        "marks record, between two rows written after the backup ended")
    sp.add_argument("--events", required=True, help="the file pgha-drill marks wrote")
    sp.add_argument("--backup-stop", type=float, required=True, help="when the backup ended (Unix seconds)")
    sp.add_argument("--fraction", type=float, default=0.5,
                    help="where among the rows after the backup (0: the first, 1: the last; default 0.5)")
    sp = sub.add_parser("report", help="analyze a probe's events file and write the JSON/PNG report")
    sp.add_argument("--events", required=True)
    sp.add_argument("--markers", required=True, help='JSON object of wall-clock times, e.g. {"kill": 1.7e9}')
    sp.add_argument("--transition", default="null", help="the cluster's last_transition (JSON) or null")
    sp.add_argument("--dsn", required=True, help="where to read the acknowledged ids back (the new primary)")
    sp.add_argument("--table", default="pgha_drill")
    sp.add_argument("--out-json", required=True)
    sp.add_argument("--out-png", help="chart path (needs matplotlib)")
    sp.add_argument("--title", default="pgha failover drill: the client's view")
    sp.add_argument("--extra", default="{}", help="JSON object merged into the report (e.g. keepers before/after)")
    sp.add_argument("--max-rto", type=float, help="fail when the write unavailability exceeds this (seconds)")
    sp.add_argument("--max-lost", type=int, help="fail when more acknowledged writes are missing (all workloads)")
    sp.add_argument("--other", action="append", default=[], metavar="NAME=EVENTS:TABLE",
                    help="another workload of the same drill (e.g. a client writing to the old primary directly)")
    sp.add_argument("--old-server", help="address:port of the old primary (for the overlap)")
    sp.add_argument("--new-server", help="address:port of the new primary (for the overlap)")
    sp.add_argument("--max-overlap", type=float,
                    help="fail unless the old primary's last acknowledgement precedes the new one's first by more "
                         "than this (seconds; 0: never two primaries at once)")
    args = p.parse_args(argv)
    from pgha import backupdrill  # it uses this module's helpers

    if args.command == "probe":
        return probe(args.dsn, args.table, Path(args.out), args.interval, args.max_duration)
    if args.command == "marks":
        return backupdrill.marks(args.dsn, args.table, Path(args.out), args.interval, args.max_duration,
                                 args.archive_wait)
    if args.command == "restore-plan":
        try:
            print(json.dumps(backupdrill.plan(backupdrill.load_marks(args.events), args.backup_stop, args.fraction)))
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        markers = {k: float(v) for k, v in json.loads(args.markers).items()}
        transition = json.loads(args.transition)
        extra = json.loads(args.extra)
    except (ValueError, TypeError, AttributeError) as exc:
        p.error(f"--markers/--transition/--extra must be JSON: {exc}")
    others: dict[str, dict[str, str]] = {}
    for item in args.other:
        name, _, rest = item.partition("=")
        events, _, table = rest.rpartition(":")
        if not name or not events or not table:
            p.error(f"--other {item!r}: expected NAME=EVENTS:TABLE")
        others[name] = {"events": events, "table": table}
    try:
        rep = report(args.events, markers, transition, args.dsn, args.table, args.out_json, args.out_png,
                     args.title, args.max_rto, args.max_lost, extra, others=others or None,
                     old_server=args.old_server, new_server=args.new_server, max_overlap=args.max_overlap)
    except ValueError as exc:
        p.error(str(exc))
    except psycopg2.Error as exc:
        print(f"error: cannot read the acknowledged writes back: {redact(str(exc).strip())}", file=sys.stderr)
        return 1
    print(rep["summary"] + f"; report {args.out_json}"
          + (f", chart {rep['chart']}" if args.out_png else ""))
    budgets = rep["budget_violations"]
    return 1 if budgets else 0


if __name__ == "__main__":
    raise SystemExit(main())
