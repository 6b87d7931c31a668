"""pgha-keeper: owns one PostgreSQL instance and makes it what the sentinel wants.

Four threads:

* the **main loop** (here) reads the desired cluster data, asks ``keeper.decide.decide()`` what to
  do with the local PostgreSQL and does it through ``keeper.actions.ACTIONS`` (initdb, clone,
  rewind, start, promote, reconfigure, stop); these actions can take long;
* the **lease** thread renews the keeper's lease every half second (``keeper.fencing``);
* the **status** thread collects PostgreSQL's status and publishes it under the lease every
  ``sleep_interval``, whatever the main loop is doing (``keeper.status``);
* the **fence** timer is the third fencing layer, on its own clock: once the lease's deadline
  passes it kills a PostgreSQL that runs as primary, and keeps it down until the lease is renewed
  (``keeper.fencing``). It never waits on a store request or on the keeper's lock.

The HTTP API (``keeper.api``) answers from what the status thread last collected.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2

from pgha import cli, log as pglog
from pgha.http import ApiServer
from pgha.keeper import decide as kd
from pgha.keeper.actions import ACTIONS, Actions
from pgha.keeper.api import Api
from pgha.keeper.backups import Backups, repo_path_ok
from pgha.keeper.fencing import Fencing
from pgha.keeper.pg import PgConfig, PgError, Postgres
from pgha.keeper.status import Reporting
from pgha.model import (
    ROLE_REPLICA,
    ClusterData,
    FormatError,
    KeeperSpec,
    KeeperStatus,
    keys,
)
from pgha.spec import Spec, default, valid_uid
from pgha.store import Store, StoreError
from pgha.store.lease import Lease

logger = logging.getLogger("pgha.keeper")

# Loops between two reads of unchanged cluster data. The watch starts right after the revision
# read, so it cannot miss a change (a compaction is reported as one): this is only a safety net.
# Every read costs the size of the cluster data, which grows with the cluster; 5 (2.5 s) made each
# keeper's store traffic grow with the number of keepers (bench/results/scale-20261127T084000Z.json).
REREAD_EVERY = 60


def read_password(path: str, flag: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        cli.die(f"{flag} {path}: {exc.strerror}")
    pw = text.rstrip("\r\n")
    if not pw:
        cli.die(f"{flag} {path}: the file is empty")
    return pw


def check_app_and_tls(args: Any) -> str:
    """Check the application-role and TLS flags (exits with the reason); returns the application
    role's password ("" without one)."""
    app_pw = ""
    if args.pg_app_username:
        if not valid_role_name(args.pg_app_username):
            cli.die(f"--pg-app-username {args.pg_app_username!r}: use 1-63 lowercase letters, digits or _ "
                    "(not pg_... nor public)")
        if args.pg_app_username in (args.pg_su_username, args.pg_repl_username):
            cli.die("--pg-app-username must differ from the superuser and the replication user")
        if not args.pg_app_password_file:
            cli.die("--pg-app-username needs --pg-app-password-file")
        app_pw = read_password(args.pg_app_password_file, "--pg-app-password-file")
        if args.pg_app_database and not valid_role_name(args.pg_app_database):
            cli.die(f"--pg-app-database {args.pg_app_database!r}: use 1-63 lowercase letters, digits or _ "
                    "(not pg_... nor public)")
    elif args.pg_app_password_file or args.pg_app_database:
        cli.die("--pg-app-password-file and --pg-app-database need --pg-app-username")
    tls = {"--pg-tls-cert-file": args.pg_tls_cert_file, "--pg-tls-key-file": args.pg_tls_key_file,
           "--pg-tls-ca-file": args.pg_tls_ca_file}
    if any(tls.values()):
        missing = [flag for flag, value in tls.items() if not value]
        if missing:
            cli.die(f"PostgreSQL TLS needs all of {', '.join(tls)}; missing: {', '.join(missing)}")
        for flag, value in tls.items():
            try:
                with open(value, "rb") as f:
                    if b"-----BEGIN " not in f.read(65536):
                        cli.die(f"{flag} {value}: not a PEM file")
            except OSError as exc:
                cli.die(f"{flag} {value}: {exc.strerror}")
    else:
        logger.warning("PostgreSQL without TLS (no --pg-tls-cert-file): passwords and data cross the network "
                       "in clear, and replicas do not check who they replicate from")
    return app_pw


def valid_role_name(name: str) -> bool:
    """1-63 lowercase letters, digits or _, not a name PostgreSQL reserves (pg_*, public)."""
    return bool(re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name or "")) and not name.startswith("pg_") \
        and name != "public"


