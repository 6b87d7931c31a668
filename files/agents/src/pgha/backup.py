"""pgBackRest for one keeper: its configuration, the PostgreSQL parameters that archive and restore
WAL through it, its command lines, and what ``pgbackrest info`` says, as plain data (no I/O here
but ``run``; the keeper calls these, see ``pgha.keeper.actions``).

The stanza is the cluster's name. The repository is a local path (``--backup-repo-path``): one
host's disk, or a file system the keepers' hosts share. Archiving is asynchronous (``archive-async``,
a spool directory in the keeper's data directory) so a slow repository does not hold up commits
for long; ``archive_timeout`` (spec) bounds the WAL a total loss costs when writes are few.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKUP_TYPES = ("full", "diff", "incr")


class BackupError(RuntimeError):
    """pgBackRest failed; the message says what and why (its own last error line)."""


@dataclass(frozen=True)
class BackupConfig:
    """What a keeper's pgBackRest needs."""

    bin: str  # the pgbackrest program
    stanza: str  # the cluster's name
    repo_path: str
    work_dir: Path  # spool, lock and log directories, in the keeper's data directory
    pgdata: Path
    pg_port: int
    pg_socket_dir: Path
    pg_user: str
    retention_full: int = 2

    @property
    def config_file(self) -> Path:
        return self.work_dir / "pgbackrest.conf"


def config_text(cfg: BackupConfig, restore_from: str | None = None) -> str:
    """pgbackrest.conf for ``cfg`` (written by the keeper, mode 0600); ``restore_from``: the stanza
    of another cluster this one restores from (init_mode pitr), given this PostgreSQL too."""
    lines = [
        "# Written by pgha-keeper: pgBackRest for this keeper's PostgreSQL (stanza = the cluster's name).",
        "[global]",
        f"repo1-path={cfg.repo_path}",
        f"repo1-retention-full={cfg.retention_full}",
        "archive-async=y",
        f"spool-path={cfg.work_dir / 'spool'}",
        f"lock-path={cfg.work_dir / 'lock'}",
        f"log-path={cfg.work_dir / 'log'}",
        "log-level-console=warn",
        "log-level-stderr=error",
        "log-level-file=info",
        "start-fast=y",
        "process-max=2",
        "",
    ]
    for stanza in [cfg.stanza] + ([restore_from] if restore_from and restore_from != cfg.stanza else []):
        lines += [
            f"[{stanza}]",
            f"pg1-path={cfg.pgdata}",
            f"pg1-port={cfg.pg_port}",
            f"pg1-socket-path={cfg.pg_socket_dir}",
            f"pg1-user={cfg.pg_user}",
            "",
        ]
    return "\n".join(lines)


def _base(cfg: BackupConfig) -> list[str]:
    return [cfg.bin, f"--config={cfg.config_file}", f"--stanza={cfg.stanza}"]


def pg_parameters(cfg: BackupConfig, archive_timeout: float) -> dict[str, str]:
    """PostgreSQL's archiving and restore parameters (a replica archives nothing with
    archive_mode=on; it fetches from the archive what its primary no longer keeps)."""
    base = " ".join(shlex.quote(a) for a in _base(cfg))
    return {
        "archive_mode": "on",
        "archive_command": f"{base} archive-push %p",
        "restore_command": f"{base} archive-get %f \"%p\"",
        "archive_timeout": f"{max(1, int(archive_timeout))}s",
    }


def argv(cfg: BackupConfig, command: str, *extra: str) -> list[str]:
    return _base(cfg) + list(extra) + [command]


@dataclass(frozen=True)
class StandbyPg:
    """A streaming replica on the backing-up keeper's machine that a backup copies its files from
    (pgBackRest's ``backup-standby``: the primary only starts and stops the backup)."""

    uid: str
    pgdata: str
    port: int
    socket_dir: str
    lag_bytes: int


BACKUP_SOURCES = ("auto", "standby", "primary")
STANDBY_MAX_LAG = 64 * 1024 * 1024  # a replica further behind than this would hold the backup up: not used


