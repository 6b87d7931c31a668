"""Backups (part of ``pgha.keeper.main.Keeper``), with ``--backup-repo-path``: the keeper writes its
pgBackRest configuration, its PostgreSQL archives WAL through it (``pgha.backup.pg_parameters``),
and the **backup** thread, on its own so the main loop never waits for pgBackRest:

* creates the stanza once this keeper is an initialized primary (idempotent, retried every 30 s
  while it fails, each distinct failure logged once);
* carries out the backup request ``pghactl backup`` left at ``backup/request`` when it names this
  keeper (one at a time; a request already carried out is not run again after a restart); the
  files are copied from a streaming replica on this machine when there is one (pgBackRest's
  ``backup-standby``, ``pgha.backup.choose_standby``), so the primary only starts and stops it;
* on the primary, takes the backups the spec's schedules call for (``backup_schedule_full``,
  ``backup_schedule_diff``; ``pgha.backup.scheduled_backup`` decides from the repository's listing);
* lists the repository's backups (``pgbackrest info``) every minute and after each backup, and on
  the primary reads ``pg_stat_archiver`` every few seconds;

and what it knows is the ``backup`` field of the keeper's status (``pghactl backups``, /metrics).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2

from pgha import backup as pb
from pgha.keeper.actions import NO_REPOSITORY
from pgha.keeper.pg import PgError, layout, pg_auto_conf_header
from pgha.model import ROLE_PRIMARY, FormatError, KeeperSpec, KeeperStatus, load_statuses, loads
from pgha.store import StoreError

logger = logging.getLogger("pgha.keeper")

STANZA_RETRY = 30.0
RESTORE_RETRY = 10.0  # a refused restore (no backup before the target...) is looked at again this often
RECOVERY_TIMEOUT = 24 * 3600.0
INFO_EVERY = 60.0
ARCHIVER_EVERY = 5.0
SCHEDULE_RETRY = 300.0  # a scheduled backup that failed is tried again this often


def parse_request(raw: bytes | str) -> dict[str, Any]:
    """A backup request ``{id, type, keeper, source, requested_at}``; FormatError when malformed."""
    d = loads(raw, "backup request")
    rid, kind, keeper, source = d.get("id"), d.get("type", "full"), d.get("keeper"), d.get("source", "auto")
    if not isinstance(rid, str) or not rid.isalnum() or len(rid) > 32:
        raise FormatError("backup request: id: expected up to 32 letters or digits")
    if kind not in pb.BACKUP_TYPES:
        raise FormatError(f"backup request: type: one of {', '.join(pb.BACKUP_TYPES)}")
    if not isinstance(keeper, str):
        raise FormatError("backup request: keeper: expected a keeper uid")
    if source not in pb.BACKUP_SOURCES:
        raise FormatError(f"backup request: source: one of {', '.join(pb.BACKUP_SOURCES)}")
    return {"id": rid, "type": kind, "keeper": keeper, "source": source}


class Backups:
    """The backup thread and the pgBackRest configuration; uses the Keeper's args, pg, spec, store."""

    backup_cfg: pb.BackupConfig | None = None
    backup_state: dict[str, Any]
    recovery: dict[str, str] | None = None  # a point-in-time recovery's parameters, while it runs
    _restore_refused: tuple[float, str, str] = (0.0, "", "")  # when, why and for which cluster a restore was refused

    def init_backups(self) -> None:
        self.backup_state = {}
        if not self.args.backup_repo_path:
            return
        self.backup_cfg = pb.BackupConfig(
            bin=self.args.backup_bin, stanza=self.args.cluster_name, repo_path=self.args.backup_repo_path,
            work_dir=self.data_dir / "pgbackrest", pgdata=self.pg.pgdata, pg_port=self.args.pg_port,
            pg_socket_dir=self.pg.sockdir, pg_user=self.args.pg_su_username)
        self.backup_state = {"stanza": False, "repo": self.args.backup_repo_path}
        self._stanza_tried = 0.0
        self._info_at = 0.0
        self._schedule_failed_at = float("-inf")
        self._archiver_at = 0.0
        self._backup_problem = ""

    def backup_parameters(self) -> dict[str, str]:
        if self.backup_cfg is None:
            return {}
        params = pb.pg_parameters(self.backup_cfg, self.spec.archive_timeout)
        if self.recovery is not None:
            params.update(self.recovery)
        return params

    def write_backup_config(self) -> None:
        """pgbackrest.conf (0600) and its directories, rewritten when the spec's retention changes."""
        cfg = self.backup_cfg
        if cfg is None:
            return
        if cfg.retention_full != self.spec.backup_retention_full:
            cfg = self.backup_cfg = replace(cfg, retention_full=self.spec.backup_retention_full)
        for sub in ("", "spool", "lock", "log"):
            (cfg.work_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        text = pb.config_text(cfg, restore_from=self.restore_stanza())
        path = cfg.config_file
        try:
            if path.read_text() == text:
                return
        except FileNotFoundError:
            pass
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        logger.info("pgBackRest configuration written: stanza %s, repository %s", cfg.stanza, cfg.repo_path)

    def restore_stanza(self) -> str | None:
        """The stanza a point-in-time recovery restores from (init_mode pitr), None otherwise."""
        spec = self.spec
        if spec.init_mode != "pitr" or self.backup_cfg is None:
            return None
        return (spec.pitr or {}).get("stanza") or self.backup_cfg.stanza

    # ------------------------------------------------------------------ point-in-time recovery
    def restore_from_backup(self, want: KeeperSpec | None) -> None:
        """init_mode pitr, on the keeper the sentinel chose: restore a backup into an empty data
        directory, replay the archive to the target, promote (a new timeline), then run as the
        cluster's primary. The backup is chosen, and the target checked against the repository,
        before any data is touched."""
        cfg = self.backup_cfg
        cd = self.cd
        assert cd is not None
        if cfg is None:
            raise PgError(NO_REPOSITORY)
        pitr = dict(self.spec.pitr or {})
        source = replace(cfg, stanza=self.restore_stanza() or cfg.stanza)
        target = pb.describe_target(pitr)
        refused_at, why, refused_uid = self._restore_refused
        if why and refused_uid == cd.uid and time.monotonic() - refused_at < RESTORE_RETRY:
            raise PgError(why)
        self.write_backup_config()
        try:
            label = pb.choose_backup(pb.list_backups(source), pitr, source.stanza)
        except pb.BackupError as exc:
            self._restore_refused = (time.monotonic(), f"cannot restore to {target}: {exc}", cd.uid)
            raise PgError(self._restore_refused[1]) from None
        self._restore_refused = (0.0, "", "")
        with self.lock:
            self.pg.stop("immediate")
        self.save_state(cluster_uid=cd.uid, initializing=True)
        self.phase = "restore"
        logger.info("point-in-time recovery to %s: restoring backup %s of stanza %s", target, label, source.stanza)
        t0 = time.monotonic()
        try:
            out = self._restore_data_dir(pb.restore_argv(source, pitr, label))
        except pb.BackupError as exc:
            raise PgError(str(exc)) from None
        restored_at = time.monotonic()
        self.recovery = pb.recovery_parameters(source, pitr)
        self.configure(want, True, None)
        self.phase = "recovering"
        logger.info("backup %s restored in %.1fs; replaying WAL from the archive to %s",
                    pb.restored_set(out) or label, restored_at - t0, target)
        try:
            with self.lock:
                if self.fenced:
                    raise PgError("lease lapsed: not starting PostgreSQL")
                self.pg.start(timeout=RECOVERY_TIMEOUT)
            self._wait_promoted(target)
        except PgError as exc:
            text = str(exc)
            if "before configured recovery target was reached" in text:
                text = (f"the archive ends before the target {target}: the WAL up to it was never archived "
                        "(choose an earlier target)")
            with self.lock:
                self.pg.stop("immediate")
            self.recovery = None
            raise PgError(f"point-in-time recovery failed: {text}") from None
        replayed_at = time.monotonic()
        self.recovery = None  # recovery targets left in place would stop a later standby at the target
        self.configure(want, True, None)
        with self.lock:
            self.pg.stop("fast")
        self.start()
        self.reconcile_primary(want)
        self.pg.query("CHECKPOINT")
        status = self.pg.status()
        restored = {"stanza": source.stanza, "backup": label, "target": target,
                    "timeline": status.get("timeline"), "restore_seconds": round(restored_at - t0, 3),
                    "replay_seconds": round(replayed_at - restored_at, 3), "finished_at": time.time()}
        self.save_state(cluster_uid=cd.uid, initializing=False, restored=restored)
        self._set(restored=restored)
        logger.info("point-in-time recovery done: backup %s restored and replayed to %s in %.1fs; running as "
                    "primary on timeline %s", label, target, time.monotonic() - t0, restored["timeline"])
        self.wake_heartbeat()

    # ------------------------------------------------------------------ replicas from backup
    def replica_from_backup(self, want: KeeperSpec | None, follow_addr: str) -> bool:
        """spec replica_create_method backup: make this (stopped, emptied-to-be) keeper a replica
        from the repository's latest backup of the cluster's timeline; False (nothing done but
        the log line) when there is none or the restore fails: the caller takes a base backup."""
        cfg, cd = self.backup_cfg, self.cd
        if cfg is None or cd is None or self.spec.replica_create_method != "backup":
            return False
        self.write_backup_config()
        try:
            listed = pb.list_backups(cfg)
        except pb.BackupError as exc:
            logger.info("no backup to create this replica from (%s): taking a base backup from the primary", exc)
            return False
        chosen = pb.backup_for_replica(listed, cd.timeline)
        if chosen is None:
            logger.info("the repository holds no backup of timeline %s (the cluster's): taking a base backup from the "
                        "primary (replica_create_method backup uses one once taken)", cd.timeline)
            return False
        self.phase = "restore"
        t0 = time.monotonic()
        try:
            self._restore_data_dir(pb.standby_restore_argv(cfg, chosen["label"]))
        except pb.BackupError as exc:
            logger.warning("%s: taking a base backup from the primary instead", exc)
            self.pg.wipe()
            return False
        try:
            self.configure(want, False, follow_addr)
            self.start()
        except (PgError, OSError) as exc:
            logger.warning("the replica restored from backup %s did not start (%s): taking a base backup from the "
                           "primary instead", chosen["label"], exc)
            with self.lock:
                self.pg.stop("immediate")
            self.pg.wipe()
            return False
        self.save_state(cluster_uid=cd.uid, initializing=False)
        logger.info("replica created from backup %s (%s bytes from the repository, not the primary) in %.1fs; "
                    "replaying the archive, then streaming from %s", chosen["label"], chosen.get("size_bytes"),
                    time.monotonic() - t0, follow_addr)
        return True

    def _restore_data_dir(self, restore: list[str]) -> str:
        """Run the ``pgbackrest restore`` command line ``restore`` into an emptied data directory and
        make the result the keeper's: its include line, and none of the settings pgBackRest writes
        to postgresql.auto.conf (the keeper's own configuration has what it needs). Its output."""
        self.pg.wipe()
        self.pg.pgdata.mkdir(mode=0o700)
        out = pb.run(restore, "pgbackrest restore", timeout=None)
        self.pg.ensure_include()
        (self.pg.pgdata / "postgresql.auto.conf").write_text(pg_auto_conf_header())
        return out

    def _wait_promoted(self, target: str) -> None:
        """Until the recovery has reached its target and promoted (PostgreSQL exits when it cannot)."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            if self.pg.proc is not None and self.pg.proc.poll() is not None:
                raise PgError(f"PostgreSQL stopped during recovery: {self.pg.log_tail()}")
            try:
                if not self.pg.query("SELECT pg_is_in_recovery()")[0][0]:
                    return
            except psycopg2.Error:
                self.pg.close()
            if self.stopping.wait(0.2):
                raise PgError("keeper stopping during recovery")
        raise PgError(f"recovery to {target} did not finish within {RECOVERY_TIMEOUT:.0f}s")

    # ------------------------------------------------------------------ the backup thread
    def backup_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.backup_tick()
            except Exception as exc:  # noqa: BLE001 - the thread must live: log and go on
                logger.exception("backup thread: %s", exc)
            self.stopping.wait(1.0)

    def _set(self, **changes: Any) -> None:
        """Replace the state (never mutate it: the status thread serializes it meanwhile)."""
        self.backup_state = {**self.backup_state, **changes}

    def _problem(self, text: str) -> None:
        if text != self._backup_problem:
            logger.warning("%s", text)
            self._backup_problem = text

    def backup_tick(self) -> None:
        cfg = self.backup_cfg
        assert cfg is not None
        if not cfg.config_file.exists():
            return
        now = time.monotonic()
        if "restored" not in self.backup_state and isinstance(self.local_state.get("restored"), dict):
            self._set(restored=self.local_state["restored"])  # what the last point-in-time recovery restored
        primary = self.status.role == ROLE_PRIMARY and self.status.healthy and self.roles_ensured
        if primary and not self.backup_state.get("stanza") and now - self._stanza_tried >= STANZA_RETRY:
            self._stanza_tried = now
            try:
                pb.run(pb.argv(cfg, "stanza-create"), "pgbackrest stanza-create", timeout=120)
                self._set(stanza=True)
                self._backup_problem = ""
                logger.info("pgBackRest stanza %s ready in %s", cfg.stanza, cfg.repo_path)
                self._info_at = 0.0
            except pb.BackupError as exc:
                self._problem(f"{exc} (WAL is not archived until it succeeds; retrying every {STANZA_RETRY:.0f}s)")
        if primary and now - self._archiver_at >= ARCHIVER_EVERY:
            self._archiver_at = now
            self._read_archiver()
        self._carry_out_request()
        if primary and self.backup_state.get("stanza"):
            self._run_schedule()
        if now - self._info_at >= INFO_EVERY:
            self._info_at = now
            self._read_info()

    def _read_archiver(self) -> None:
        try:
            conn = self.pg._connect()
        except psycopg2.Error:
            return
        try:
            cur = conn.cursor()
            cur.execute("SELECT archived_count, failed_count, extract(epoch FROM last_archived_time), "
                        "extract(epoch FROM last_failed_time), last_failed_wal FROM pg_stat_archiver")
            archived, failed, last_ok, last_failed, failed_wal = cur.fetchone()
            self._set(archived_count=int(archived), failed_count=int(failed),
                      last_archived_at=float(last_ok) if last_ok else None,
                      last_failed_at=float(last_failed) if last_failed else None, last_failed_wal=failed_wal)
        except psycopg2.Error:
            pass
        finally:
            conn.close()

    def _read_info(self) -> None:
        cfg = self.backup_cfg
        assert cfg is not None
        try:
            self._set(backups=pb.list_backups(cfg), listed_at=time.time())
        except pb.BackupError as exc:
            logger.debug("%s", exc)

    def _carry_out_request(self) -> None:
        try:
            kv = self.store.get(self.keys.backup_request)
        except StoreError:
            return
        if kv is None:
            return
        try:
            req = parse_request(kv.value)
        except FormatError as exc:
            self._problem(f"ignoring {self.keys.backup_request}: {exc}")
            return
        if req["keeper"] != self.uid or req["id"] == self.local_state.get("backup_done_id"):
            return
        logger.info("backup %s (%s, from %s) requested: running pgbackrest backup", req["id"], req["type"],
                    {"auto": "a standby when there is one", "standby": "a standby",
                     "primary": "the primary"}[req["source"]])
        self._run_backup(req["id"], req["type"], source=req["source"])
        self.save_state(backup_done_id=req["id"])

    def _run_schedule(self) -> None:
        """spec backup_schedule_full/diff, on the primary: take the backup a schedule calls for (the
        repository's listing says what was taken; a failed one is tried again after SCHEDULE_RETRY)."""
        spec = self.spec
        if not (spec.backup_schedule_full or spec.backup_schedule_diff) or "listed_at" not in self.backup_state:
            return
        due = pb.scheduled_backup(spec.backup_schedule_full, spec.backup_schedule_diff,
                                  self.backup_state.get("backups") or [], time.time())
        if due is None or time.monotonic() - self._schedule_failed_at < SCHEDULE_RETRY:
            return
        kind, run_at = due
        rid = f"scheduled{int(run_at)}"
        logger.info("backup %s (%s): the schedule %r ran at %s and no backup satisfies it yet: running pgbackrest "
                    "backup", rid, kind, spec.backup_schedule_full if kind == "full" else spec.backup_schedule_diff,
                    time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run_at)))
        if not self._run_backup(rid, kind, scheduled=True):
            self._schedule_failed_at = time.monotonic()

    def _backup_standby(self) -> tuple[pb.StandbyPg | None, str]:
        """The replica on this machine a backup copies its files from (pgha.backup.choose_standby)."""
        try:
            kvs, _ = self.store.get_prefix(self.keys.keepers)
        except StoreError as exc:
            return None, f"the keepers' status unreadable ({exc})"
        return pb.choose_standby(self.status, list(load_statuses(KeeperStatus, kvs, self.keys.base).values()), layout)

    def _run_backup(self, rid: str, kind: str, scheduled: bool = False, source: str = "auto") -> bool:
        """Run ``pgbackrest backup``, reporting it in the status as ``last``; True when it worked.
        ``source``: auto (from a replica on this machine when there is one, else from the primary,
        and from the primary again when the one from the replica fails), standby or primary."""
        cfg = self.backup_cfg
        assert cfg is not None
        last: dict[str, Any] = {"id": rid, "type": kind, "state": "running", "started_at": time.time(),
                                "scheduled": scheduled, "from": self.uid}
        self._set(last=dict(last))
        self.wake_heartbeat()
        t0 = time.monotonic()
        try:
            if not self.backup_state.get("stanza"):
                raise pb.BackupError("the stanza is not created yet (this keeper is not an initialized primary, "
                                     "or stanza-create fails: see its log)")
            standby: pb.StandbyPg | None = None
            if source != "primary":
                standby, why = self._backup_standby()
                if standby is None and source == "standby":
                    raise pb.BackupError(f"no standby to back up from: {why}")
                logger.info("backup %s: %s", rid, f"files copied from standby {standby.uid} ({why}); the primary "
                            "only starts and stops the backup" if standby else f"from the primary (no standby: {why})")
            if standby is not None:
                last["from"] = standby.uid
                self._set(last=dict(last))
                try:
                    pb.run(pb.backup_argv(cfg, kind, standby), "pgbackrest backup", timeout=None)
                except pb.BackupError as exc:
                    if source == "standby":
                        raise
                    logger.warning("backup %s from standby %s failed (%s): backing up from the primary instead",
                                   rid, standby.uid, exc)
                    standby = None
                    last["from"] = self.uid
                    self._set(last=dict(last))
            if standby is None:
                pb.run(pb.backup_argv(cfg, kind), "pgbackrest backup", timeout=None)
            self._read_info()
            done = self.backup_state.get("backups") or []
            last.update(state="done", label=done[-1]["label"] if done else None)
            logger.info("backup %s done in %.1fs: %s (files from %s)", rid, time.monotonic() - t0, last.get("label"),
                        "standby " + last["from"] if last["from"] != self.uid else "the primary")
        except pb.BackupError as exc:
            last.update(state="failed", error=str(exc))
            logger.error("backup %s failed: %s%s", rid, exc,
                         f" (the schedule tries again in {SCHEDULE_RETRY:.0f}s)" if scheduled else "")
        last["finished_at"] = time.time()
        last["seconds"] = round(time.monotonic() - t0, 3)
        self._set(last=dict(last))
        self.wake_heartbeat()
        return last["state"] == "done"


def repo_path_ok(path: str) -> str | None:
    """Why ``path`` cannot be a backup repository (None when it can)."""
    p = Path(path)
    if not p.is_absolute():
        return "must be an absolute path"
    if p.exists() and not p.is_dir():
        return "exists and is not a directory"
    return None
