"""Everything the keeper does to its PostgreSQL instance: initdb, configuration, start/stop,
promotion, base backup, rewind, and the status queries.

Layout under the keeper's ``--data-dir``:
  postgres/       PGDATA
  run/            the Unix socket directory (mode 0700: only the keeper's OS user can connect, so
                  local connections use trust without exposing anything)
  pgpass          libpq password file of the replication role (streaming, base backup, rewind; 0600)
  postgres.log    PostgreSQL's own log
  state.json      the keeper's local state (cluster uid)
  pgha.lock       the data-directory lock

TLS (``PgConfig.tls_cert_file``): PostgreSQL serves it with ``ssl=on``, and every connection the
keeper makes to another member (streaming, base backup, pg_rewind, its checks of the primary) uses
``sslmode=verify-full`` against ``tls_ca_file``, so a replica talks only to a server whose
certificate the cluster's CA signed for the address the cluster data names.

The postmaster is started as a direct child with ``PR_SET_PDEATHSIG=SIGQUIT``: if the keeper dies,
its PostgreSQL stops at once instead of running on unsupervised (and unfenced).
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from pgha import procs
from pgha.model import Replication, lsn_to_int

logger = logging.getLogger("pgha.keeper")

_PR_SET_PDEATHSIG = 1


class PgError(Exception):
    """A PostgreSQL operation failed; the message says which and why (never a password)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)
    except OSError:
        pass
    os.setsid()


def quote_conf(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def sync_standby_names(members: tuple[str, ...] | list[str]) -> str:
    """``N ("a","b")``: every listed standby must acknowledge (never a subset)."""
    if not members:
        return ""
    names = ",".join('"' + m + '"' for m in sorted(members))
    return f"{len(members)} ({names})"


def parse_sync_standby_names(text: str) -> tuple[str, ...]:
    text = (text or "").strip()
    if not text:
        return ()
    m = re.match(r"^(?:(?:FIRST|ANY)\s+)?(?:\d+\s*)?\((.*)\)\s*$", text, re.I)
    body = m.group(1) if m else text
    return tuple(sorted(p.strip().strip('"') for p in body.split(",") if p.strip()))


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@dataclass
class PgConfig:
    bin_path: str
    data_dir: Path
    listen_address: str
    port: int
    su_username: str
    su_password: str = field(repr=False)
    repl_username: str
    repl_password: str = field(repr=False)
    tls_cert_file: str = ""  # PostgreSQL's certificate and key (ssl=on), "" for none
    tls_key_file: str = ""
    tls_ca_file: str = ""  # the CA the other members' certificates are checked against
    app_username: str = ""  # the applications' role and database (LOGIN, owns its database), "" for none
    app_password: str = field(default="", repr=False)
    app_database: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)


# what pg_rewind calls on its source server (PostgreSQL 15's "pg_rewind" docs): granted to the
# replication role, which rewinds, instead of connecting as the superuser
REWIND_FUNCTIONS = ("pg_catalog.pg_ls_dir(text, boolean, boolean)", "pg_catalog.pg_stat_file(text, boolean)",
                    "pg_catalog.pg_read_binary_file(text)",
                    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)")