def choose_standby(me: Any, statuses: list[Any], layout: Any) -> tuple[StandbyPg | None, str]:
    """The replica a backup taken by the primary ``me`` (a KeeperStatus) copies its files from, and
    why (or why none): one of ``statuses`` that is a healthy replica of the same system, streaming
    (from anywhere: a cascade is a standby as well), on the same machine (pgBackRest reaches both
    data directories locally), at most STANDBY_MAX_LAG bytes behind; the least behind, then by uid.
    ``layout(data_dir)`` gives a keeper's (pgdata, socket directory). Pure."""
    why: list[str] = []
    found: list[StandbyPg] = []
    for st in statuses:
        if st.uid == me.uid:
            continue
        if st.role != "replica" or not st.healthy or not st.streaming_from:
            why.append(f"{st.uid} is not a healthy streaming replica")
        elif st.system_id != me.system_id or not me.system_id:
            why.append(f"{st.uid} is a replica of another system")
        elif not st.host or st.host != me.host:
            why.append(f"{st.uid} runs on another machine ({st.host or 'unknown'})")
        elif not st.data_dir.startswith("/") or not re.fullmatch(r"[^\s]+:\d+", st.address or ""):
            why.append(f"{st.uid} reports no usable data directory or address")
        else:
            lag = max(0, (me.lsn or 0) - (st.replay_lsn or 0))
            if lag > STANDBY_MAX_LAG:
                why.append(f"{st.uid} replays {lag} bytes behind")
                continue
            pgdata, sockdir = layout(st.data_dir)
            found.append(StandbyPg(uid=st.uid, pgdata=str(pgdata), port=int(st.address.rsplit(":", 1)[1]),
                                   socket_dir=str(sockdir), lag_bytes=lag))
    if not found:
        return None, "; ".join(why) or "no replica"
    best = min(found, key=lambda s: (s.lag_bytes, s.uid))
    return best, f"{best.uid} streams {best.lag_bytes} bytes behind on this machine"


def backup_argv(cfg: BackupConfig, kind: str, standby: StandbyPg | None = None) -> list[str]:
    """``pgbackrest backup``; with ``standby``, from it (pg2, ``--backup-standby``): pgBackRest
    starts and stops the backup on the primary (pg1) and copies the files from the standby."""
    if kind not in BACKUP_TYPES:
        raise ValueError(f"backup type {kind!r}: one of {', '.join(BACKUP_TYPES)}")
    extra = [f"--type={kind}"]
    if standby is not None:
        extra += ["--backup-standby", f"--pg2-path={standby.pgdata}", f"--pg2-port={standby.port}",
                  f"--pg2-socket-path={standby.socket_dir}", f"--pg2-user={cfg.pg_user}"]
    return argv(cfg, "backup", *extra)


# ----------------------------------------------------------------------------- schedules
CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
               ("day of week", 0, 7))
CRON_ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0",
                "@monthly": "0 0 1 * *"}


