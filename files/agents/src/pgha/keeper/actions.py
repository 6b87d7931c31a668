"""What the keeper does to its PostgreSQL (part of ``pgha.keeper.main.Keeper``): one method per kind
of ``pgha.keeper.decide.Action``, found through ``ACTIONS``, and the configuration they write."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import psycopg2

from pgha.keeper import decide as kd
from pgha.keeper.pg import PgError, sync_standby_names
from pgha.model import ROLE_NONE, ROLE_REPLICA, KeeperSpec

logger = logging.getLogger("pgha.keeper")

DEFAULT_PG_PARAMETERS = {
    "wal_level": "replica",
    "wal_keep_size": "256MB",
    "wal_receiver_status_interval": "1s",
    "wal_retrieve_retry_interval": "100ms",
    "wal_sender_timeout": "10s",
    "wal_receiver_timeout": "10s",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}

# A hot standby refuses to start when one of these is lower than on its primary. Replicas run
# max(spec, the primary's running value); a lowered value reaches them after the primary restarts.
HOT_STANDBY_PARAMETERS = {"max_connections": 100, "max_worker_processes": 8, "max_prepared_transactions": 0,
                          "max_locks_per_transaction": 64}


NO_REPOSITORY = "init_mode pitr needs a backup repository: start this keeper with --backup-repo-path"


class Actions:
    """The actions and the configuration; uses the Keeper's pg, spec, cluster data and local state."""

    roles_ensured = False  # create_roles() has run on this primary since the keeper started
    _hba_dropped: set[str]  # spec pg_hba lines left out (logged once)
    _tls_files: tuple | None = None  # (inode, size, mtime) of the TLS files when last looked at

    # without a backup repository; pgha.keeper.backups.Backups (ahead of this class in Keeper) has them
    def backup_parameters(self) -> dict[str, str]:
        return {}

    def write_backup_config(self) -> None:
        pass

    def replica_from_backup(self, want: KeeperSpec | None, follow_addr: str) -> bool:
        return False  # no repository: a base backup from the primary

    def restore_from_backup(self, want: KeeperSpec | None) -> None:
        raise PgError(NO_REPOSITORY)

    def pg_parameters(self, primary: bool, want: KeeperSpec | None) -> dict[str, str]:
        params = dict(DEFAULT_PG_PARAMETERS)
        params.update(self.spec.pg_parameters)
        params.update(self.backup_parameters())
        if not primary:
            for name, default in HOT_STANDBY_PARAMETERS.items():
                upstream = self.primary_minimums.get(name)
                try:
                    mine = int(params.get(name, default))
                except ValueError:
                    continue
                if upstream is not None and upstream > mine:
                    params[name] = str(upstream)
        params.update({
            "listen_addresses": self.args.pg_listen_address,
            "port": str(self.args.pg_port),
            "unix_socket_directories": str(self.pg.sockdir),
            "unix_socket_permissions": "0700",
            "hot_standby": "on",
            "max_wal_senders": "20",
            "max_replication_slots": "20",
            "wal_log_hints": "on",
            "synchronous_standby_names": sync_standby_names(want.synchronous_standbys) if primary and want else "",
        })
        if self.pg.cfg.tls:
            params.update({"ssl": "on", "ssl_cert_file": self.pg.cfg.tls_cert_file,
                           "ssl_key_file": self.pg.cfg.tls_key_file})
        return params

    def pg_hba(self) -> list[str]:
        """The keeper's own rules, then the spec's (or, without any, password logins for every other
        role). Over TCP: TLS only when the keeper has a certificate; the replication role only for
        replication and for pg_rewind's and the keepers' checks in database postgres; the superuser
        never (it logs in over the keeper's private Unix socket)."""
        su, repl = self.args.pg_su_username, self.args.pg_repl_username
        tcp = "hostssl" if self.pg.cfg.tls else "host"
        nets = ("0.0.0.0/0", "::/0")
        lines = [
            "# Written by pgha-keeper. Extra rules come from the spec's pg_hba (pghactl update).",
            "# The Unix socket directory is private to the keeper's OS user (0700): trust is safe there.",
            "local all all trust",
            "local replication all trust",
        ]
        lines += [f"{tcp} replication {repl} {net} scram-sha-256" for net in nets]
        lines += [f"{tcp} postgres {repl} {net} scram-sha-256" for net in nets]
        lines += [f"host all {role} {net} reject" for role in (su, repl) for net in nets]
        lines += [f"host replication {su} {net} reject" for net in nets]
        lines += self.spec_hba() or [f"{tcp} all all {net} scram-sha-256" for net in nets]
        return lines

    def spec_hba(self) -> list[str]:
        """The spec's pg_hba lines; with TLS, a ``host`` line is written as ``hostssl`` and a
        ``hostnossl`` one is left out (logged once): nothing logs in over TCP without TLS."""
        if not self.pg.cfg.tls:
            return list(self.spec.pg_hba)
        out = []
        for line in self.spec.pg_hba:
            fields = line.split(None, 1)
            kind = fields[0] if fields else ""
            if kind == "host":
                out.append("hostssl " + fields[1])
            elif kind == "hostnossl":
                if line not in self._hba_dropped:
                    self._hba_dropped.add(line)
                    logger.warning("spec pg_hba line %r left out: with TLS, nothing logs in over TCP without it", line)
            else:
                out.append(line)
        return out

    def conninfo(self, address: str) -> str:
        host, port = address.rsplit(":", 1)
        return self.pg.member_conninfo(host, int(port), application_name=self.uid, connect_timeout="2",
                                       keepalives_idle="5", keepalives_interval="2", keepalives_count="3")

    def _connect_member(self, address: str) -> Any:
        """A connection to another member's database postgres as the replication role (TLS verified
        when configured); raises psycopg2.Error."""
        host, port = address.rsplit(":", 1)
        return psycopg2.connect(host=host, port=int(port), user=self.args.pg_repl_username, dbname="postgres",
                                connect_timeout=2, passfile=str(self.pg.passfile), application_name="pgha-keeper",
                                **self.pg.client_tls())

    def reload_renewed_certificate(self) -> None:
        """Have PostgreSQL read its certificate, key and CA again when one of the files changed (the
        roles renew certificates before they expire); it keeps the previous ones if the new files do
        not load."""
        if not self.pg.cfg.tls:
            return
        seen = []
        for path in (self.pg.cfg.tls_cert_file, self.pg.cfg.tls_key_file, self.pg.cfg.tls_ca_file):
            try:
                st = os.stat(path)
                seen.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                seen.append(None)
        before, self._tls_files = self._tls_files, tuple(seen)
        if before is None or before == self._tls_files or not self.pg.running():
            return
        try:
            self.pg.reload()
            logger.info("the TLS certificate files changed: PostgreSQL reloaded them")
        except psycopg2.Error as exc:
            self._tls_files = before  # try again at the next loop
            logger.warning("the TLS certificate files changed, but PostgreSQL could not reload: %s", str(exc).strip())

    def learn_primary_minimums(self, address: str) -> None:
        """Read the hot-standby-sensitive settings the primary runs with (before a replica starts)."""
        try:
            c = self._connect_member(address)
        except psycopg2.Error:
            return
        try:
            cur = c.cursor()
            cur.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (list(HOT_STANDBY_PARAMETERS),))
            found = {name: int(value) for name, value in cur.fetchall()}
        except (psycopg2.Error, ValueError):
            return
        finally:
            c.close()
        if found != self.primary_minimums:
            raised = {k: v for k, v in found.items()
                      if v > int((self.spec.pg_parameters).get(k, HOT_STANDBY_PARAMETERS[k]))}
            if raised:
                logger.info("the primary runs %s: this replica uses at least as much (a hot standby cannot run "
                            "with less)", ", ".join(f"{k}={v}" for k, v in sorted(raised.items())))
            self.primary_minimums = found

    def configure(self, want: KeeperSpec | None, primary: bool, follow_addr: str | None) -> bool:
        self.write_backup_config()
        if primary:
            changed = self.pg.write_config(self.pg_parameters(True, want), self.pg_hba(), None, None)
        else:
            assert follow_addr
            if not self.pg.running() or follow_addr != self.following:
                self.learn_primary_minimums(follow_addr)
            changed = self.pg.write_config(self.pg_parameters(False, want), self.pg_hba(),
                                           self.conninfo(follow_addr), f"pgha_{self.uid}")
            self.following = follow_addr
        return changed

    def wanted_slots(self) -> set[str]:
        cd = self.cd
        if cd is None:
            return set()
        return {f"pgha_{u}" for u, k in cd.keepers.items() if u != self.uid and k.role == ROLE_REPLICA}

    def start(self) -> None:
        with self.lock:
            if self.fenced:
                raise PgError("lease lapsed: not starting PostgreSQL")
            self.phase = "starting"
            self.pg.start(timeout=120)
            self.phase = "running"

    def source_is_primary(self, address: str) -> bool:
        try:
            c = self._connect_member(address)
        except psycopg2.Error as exc:
            logger.info("cannot check %s is a primary: %s", address, str(exc).strip().splitlines()[0] if str(exc) else exc)
            return False
        try:
            cur = c.cursor()
            cur.execute("SELECT pg_is_in_recovery()")
            return not cur.fetchone()[0]
        except psycopg2.Error:
            return False
        finally:
            c.close()

    def reconcile_primary(self, want: KeeperSpec | None) -> None:
        # the slots first: a synchronous standby needs its slot to stream, and nothing commits on a
        # synchronous primary before one streams
        for change in self.pg.reconcile_slots(self.wanted_slots()):
            logger.info("%s", change)
        if not self.roles_ensured:  # once per keeper process: passwords read at start, grants added by upgrades
            try:
                for made in self.pg.create_roles():
                    logger.info("created %s", made)
                self.roles_ensured = True
            except psycopg2.Error as exc:
                logger.warning("cannot create or update the roles (trying again): %s", str(exc).strip())

    def do_wait(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        if not self.pg.running():
            self.phase = "fenced" if want is not None and want.role == ROLE_NONE else "waiting"

    def do_refuse(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        self.phase = "refused"
        self.set_error(action.reason)

    def do_stop(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        with self.lock:
            try:
                self.pg.stop("fast", timeout=10)
            except PgError as exc:  # the sentinel waits for this primary to stop: make sure it does
                logger.error("%s: killing it", exc)
                self.pg.kill()
        self.phase = "fenced" if want is not None else "stopped"
        logger.info("PostgreSQL stopped (%s)", action.reason)
        self.wake_heartbeat()  # a switchover waits for this: publish it now, not at the next tick

    def do_initdb(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        assert self.cd is not None
        with self.lock:
            self.pg.stop("immediate")
        self.save_state(cluster_uid=self.cd.uid, initializing=True)
        self.phase = "initdb"
        self.pg.initdb()
        self.configure(want, True, None)
        self.start()
        self.reconcile_primary(want)
        self.pg.query("CHECKPOINT")
        self.save_state(cluster_uid=self.cd.uid, initializing=False)
        logger.info("initdb done: PostgreSQL %s running as primary with data checksums", self.pg.version())
        self.wake_heartbeat()

    def do_adopt(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        assert self.cd is not None
        with self.lock:
            self.pg.stop("fast")
        self.pg.ensure_include()
        self.configure(want, True, None)
        self.start()
        self.reconcile_primary(want)
        self.save_state(cluster_uid=self.cd.uid, initializing=False)
        logger.info("adopted the existing data directory as primary")

    def do_restore(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        self.restore_from_backup(want)

    def do_start_primary(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        self.pg.close()
        signal_file = self.pg.pgdata / "standby.signal"
        self.configure(want, True, None)
        if signal_file.exists():
            signal_file.unlink()
        self.start()
        self.following = None
        self.reconcile_primary(want)
        self.wake_heartbeat()

    def do_promote(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        if self.configure(want, True, None):
            self.pg.reload()
        t0, called = time.monotonic(), time.time()
        self.pg.promote()
        self.promote_times = (called, time.time())
        self.following = None
        logger.info("promoted to primary in %.3fs", time.monotonic() - t0)
        self.wake_heartbeat()
        self.reconcile_primary(want)

    def do_reconcile_primary(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        self.phase = "running"
        if self.configure(want, True, None):
            self.pg.reload()
            logger.info("configuration changed: reloaded (synchronous_standby_names=%r)",
                        sync_standby_names(want.synchronous_standbys) if want else "")
            self.wake_heartbeat()
        self.prepare_switchover()
        self.reconcile_primary(want)

    def prepare_switchover(self) -> None:
        """A switchover away from us is being prepared (its ``prepare`` stage): checkpoint while we
        still serve, so that the shutdown checkpoint once fenced has little left to write, and say
        so in our status at once (``checkpointed_for``). A failed or slow checkpoint only makes the
        switchover slower (the sentinel fences after its PREPARE_TIMEOUT)."""
        t = self.cd.transition if self.cd is not None else None
        if t is None or t.stage != "prepare" or t.old != self.uid or self.checkpointed_for == t.started:
            return
        t0 = time.monotonic()
        try:
            self.pg.query("SET statement_timeout = 4000")  # below the sentinel's PREPARE_TIMEOUT (5 s)
            self.pg.query("CHECKPOINT")
            self.pg.query("RESET statement_timeout")
            logger.info("switchover to %s prepared: checkpoint done in %.3fs (the shutdown checkpoint will be short)",
                        t.new, time.monotonic() - t0)
        except psycopg2.Error as exc:
            logger.warning("switchover to %s: checkpoint failed (%s); the shutdown checkpoint does it instead",
                           t.new, str(exc).strip())
        self.checkpointed_for = t.started
        self.wake_heartbeat()

    def do_basebackup(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        assert self.cd is not None and follow_addr
        with self.lock:
            self.pg.stop("fast")
        self.save_state(cluster_uid=self.cd.uid, initializing=True)
        if self.replica_from_backup(want, follow_addr):
            return
        self.phase = "basebackup"
        host, port = follow_addr.rsplit(":", 1)
        t0 = time.monotonic()
        try:
            self.pg.basebackup(host, int(port), f"pgha_{self.uid}")
        except PgError as exc:
            if f'slot "pgha_{self.uid}" does not exist' in str(exc):
                self.phase = "waiting for the primary to create our replication slot"
                logger.info("%s: waiting for the primary to create replication slot pgha_%s", follow_addr, self.uid)
                return
            raise
        logger.info("base backup from %s done in %.1fs", follow_addr, time.monotonic() - t0)
        self.configure(want, False, follow_addr)
        self.start()
        self.save_state(cluster_uid=self.cd.uid, initializing=False)

    def do_rewind(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        assert follow_addr and self.cd is not None
        if not self.source_is_primary(follow_addr):
            self.phase = "waiting"
            if self.pg.running() and self.pg_status.get("in_recovery") is False:
                with self.lock:
                    self.pg.stop("fast", timeout=10)  # never keep running as a second primary
            if not self.pg.running():
                self.phase = "waiting for the new primary"
            raise PgError(f"cannot rejoin yet: {follow_addr} is not reachable as a primary")
        with self.lock:
            self.pg.stop("fast", timeout=10)
        host, port = follow_addr.rsplit(":", 1)
        rewound = False
        if self.spec.use_pg_rewind:
            self.phase = "rewind"
            t0 = time.monotonic()
            try:
                out = self.pg.rewind(host, int(port))
                rewound = True
                summary = "no rewind required" if "no rewind required" in out else "rewound"
                logger.info("pg_rewind from %s: %s in %.1fs", follow_addr, summary, time.monotonic() - t0)
            except PgError as exc:
                logger.warning("pg_rewind failed, taking a fresh base backup instead: %s", exc)
        if not rewound:
            self.do_basebackup(action, want, follow_addr)
            return
        self.pg.ensure_include()
        self.configure(want, False, follow_addr)
        try:
            self.start()
        except PgError as exc:
            logger.warning("the rewound instance did not start (%s): taking a fresh base backup", exc)
            with self.lock:
                self.pg.stop("immediate")
            self.do_basebackup(action, want, follow_addr)
            return
        self.not_streaming_since = None

    def do_start_replica(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        self.configure(want, False, follow_addr)
        self.start()

    def do_reconcile_replica(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        self.phase = "running"
        previous = self.following
        if self.configure(want, False, follow_addr):
            self.pg.reload()
            if previous != follow_addr:
                logger.info("replicating from %s now (was %s)", follow_addr, previous or "unknown")
                self.not_streaming_since = None


Handler = Callable[[Any, kd.Action, "KeeperSpec | None", "str | None"], None]
# decision kind -> what carries it out
ACTIONS: dict[str, Handler] = {
    kd.WAIT: Actions.do_wait,
    kd.REFUSE: Actions.do_refuse,
    kd.STOP: Actions.do_stop,
    kd.INITDB: Actions.do_initdb,
    kd.ADOPT: Actions.do_adopt,
    kd.RESTORE: Actions.do_restore,
    kd.START_PRIMARY: Actions.do_start_primary,
    kd.PROMOTE: Actions.do_promote,
    kd.RECONCILE_PRIMARY: Actions.do_reconcile_primary,
    kd.BASEBACKUP: Actions.do_basebackup,
    kd.REWIND: Actions.do_rewind,
    kd.START_REPLICA: Actions.do_start_replica,
    kd.RECONCILE_REPLICA: Actions.do_reconcile_replica,
}