class Keeper(Fencing, Reporting, Backups, Actions, Api):
    """One keeper: its state and main loop here; lease and fence (``fencing``), status (``status``),
    actions (``actions``) and HTTP API (``api``) in the modules next to this one."""

    def __init__(self, args: Any, store: Store, su_password: str, repl_password: str, app_password: str = "") -> None:
        self.args = args
        self.uid: str = args.uid
        self.store = store
        self.keys = keys(args.store_prefix, args.cluster_name)
        self.data_dir = Path(args.data_dir)
        self.pg = Postgres(PgConfig(bin_path=args.pg_bin_path, data_dir=self.data_dir,
                                    listen_address=args.pg_listen_address, port=args.pg_port,
                                    su_username=args.pg_su_username, su_password=su_password,
                                    repl_username=args.pg_repl_username, repl_password=repl_password,
                                    tls_cert_file=args.pg_tls_cert_file or "", tls_key_file=args.pg_tls_key_file or "",
                                    tls_ca_file=args.pg_tls_ca_file or "", app_username=args.pg_app_username or "",
                                    app_password=app_password, app_database=args.pg_app_database or ""))
        self.advertise = f"{args.pg_advertise_address or args.pg_listen_address}:{args.pg_advertise_port or args.pg_port}"
        self.boot_id = uuid.uuid4().hex[:12]
        self.spec: Spec = default()
        self.cd: ClusterData | None = None
        self.cd_rev = 0
        self.lock = threading.RLock()  # held while starting or stopping PostgreSQL
        self._hba_dropped: set[str] = set()
        self.collect_lock = threading.Lock()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.report_soon = threading.Event()  # wakes the status thread (a transition that names us began)
        # lease and fencing (see the module doc)
        self.lease = Lease(store, on_lost=self.lease_lost)
        self.fenced = True  # no lease yet: never a primary before the first grant
        self._fence_lock = threading.Lock()
        self._lapse_logged = False
        self.fence_lifted_at = 0.0  # monotonic time the fence last lifted
        self.cd_read_at = -1.0  # monotonic time the last successful read of the cluster data started
        # local state
        self.state_path = self.data_dir / "state.json"
        self.local_state: dict[str, Any] = {}
        self.following: str | None = None
        self.not_streaming_since: float | None = None
        self.phase = "starting"
        self.error = ""
        self.last_action: tuple[str, str] = ("", "")
        self.status = KeeperStatus(uid=self.uid)
        self.pg_status: dict[str, Any] = {}
        self._last_put = ""
        self._last_put_at = 0.0
        self._controldata_cache: tuple[float, dict[str, str]] | None = None
        self.api: ApiServer | None = None
        self.checkpointed_for: float | None = None  # the switchover we checkpointed for (prepare stage)
        self.promote_times: tuple[float | None, float | None] = (None, None)  # our last pg_promote(): called, done
        self.primary_minimums: dict[str, int] = {}  # hot-standby parameters of the primary we follow
        self.init_backups()

    # ================================================================== local state
    def load_state(self) -> None:
        try:
            self.local_state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            self.local_state = {}
        except ValueError:
            cli.die(f"{self.state_path} is corrupt: refusing to guess which cluster this data belongs to")
        saved = self.local_state.get("uid")
        if saved and saved != self.uid:
            cli.die(f"data directory {self.data_dir} belongs to keeper {saved!r}, not {self.uid!r}")

    def save_state(self, **changes: Any) -> None:
        self.local_state.update(changes, uid=self.uid)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.local_state, sort_keys=True))
        os.replace(tmp, self.state_path)

    # ================================================================== desired state
    def read_cd(self) -> bool:
        started = time.monotonic()
        kv = self.store.get(self.keys.clusterdata)
        self.cd_read_at = started
        if kv is None:
            self.cd, self.cd_rev = None, 0
            return True
        try:
            cd = ClusterData.loads(kv.value)
        except FormatError as exc:
            self.set_error(f"refusing to act on the cluster data: {exc}")
            self.cd_rev = kv.mod_revision
            return False
        if self.named_in(cd) and (self.cd is None or self.cd.transition != cd.transition):
            self.report_soon.set()  # report at the transition's pace from now, not after the current tick
        self.cd, self.cd_rev = cd, kv.mod_revision
        self.spec = cd.spec
        return True

    def local(self) -> kd.Local:
        running = self.pg.running()
        in_recovery = self.pg_status.get("in_recovery") if running else None
        if running and in_recovery is None:
            try:
                in_recovery = bool(self.pg.query("SELECT pg_is_in_recovery()")[0][0])
            except psycopg2.Error:
                in_recovery = None
        nsf = 0.0 if self.not_streaming_since is None else time.monotonic() - self.not_streaming_since
        return kd.Local(
            data_exists=self.pg.initialized(),
            cluster_uid=self.local_state.get("cluster_uid"),
            initializing=bool(self.local_state.get("initializing")),
            running=running,
            in_recovery=in_recovery,
            standby_configured=self.pg.is_standby_configured(),
            following=self.following,
            streaming=self.pg_status.get("streaming_from") == self.following and self.following is not None,
            not_streaming_for=nsf,
            fenced=self.fenced,
        )

    def set_error(self, text: str) -> None:
        # the status document keeps its head (readers refuse strings over model.MAX_STATUS_STRING)
        short = text if len(text) <= 2000 else text[:1990] + " [...]"
        if short and short != self.error:
            logger.error(text)
        self.error = short

    def main_loop(self) -> None:
        # The cluster data is re-read when the watch on it reports a change, and at least every
        # REREAD_EVERY loops as a safety net: reading it every loop made each keeper's store traffic
        # grow with the size of the cluster.
        changed, ok, last_read = True, False, 0.0
        while not self.stopping.is_set():
            stale = self.cd_read_at < self.fence_lifted_at
            if changed or not ok or stale or time.monotonic() - last_read >= REREAD_EVERY * self.spec.sleep_interval:
                try:
                    ok = self.read_cd()
                    last_read = time.monotonic()
                except StoreError as exc:
                    self.set_error(f"cannot read the cluster data: {exc}")
                    self.stopping.wait(self.spec.sleep_interval)
                    continue
            if ok:
                try:
                    self.step()
                except (PgError, psycopg2.Error, OSError) as exc:
                    self.set_error(f"{self.last_action[0]} failed: {str(exc).strip()}")
            self.reload_renewed_certificate()
            try:
                changed = self.store.wait(self.keys.clusterdata, self.cd_rev, self.spec.sleep_interval)
            except StoreError:
                changed = True
                self.stopping.wait(self.spec.sleep_interval)

    def step(self) -> None:
        if self.cd_read_at < self.fence_lifted_at:
            return  # read before our lease lapsed: the main loop reads it again first
        cd = self.cd
        want: KeeperSpec | None = cd.keepers.get(self.uid) if cd else None
        follow_addr = None
        if cd and want and want.role == ROLE_REPLICA and want.follow and want.follow in cd.keepers:
            follow_addr = cd.keepers[want.follow].address or None
        rewind_after = max(5.0, 2 * self.spec.fail_interval)
        action = kd.decide(want, cd.uid if cd else None, follow_addr, self.local(), rewind_after,
                           cd.spec.replaced_clusters if cd else ())
        if (action.kind, action.reason) != self.last_action:
            quiet = action.kind in (kd.WAIT, kd.RECONCILE_PRIMARY, kd.RECONCILE_REPLICA)
            (logger.debug if quiet and not self.last_action[0] == "" else logger.info)(
                "%s: %s", action.kind.replace("_", " "), action.reason)
        self.last_action = (action.kind, action.reason)
        ACTIONS[action.kind](self, action, want, follow_addr)
        if action.kind != kd.REFUSE:
            self.error = ""

    # ================================================================== run
    def run(self) -> None:
        self.pg.prepare_dirs()
        self.load_state()
        if self.pg.running() and self.pg.proc is None:
            logger.info("stopping a PostgreSQL left running by an earlier keeper process: the sentinel decides "
                        "its role afresh")
            self.pg.stop("fast", timeout=30)
        if self.args.api_port:
            self.api = ApiServer(self.args.api_listen_address, self.args.api_port, self.api_routes())
            self.api.start()
        threading.Thread(target=self.fence_loop, name="fence", daemon=True).start()
        threading.Thread(target=self.lease_loop, name="lease", daemon=True).start()
        threading.Thread(target=self.status_loop, name="status", daemon=True).start()
        if self.backup_cfg is not None:
            threading.Thread(target=self.backup_loop, name="backup", daemon=True).start()
        logger.info("keeper %s starting: data %s, PostgreSQL %s, advertised %s", self.uid, self.data_dir,
                    self.pg.version() or "(no data yet)", self.advertise)
        # nothing to decide before we hold a lease: without one PostgreSQL may not run as primary
        while not self.stopping.is_set() and not self.lease.id:
            self.stopping.wait(0.05)
        try:
            self.main_loop()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.stopping.set()
        self.report_soon.set()
        with self.lock:
            try:
                self.pg.stop("fast", timeout=30)
            except PgError as exc:
                logger.error("stopping PostgreSQL: %s", exc)
        try:
            self.lease.revoke()
        except StoreError:
            pass
        if self.api:
            self.api.stop()
        logger.info("keeper %s stopped", self.uid)