@dataclass(frozen=True)
class Schedule:
    """A cron expression (five fields, in UTC): the minutes, hours, ... it runs at."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is *
    any_weekday: bool  # day of week is *

    def day_matches(self, d: datetime.date) -> bool:
        if d.month not in self.months:
            return False
        dom, dow = d.day in self.days, (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return dom and dow
        return dom or dow  # cron: both restricted, either one will do


def parse_schedule(text: str) -> Schedule:
    """Parse a cron expression (``minute hour day-of-month month day-of-week``, each ``*``, ``N``,
    ``N-M``, with ``/step``, comma lists; or @hourly, @daily, @weekly, @monthly), in UTC.
    Raises ValueError with what is wrong."""
    expr = CRON_ALIASES.get(text.strip(), text.strip())
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"{text!r}: a cron expression has five fields (minute hour day-of-month month "
                         "day-of-week, in UTC), e.g. '0 1 * * 0', or @hourly, @daily, @weekly, @monthly")
    sets: list[frozenset[int]] = []
    for part, (name, lo, hi) in zip(parts, CRON_FIELDS):
        values: set[int] = set()
        for item in part.split(","):
            m = re.fullmatch(r"(\*|\d+(?:-\d+)?)(?:/(\d+))?", item)
            if not m:
                raise ValueError(f"{text!r}: {name} {item!r} is not *, N, N-M or one of those with /step")
            rng, step = m.group(1), int(m.group(2) or 1)
            a, b = (lo, hi) if rng == "*" else (int(rng.split("-")[0]), int(rng.split("-")[-1]))
            if not (lo <= a <= b <= hi) or step < 1:
                raise ValueError(f"{text!r}: {name} {item!r} outside {lo}-{hi}")
            values.update(range(a, b + 1, step))
        sets.append(frozenset(values))
    weekdays = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
    return Schedule(text.strip(), sets[0], sets[1], sets[2], sets[3], weekdays,
                    parts[2] == "*", parts[4] == "*")


def previous_run(schedule: Schedule, now: float, horizon_days: int = 400) -> float | None:
    """The latest minute at or before ``now`` (Unix seconds) that ``schedule`` runs at, as Unix
    seconds; None when there is none within ``horizon_days``."""
    t = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(second=0, microsecond=0)
    for back in range(horizon_days + 1):
        day = (t - datetime.timedelta(days=back)).date()
        if not schedule.day_matches(day):
            continue
        for hour in sorted(schedule.hours, reverse=True):
            if back == 0 and hour > t.hour:
                continue
            for minute in sorted(schedule.minutes, reverse=True):
                if back == 0 and hour == t.hour and minute > t.minute:
                    continue
                return datetime.datetime(day.year, day.month, day.day, hour, minute,
                                         tzinfo=datetime.timezone.utc).timestamp()
    return None


def scheduled_backup(full: str, diff: str, listed: list[dict[str, Any]], now: float) -> tuple[str, float] | None:
    """The backup the schedules call for now: ``(type, the run it is for)``, or None. A run is due
    when no backup that satisfies it started since: a full for the full schedule, a full or a diff
    for the diff schedule. A run missed (no primary, a failure) is made up once, at once."""
    def last_start(kinds: tuple[str, ...]) -> float:
        starts = [float(b["start"]) for b in listed if b.get("type") in kinds and isinstance(b.get("start"), (int, float))]
        return max(starts, default=float("-inf"))

    for kind, expr, satisfied_by in (("full", full, ("full",)), ("diff", diff, ("full", "diff"))):
        if not expr:
            continue
        run_at = previous_run(parse_schedule(expr), now)
        if run_at is not None and last_start(satisfied_by) < run_at:
            return kind, run_at
    return None


# ----------------------------------------------------------------------------- point-in-time recovery
PITR_TYPES = {"target_time": "time", "target_lsn": "lsn", "target_name": "name"}


def pitr_target(pitr: dict[str, str]) -> tuple[str, str] | None:
    """(spec key, value) of the recovery target; None: the end of the archive."""
    return next(((k, pitr[k]) for k in PITR_TYPES if pitr.get(k)), None)


def describe_target(pitr: dict[str, str]) -> str:
    target = pitr_target(pitr)
    return f"{target[0][len('target_'):]} {target[1]}" if target else "the end of the archive"


def choose_backup(listed: list[dict[str, Any]], pitr: dict[str, str], stanza: str) -> str:
    """The label of the backup to restore for ``pitr``: the one it names, else the latest that ended
    before a time target (the latest for other targets); BackupError saying why there is none."""
    if not listed:
        raise BackupError(f"the repository holds no backup of stanza {stanza} (pghactl backup makes one)")
    target = pitr_target(pitr)
    at = _epoch(target[1]) if target and target[0] == "target_time" else None
    if pitr.get("backup"):
        chosen = next((b for b in listed if b["label"] == pitr["backup"]), None)
        if chosen is None:
            raise BackupError(f"backup {pitr['backup']} is not in the repository of stanza {stanza} "
                              f"(it holds {', '.join(b['label'] for b in listed)})")
        if at is not None and (chosen["stop"] or 0) >= at:
            raise BackupError(f"backup {chosen['label']} ended at {_iso(chosen['stop'])}, not before the target "
                              f"{target[1]}: recovery replays WAL forward from a backup's end")
        return chosen["label"]
    if at is None:
        return listed[-1]["label"]
    before = [b for b in listed if b["stop"] is not None and b["stop"] < at]
    if not before:
        first = listed[0]
        raise BackupError(f"the target {target[1]} is before the end of the oldest backup ({first['label']}, ended "
                          f"{_iso(first['stop'])}): there is no backup to recover it from")
    return before[-1]["label"]


def restore_argv(cfg: BackupConfig, pitr: dict[str, str], label: str) -> list[str]:
    """``pgbackrest restore`` of ``label`` into the (empty) data directory, to the target, then promote."""
    extra = [f"--set={label}", "--log-level-console=info"]
    target = pitr_target(pitr)
    if target:
        extra += [f"--type={PITR_TYPES[target[0]]}", f"--target={target[1]}", "--target-action=promote"]
    return argv(cfg, "restore", *extra)


def standby_restore_argv(cfg: BackupConfig, label: str) -> list[str]:
    """``pgbackrest restore`` of ``label`` as a standby (it replays the archive, then streams)."""
    return argv(cfg, "restore", f"--set={label}", "--type=standby", "--log-level-console=info")


def backup_for_replica(listed: list[dict[str, Any]], timeline: int | None) -> dict[str, Any] | None:
    """The latest backup a new replica of a primary on ``timeline`` can start from: one taken on
    that timeline (an older timeline's backup would replay, from the archive, WAL past the fork
    when the new timeline's history is not archived yet)."""
    if not timeline:
        return None
    mine = [b for b in listed if isinstance(b.get("wal_start"), str) and len(b["wal_start"]) == 24
            and b["wal_start"][:8].upper() == f"{timeline:08X}"]
    return mine[-1] if mine else None


def recovery_parameters(cfg: BackupConfig, pitr: dict[str, str]) -> dict[str, str]:
    """The PostgreSQL parameters of the recovery (the keeper writes them in its own configuration:
    pgBackRest's, in postgresql.auto.conf, are discarded), removed once it has promoted."""
    params = {"restore_command": pg_parameters(cfg, 60)["restore_command"]}
    target = pitr_target(pitr)
    if target:
        params[f"recovery_{target[0]}"] = target[1]
        params["recovery_target_action"] = "promote"
    return params


def restored_set(output: str) -> str | None:
    """The backup set ``pgbackrest restore`` says it restores."""
    m = re.search(r"restore backup set (\S+?)[,\s]", output)
    return m.group(1) if m else None


def _epoch(timestamp: str) -> float:
    return datetime.datetime.fromisoformat(timestamp).timestamp()


def _iso(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)):
        return "unknown"
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(sep=" ")