class Postgres:
    def __init__(self, cfg: PgConfig) -> None:
        self.cfg = cfg
        self.pgdata = cfg.data_dir / "postgres"
        self.sockdir = cfg.data_dir / "run"
        self.passfile = cfg.data_dir / "pgpass"
        self.logfile = cfg.data_dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._conn: Any = None
        self._sconn: Any = None  # the status collector's own connection

    # ------------------------------------------------------------------ helpers
    def bin(self, name: str) -> str:
        return str(Path(self.cfg.bin_path) / name)

    def client_tls(self) -> dict[str, str]:
        """libpq settings for a connection to another member: its certificate verified against the
        cluster's CA and the address connected to; without TLS configured, no encryption."""
        if self.cfg.tls_ca_file:
            # no client certificate (the members log in with a password over the verified TLS); a
            # path that does not exist keeps libpq from looking in $HOME/.postgresql, which may be
            # another user's (then it fails with "Permission denied")
            none = str(self.cfg.data_dir / "no-client-certificate")
            return {"sslmode": "verify-full", "sslrootcert": self.cfg.tls_ca_file, "sslcert": none, "sslkey": none}
        return {"sslmode": "disable"}

    def member_conninfo(self, host: str, port: int, **extra: str) -> str:
        """The conninfo string of a connection to another member as the replication role."""
        params = {"host": host, "port": str(port), "user": self.cfg.repl_username, "passfile": str(self.passfile),
                  **self.client_tls(), **extra}
        return psycopg2.extensions.make_dsn(**params)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSFILE"] = str(self.passfile)
        env["PGCONNECT_TIMEOUT"] = "5"
        env["LC_ALL"] = "C"
        return env

    def _run(self, argv: list[str], what: str, timeout: float | None = None) -> str:
        logger.debug("running %s", " ".join(argv))
        try:
            out = subprocess.run(argv, env=self._env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise PgError(f"{what} timed out after {timeout}s") from None
        text = out.stdout.decode(errors="replace")
        if out.returncode != 0:
            tail = "\n".join(text.strip().splitlines()[-8:])
            raise PgError(f"{what} failed (exit {out.returncode}): {tail}")
        return text

    def prepare_dirs(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.sockdir, 0o700)
        # only the replication role's: the superuser logs in over the Unix socket (no password)
        lines = [f"*:*:*:{_pgpass_escape(self.cfg.repl_username)}:{_pgpass_escape(self.cfg.repl_password)}"]
        tmp = self.passfile.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.passfile)

    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def is_standby_configured(self) -> bool:
        return (self.pgdata / "standby.signal").exists()

    def version(self) -> str:
        try:
            return (self.pgdata / "PG_VERSION").read_text().strip()
        except OSError:
            return ""

    # ------------------------------------------------------------------ process
    def postmaster_pid(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"postgres" in cmd else None

    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def start(self, timeout: float = 60.0) -> None:
        if self.running():
            return
        self.close()
        self.sockdir.mkdir(mode=0o700, exist_ok=True)
        log = open(self.logfile, "ab")
        try:
            self.proc = subprocess.Popen([self.bin("postgres"), "-D", str(self.pgdata)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=self._env(), preexec_fn=_die_with_parent)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PgError(f"PostgreSQL exited at start (code {self.proc.returncode}): {self.log_tail()}")
            try:
                c = self._connect(timeout=1)
                c.close()
                return
            except psycopg2.OperationalError as exc:
                if "starting up" not in str(exc) and "No such file" not in str(exc) \
                        and "Connection refused" not in str(exc) and "shutting down" not in str(exc):
                    logger.debug("waiting for PostgreSQL: %s", exc)
            time.sleep(0.05)
        raise PgError(f"PostgreSQL did not accept connections within {timeout}s: {self.log_tail()}")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop PostgreSQL: ``fast`` (SIGINT: roll back sessions, checkpoint) or ``immediate``
        (SIGQUIT: no checkpoint; crash recovery at next start)."""
        self.close()
        pid = self.postmaster_pid()
        if pid is None:
            self.proc = None
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.pid == pid:
                if self.proc.poll() is not None:
                    break
            elif not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.02)
        else:
            if mode != "immediate":
                logger.warning("PostgreSQL did not stop within %ss (%s): stopping it immediately", timeout, mode)
                return self.stop("immediate", timeout)
            raise PgError(f"PostgreSQL (pid {pid}) did not stop")
        self.proc = None

    def kill(self, grace: float = 2.0) -> bool:
        """Fencing: end a running PostgreSQL at once, without taking locks or closing connections
        other threads own. SIGQUIT makes the postmaster and every backend exit immediately (no
        checkpoint: crash recovery at the next start); whatever is left after ``grace`` seconds
        gets SIGKILL. Returns whether PostgreSQL was running."""
        pid = self.postmaster_pid()
        if pid is None:
            return False
        children = procs.descendants(pid)
        procs.signal_pids([pid], signal.SIGQUIT)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.postmaster_pid() != pid:
                return True
            time.sleep(0.01)
        procs.signal_pids(procs.descendants(pid) + children + [pid], signal.SIGKILL)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.postmaster_pid() != pid:
                return True
            time.sleep(0.01)
        raise PgError(f"PostgreSQL (pid {pid}) survived SIGKILL")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    # ------------------------------------------------------------------ connections
    def _connect(self, timeout: float = 2, **kw: Any) -> Any:
        return psycopg2.connect(host=str(self.sockdir), port=self.cfg.port, user=self.cfg.su_username,
                                dbname="postgres", connect_timeout=max(1, int(timeout)),
                                application_name="pgha-keeper", **kw)

    def conn(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._conn.autocommit = True
        return self._conn

    def close(self) -> None:
        for attr in ("_conn", "_sconn"):
            c = getattr(self, attr)
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
                setattr(self, attr, None)

    def query(self, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        try:
            cur = self.conn().cursor()
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
        except psycopg2.Error:
            self.close()
            raise

    def squery(self, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        """A status query on the collector's own connection, with a statement timeout."""
        try:
            if self._sconn is None or self._sconn.closed:
                self._sconn = self._connect(options="-c statement_timeout=2000")
                self._sconn.autocommit = True
            cur = self._sconn.cursor()
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
        except psycopg2.Error:
            if self._sconn is not None:
                try:
                    self._sconn.close()
                except Exception:  # noqa: BLE001
                    pass
                self._sconn = None
            raise

    # ------------------------------------------------------------------ creation
    def wipe(self) -> None:
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)

    def initdb(self) -> None:
        self.wipe()
        pwfile = self.cfg.data_dir / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.cfg.su_password + "\n")
        try:
            self._run([self.bin("initdb"), "-D", str(self.pgdata), "-U", self.cfg.su_username,
                       f"--pwfile={pwfile}", "--data-checksums", "-E", "UTF8", "--locale=C",
                       "--auth-local=trust", "--auth-host=scram-sha-256"], "initdb", timeout=300)
        finally:
            pwfile.unlink(missing_ok=True)
        self.ensure_include()

    def ensure_include(self) -> None:
        conf = self.pgdata / "postgresql.conf"
        text = conf.read_text()
        if "include_if_exists = 'pgha.conf'" not in text:
            with open(conf, "a") as f:
                f.write("\n# managed by pgha: keep this line last\ninclude_if_exists = 'pgha.conf'\n")

    def _ensure_login(self, name: str, password: str, attributes: str) -> bool:
        """Create the login role ``name`` or set its attributes and password; whether it was created."""
        exists = self.query("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        verb = "ALTER" if exists else "CREATE"
        self.query(f'{verb} ROLE "{name}" WITH {attributes} LOGIN PASSWORD %s', (password,))
        return not exists

    def create_roles(self) -> list[str]:
        """Create or update (passwords, grants) the replication role and the application role and
        database; on the primary. Returns what was created."""
        made: list[str] = []
        # committed without waiting for a synchronous standby (this runs right after a promotion, before
        # the standbys stream); idempotent, so a change lost with this primary is made again by the next
        # and never logged: the statements carry the passwords (the spec may set log_statement or
        # log_min_duration_statement; an error would log the statement too)
        quiet = {"synchronous_commit": "local", "log_statement": "none", "log_min_duration_statement": "-1",
                 "log_min_error_statement": "panic"}
        for name, value in quiet.items():
            self.query(f"SET {name} TO {value}")
        try:
            self._create_roles(made)
        finally:
            for name in quiet:
                self.query(f"RESET {name}")
        return made

    def _create_roles(self, made: list[str]) -> None:
        cfg = self.cfg  # the keeper refuses a replication user named like the superuser
        self._ensure_login(cfg.repl_username, cfg.repl_password, "REPLICATION NOSUPERUSER")
        for function in REWIND_FUNCTIONS:
            self.query(f'GRANT EXECUTE ON FUNCTION {function} TO "{cfg.repl_username}"')
        if cfg.app_username:
            if self._ensure_login(cfg.app_username, cfg.app_password, "NOSUPERUSER NOCREATEROLE NOREPLICATION"):
                made.append(f"role {cfg.app_username}")
            database = cfg.app_database or cfg.app_username
            if not self.query("SELECT 1 FROM pg_database WHERE datname = %s", (database,)):
                self.query(f'CREATE DATABASE "{database}" OWNER "{cfg.app_username}"')
                made.append(f"database {database} owned by {cfg.app_username}")

    def basebackup(self, host: str, port: int, slot: str | None) -> None:
        """Clone from ``host:port`` into a fresh directory, then swap it in: the old data is kept
        until the copy is complete."""
        staging = self.cfg.data_dir / "postgres.new"
        if staging.exists():
            shutil.rmtree(staging)
        argv = [self.bin("pg_basebackup"), "-D", str(staging), "-d", self.member_conninfo(host, port),
                "-X", "stream", "-c", "fast", "-w"]
        if slot:
            argv += ["--slot", slot]
        self._run(argv, f"pg_basebackup from {host}:{port}", timeout=None)
        old = self.cfg.data_dir / "postgres.old"
        if self.pgdata.exists():
            if old.exists():
                shutil.rmtree(old)
            self.pgdata.rename(old)
        staging.rename(self.pgdata)
        os.chmod(self.pgdata, 0o700)
        if old.exists():
            shutil.rmtree(old)
        self.ensure_include()

    def rewind(self, host: str, port: int) -> str:
        conninfo = self.member_conninfo(host, port, dbname="postgres")
        return self._run([self.bin("pg_rewind"), "-D", str(self.pgdata), f"--source-server={conninfo}"],
                         f"pg_rewind from {host}:{port}", timeout=600)

    def controldata(self) -> dict[str, str]:
        text = self._run([self.bin("pg_controldata"), "-D", str(self.pgdata)], "pg_controldata", timeout=30)
        out = {}
        for line in text.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out[k.strip()] = v.strip()
        return out

    # ------------------------------------------------------------------ configuration
    def write_config(self, params: dict[str, str], hba: list[str], primary_conninfo: str | None,
                     slot: str | None) -> bool:
        """Write pgha.conf and pg_hba.conf; create or remove standby.signal. Returns whether a file
        changed (the caller reloads a running instance)."""
        lines = ["# Written by pgha-keeper at every start and change. Do not edit: use pghactl update."]
        for name in sorted(params):
            lines.append(f"{name} = {quote_conf(params[name])}")
        # written for both roles: it needs a restart to change, and a promoted primary whose file
        # lost the line would report pending_restart for ever
        lines.append("recovery_target_timeline = 'latest'")
        if primary_conninfo is not None:
            lines.append(f"primary_conninfo = {quote_conf(primary_conninfo)}")
            lines.append(f"primary_slot_name = {quote_conf(slot or '')}")
        changed = self._write(self.pgdata / "pgha.conf", "\n".join(lines) + "\n")
        changed |= self._write(self.pgdata / "pg_hba.conf", "\n".join(hba) + "\n")
        auto = self.pgdata / "postgresql.auto.conf"
        if auto.exists():
            body = [ln for ln in auto.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            if body:
                logger.warning("discarding ALTER SYSTEM settings in postgresql.auto.conf (%s): pgha manages "
                               "parameters through the spec", ", ".join(ln.split("=")[0].strip() for ln in body))
                self._write(auto, "# Do not edit this file manually!\n# It will be overwritten by the ALTER "
                                  "SYSTEM command.\n")
                changed = True
        signal_file = self.pgdata / "standby.signal"
        if primary_conninfo is not None and not signal_file.exists():
            signal_file.touch()
        elif primary_conninfo is None and signal_file.exists() and not self.running():
            signal_file.unlink()
        return changed

    @staticmethod
    def _write(path: Path, text: str) -> bool:
        try:
            if path.read_text() == text:
                return False
        except OSError:
            pass
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return True

    def reload(self) -> None:
        self.query("SELECT pg_reload_conf()")

    def promote(self, timeout: int = 60) -> None:
        rows = self.query("SELECT pg_promote(true, %s)", (timeout,))
        if not rows or not rows[0][0]:
            raise PgError(f"promotion did not complete within {timeout}s")

    # ------------------------------------------------------------------ slots
    def reconcile_slots(self, wanted: set[str]) -> list[str]:
        rows = self.query("SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical' "
                          "AND NOT temporary AND slot_name LIKE 'pgha\\_%%'")
        have = {r[0] for r in rows}
        changes = []
        for name in sorted(wanted - have):
            self.query("SELECT pg_create_physical_replication_slot(%s, true)", (name,))
            changes.append(f"created slot {name}")
        for name in sorted(have - wanted):
            try:
                self.query("SELECT pg_drop_replication_slot(%s)", (name,))
                changes.append(f"dropped slot {name}")
            except psycopg2.Error as exc:  # active slot: try again next time
                logger.debug("cannot drop slot %s yet: %s", name, exc)
        return changes

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """One round of status queries on a running instance."""
        (in_recovery, system_id, version, pending) = self.squery(
            "SELECT pg_is_in_recovery(), (SELECT system_identifier::text FROM pg_control_system()), "
            "current_setting('server_version'), "
            "(SELECT count(*) > 0 FROM pg_settings WHERE pending_restart)")[0]
        out: dict[str, Any] = {"system_id": system_id, "pg_version": version, "pending_restart": bool(pending),
                               "in_recovery": bool(in_recovery)}
        if not in_recovery:
            lsn, ssn, walfile = self.squery(
                "SELECT pg_current_wal_lsn()::text, current_setting('synchronous_standby_names'), "
                "pg_walfile_name(pg_current_wal_lsn())")[0]
            out["lsn"] = lsn_to_int(lsn)
            out["replay_lsn"] = out["lsn"]
            out["timeline"] = int(walfile[:8], 16)
            out["synchronous_standbys"] = parse_sync_standby_names(ssn)
            rows = self.squery("SELECT application_name, state, sync_state, flush_lsn::text "
                              "FROM pg_stat_replication")
            out["replication"] = tuple(Replication(name=r[0], state=r[1] or "", sync_state=r[2] or "",
                                                   flush_lsn=lsn_to_int(r[3])) for r in rows)
            out["streaming_from"] = None
        else:
            recv, replay, status, host, port, tli, latest = self.squery(
                "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, "
                "r.status, r.sender_host, r.sender_port, r.received_tli, r.latest_end_lsn::text "
                "FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver r ON true")[0]
            recv_i, replay_i = lsn_to_int(recv), lsn_to_int(replay)
            out["lsn"] = max(x for x in (recv_i, replay_i, 0) if x is not None) or None
            out["replay_lsn"] = replay_i
            out["streaming_from"] = f"{host}:{port}" if status == "streaming" and host else None
            out["latest_end_lsn"] = lsn_to_int(latest)
            out["timeline"] = self.replay_timeline() or tli
            out["replication"] = ()
            out["synchronous_standbys"] = None
        return out

    def replay_timeline(self) -> int | None:
        """The timeline a standby is replaying (IDENTIFY_SYSTEM over a replication connection)."""
        try:
            c = self._connect(timeout=2, connection_factory=psycopg2.extras.PhysicalReplicationConnection)
        except psycopg2.Error:
            return None
        try:
            cur = c.cursor()
            cur.execute("IDENTIFY_SYSTEM")
            row = cur.fetchone()
            return int(row[1]) if row else None
        except psycopg2.Error:
            return None
        finally:
            c.close()