def lock_data_dir(data_dir: Path) -> Any:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "pgha.lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        cli.die(f"data directory {data_dir} is in use by another keeper (pid {holder})")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def main(argv: list[str] | None = None) -> int:
    p = cli.common_parser("pgha-keeper", "Own one PostgreSQL instance: initialize, replicate, promote, rewind, "
                                         "and report its state to the store.")
    p.add_flag("--uid", required=True, help="keeper id: lowercase letters, digits and _ (kept in the data dir)")
    p.add_flag("--data-dir", required=True, help="keeper data directory (PGDATA is <data-dir>/postgres)")
    p.add_flag("--pg-bin-path", default="/usr/lib/postgresql/15/bin", help="directory of the PostgreSQL binaries")
    p.add_flag("--pg-listen-address", default="127.0.0.1", help="address PostgreSQL listens on")
    p.add_flag("--pg-port", type=int, default=5432, help="PostgreSQL port")
    p.add_flag("--pg-advertise-address", help="address other members and proxies use (default: listen address)")
    p.add_flag("--pg-advertise-port", type=int, help="port other members and proxies use (default: --pg-port)")
    p.add_flag("--pg-su-username", default="postgres", help="PostgreSQL superuser name")
    p.add_flag("--pg-su-password-file", required=True, help="file holding the superuser password")
    p.add_flag("--pg-repl-username", default="repluser", help="PostgreSQL replication user name")
    p.add_flag("--pg-repl-password-file", required=True, help="file holding the replication password")
    p.add_flag("--pg-app-username", help="the applications' role: created by the primary (LOGIN, not a superuser) "
                                          "with its own database; none when not given")
    p.add_flag("--pg-app-password-file", help="file holding the application role's password (with --pg-app-username)")
    p.add_flag("--pg-app-database", help="the application role's database (default: named like the role)")
    p.add_flag("--pg-tls-cert-file", help="PostgreSQL's server certificate (PEM; SANs: the advertised address): "
                                           "TLS on, and TCP logins only over TLS (hostssl)")
    p.add_flag("--pg-tls-key-file", help="its private key (owned by the keeper's user 0600, or by root 0640)")
    p.add_flag("--pg-tls-ca-file", help="the CA that signed every member's certificate: connections to other members "
                                         "use sslmode=verify-full against it")
    p.add_flag("--api-listen-address", default="127.0.0.1", help="address of the HTTP API")
    p.add_flag("--api-port", type=int, default=0, help="port of the HTTP API (/health /primary /replica /metrics); "
                                                       "0 disables it")
    p.add_flag("--can-be-master", type=cli.parse_bool, default=True, help="may this keeper become primary")
    p.add_flag("--backup-repo-path", help="pgBackRest repository (a directory; stanza = the cluster name): WAL "
                                          "archived there, backups on request (pghactl backup); none when not given")
    p.add_flag("--backup-bin", default="pgbackrest", help="the pgbackrest program")
    args = p.parse_args(argv)
    pglog.setup("keeper", args.log_level)
    logger.debug("open files limit: %d", cli.raise_open_files_limit())
    if os.geteuid() == 0:
        cli.die("refusing to run as root: PostgreSQL will not run as root. Run pgha-keeper as an unprivileged "
                "user that owns the data directory (for example: useradd --system pgha)")
    if not valid_uid(args.uid):
        cli.die(f"--uid {args.uid!r}: use 1-63 lowercase letters, digits or _")
    if not Path(args.pg_bin_path, "postgres").exists():
        cli.die(f"--pg-bin-path {args.pg_bin_path}: no postgres binary there")
    su_pw = read_password(args.pg_su_password_file, "--pg-su-password-file")
    repl_pw = read_password(args.pg_repl_password_file, "--pg-repl-password-file")
    if args.pg_su_username == args.pg_repl_username:
        cli.die("--pg-su-username and --pg-repl-username must differ: the replication role logs in over TCP, "
                "the superuser never does")
    app_pw = check_app_and_tls(args)
    if args.backup_repo_path and (why := repo_path_ok(args.backup_repo_path)):
        cli.die(f"--backup-repo-path {args.backup_repo_path}: {why}")
    data_dir = Path(args.data_dir)
    try:
        lock = lock_data_dir(data_dir)
    except OSError as exc:
        cli.die(f"--data-dir {data_dir}: {exc.strerror}")
    store = cli.store_or_die(args)
    keeper = Keeper(args, store, su_pw, repl_pw, app_pw)

    def stop(signum: int, frame: Any) -> None:
        keeper.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        keeper.run()
    except OSError as exc:
        cli.die(str(exc))
    finally:
        lock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