def run(args: list[str], what: str, timeout: float | None = 600) -> str:
    """Run pgBackRest; its stdout, or BackupError with its error line."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BackupError(f"{what}: {args[0]} not found (install pgbackrest)") from None
    except subprocess.TimeoutExpired:
        raise BackupError(f"{what}: no answer within {timeout:g}s") from None
    if proc.returncode != 0:
        raise BackupError(f"{what} failed (exit {proc.returncode}): {last_error(proc.stderr + proc.stdout)}")
    return proc.stdout


def last_error(text: str) -> str:
    """pgBackRest's ERROR line, else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR:" in line]
    return (errors[-1] if errors else (lines[-1] if lines else "no output"))[:500]


def backups(info_json: str, stanza: str) -> list[dict[str, Any]]:
    """The backups of ``stanza`` from ``pgbackrest info --output=json``, oldest first:
    ``{label, type, start, stop, wal_start, wal_stop, lsn_start, lsn_stop, size_bytes}`` (times as
    Unix seconds, size_bytes what the repository holds for it)."""
    try:
        doc = json.loads(info_json or "[]")
    except ValueError as exc:
        raise BackupError(f"pgbackrest info: not JSON ({exc})") from None
    out: list[dict[str, Any]] = []
    for entry in doc if isinstance(doc, list) else []:
        if not isinstance(entry, dict) or entry.get("name") != stanza:
            continue
        for b in entry.get("backup") or []:
            if not isinstance(b, dict):
                continue
            ts = b.get("timestamp") or {}
            archive = b.get("archive") or {}
            repo = (b.get("info") or {}).get("repository") or {}
            lsn = b.get("lsn") if isinstance(b.get("lsn"), dict) else {}
            out.append({
                "label": str(b.get("label", "")),
                "type": str(b.get("type", "")),
                "start": ts.get("start"),
                "stop": ts.get("stop"),
                "wal_start": archive.get("start"),
                "wal_stop": archive.get("stop"),
                "lsn_start": lsn.get("start"),
                "lsn_stop": lsn.get("stop"),
                "size_bytes": repo.get("delta", repo.get("size")),
            })
    out.sort(key=lambda b: (b["start"] or 0, b["label"]))
    return out


def list_backups(cfg: BackupConfig) -> list[dict[str, Any]]:
    """The backups of ``cfg``'s stanza in its repository (``backups`` of ``pgbackrest info``)."""
    return backups(run(argv(cfg, "info", "--output=json"), "pgbackrest info", timeout=60), cfg.stanza)


def summary(state: dict[str, Any], now: float) -> dict[str, Any] | None:
    """What ``pghactl status`` and /metrics show of a keeper's backup state (its status's ``backup``
    field, which anyone who can write the store can forge: odd types read as unknown)."""
    if not isinstance(state, dict) or not state:
        return None

    def number(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    listed = [b for b in state.get("backups") or [] if isinstance(b, dict)] if isinstance(state.get("backups"), list) \
        else []
    stops = [s for s in (number(b.get("stop")) for b in listed) if s is not None]
    last_archived = number(state.get("last_archived_at"))
    restored = state.get("restored")
    return {
        "stanza": state.get("stanza") is True,
        "backups": len(listed),
        "seconds_since_backup": round(now - max(stops), 1) if stops else None,
        "archived_count": number(state.get("archived_count")),
        "failed_count": number(state.get("failed_count")),
        "seconds_since_archived": round(now - last_archived, 1) if last_archived is not None else None,
        "restored": {**{k: restored.get(k) for k in ("stanza", "backup", "target", "timeline")
                        if isinstance(restored.get(k), (str, int))},
                     **{k: number(restored.get(k)) for k in ("restore_seconds", "replay_seconds", "finished_at")
                        if number(restored.get(k)) is not None}} if isinstance(restored, dict) else None,
    }
