"""pgha-keeper: owns one PostgreSQL instance and makes it what the sentinel wants.

Four threads:

* the **main loop** reads the desired cluster data, asks ``keeper.decide.decide()`` what to do
  with the local PostgreSQL and does it (initdb, clone, rewind, start, promote, reconfigure, stop);
  these actions can take long;
* the **lease** thread renews the keeper's lease (``pgha.store.lease.Lease``) every half second,
  each attempt bounded by a budget well inside the TTL the server granted;
* the **status** thread collects PostgreSQL's status and publishes it under the lease every
  ``sleep_interval``, whatever the main loop is doing;
* the **fence** timer is the third fencing layer, on its own clock: once the lease's deadline
  passes (``fence_margin`` before the server can expire it, counted from the last renewal *sent*
  and the TTL the server *granted*) it kills a PostgreSQL that runs as primary, and keeps it down
  until the lease is renewed. It never waits on a store request or on the keeper's lock, so a store
  that hangs cannot delay it: the sentinel acts on the lease's expiry only after that.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2

from pgha import cli, kube, log as pglog
from pgha.http import ApiServer, prometheus
from pgha.keeper import decide as kd
from pgha.keeper.pg import PgConfig, PgError, Postgres, sync_standby_names
from pgha.model import (
    ROLE_NONE,
    ROLE_PRIMARY,
    ROLE_REPLICA,
    ClusterData,
    FormatError,
    KeeperSpec,
    KeeperStatus,
    keys,
    lsn_to_int,
)
from pgha.spec import Spec, default, valid_uid
from pgha.store import Store, StoreError
from pgha.store.lease import Lease, fence_margin

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


LEASE_TICK = 0.5  # seconds between two lease renewals (at most sleep_interval)
FENCE_TICK = 0.05  # the fence timer's longest sleep

# Loops between two reads of unchanged cluster data. The watch starts right after the revision
# read, so it cannot miss a change (a compaction is reported as one): this is only a safety net.
# Every read costs the size of the cluster data, which grows with the cluster; 5 (2.5 s) made each
# keeper's store traffic grow with the number of keepers (bench/results/scale-20261127T084000Z.json).
REREAD_EVERY = 60

# A hot standby refuses to start when one of these is lower than on its primary. Replicas run
# max(spec, the primary's running value); a lowered value reaches them after the primary restarts.
HOT_STANDBY_PARAMETERS = {"max_connections": 100, "max_worker_processes": 8, "max_prepared_transactions": 0,
                          "max_locks_per_transaction": 64}


def read_password(path: str, flag: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        cli.die(f"{flag} {path}: {exc.strerror}")
    pw = text.rstrip("\r\n")
    if not pw:
        cli.die(f"{flag} {path}: the file is empty")
    return pw


class Keeper:
    def __init__(self, args: Any, store: Store, su_password: str, repl_password: str) -> None:
        self.args = args
        self.uid: str = args.uid
        self.store = store
        self.keys = keys(args.store_prefix, args.cluster_name)
        self.data_dir = Path(args.data_dir)
        self.pg = Postgres(PgConfig(bin_path=args.pg_bin_path, data_dir=self.data_dir,
                                    listen_address=args.pg_listen_address, port=args.pg_port,
                                    su_username=args.pg_su_username, su_password=su_password,
                                    repl_username=args.pg_repl_username, repl_password=repl_password))
        self.advertise = f"{args.pg_advertise_address or args.pg_listen_address}:{args.pg_advertise_port or args.pg_port}"
        self.boot_id = uuid.uuid4().hex[:12]
        self.spec: Spec = default()
        self.cd: ClusterData | None = None
        self.cd_rev = 0
        self.lock = threading.RLock()  # held while starting or stopping PostgreSQL
        self.collect_lock = threading.Lock()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        # lease and fencing (see the module doc)
        self.lease = Lease(store)
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
        self.primary_minimums: dict[str, int] = {}  # hot-standby parameters of the primary we follow
        self.role_labels = kube.RoleLabels()  # Kubernetes: pgha.io/role on our pod; never blocks

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

    # ================================================================== lease and fencing
    def ttl(self) -> int:
        """The lease TTL to ask for: the spec's fail_interval in whole seconds (at least 2)."""
        return max(2, math.ceil(self.spec.fail_interval))

    def update_fence(self) -> bool:
        """Make ``fenced`` follow the lease; returns it. Called by the fence timer and after each
        renewal. Only reads the clock and the lease: never blocks."""
        with self._fence_lock:
            lapsed = self.lease.lapsed()
            if lapsed and not self.fenced:
                self.fenced = True
                self._lapse_logged = True
                age = self.lease.age()
                logger.warning("lease lapsed (last renewal sent %.1fs ago, granted ttl %ss, deadline %.1fs before "
                               "the server may expire it): PostgreSQL must not run as primary until it is renewed",
                               age if age is not None else -1, self.lease.ttl, fence_margin(self.lease.ttl))
            elif not lapsed and self.fenced:
                self.fenced = False
                # what we read before the lapse may be out of date (a failover happened meanwhile, say):
                # nothing is done on it until the cluster data has been read again
                self.fence_lifted_at = time.monotonic()
                if self._lapse_logged:
                    self._lapse_logged = False
                    logger.info("lease renewed: fencing lifted (the sentinel decides our role again)")
            return self.fenced

    def fence_loop(self) -> None:
        """The fence timer (see the module doc): wakes every FENCE_TICK at most."""
        while not self.stopping.is_set():
            if self.update_fence() and self.pg.running() and not self.pg.is_standby_configured():
                age = self.lease.age()
                logger.error("FENCING: could not renew our lease for %.1fs (granted ttl %ss): killing PostgreSQL "
                             "now, a primary without a live lease must not accept writes",
                             age if age is not None else -1, self.lease.ttl)
                self.phase = "fenced"
                try:
                    self.pg.kill()
                except PgError as exc:
                    logger.error("fencing: %s", exc)
            left = self.lease.deadline() - time.monotonic()
            self.stopping.wait(min(FENCE_TICK, left) if left > 0.001 else FENCE_TICK)

    def renew(self) -> None:
        """One renewal attempt. A new lease (the first one, one after the old one expired on the
        server, or one at a changed TTL) gets our status at once, and a superseded lease is revoked
        only once the status is under the new one."""
        previous, ttl = self.lease.id, self.ttl()
        granted = self.lease.renew(ttl)
        if granted:
            if previous and self.lease.superseded:
                logger.info("lease ttl %ss -> %ss (fail_interval changed): status moves to a new lease",
                            self.lease.superseded_ttl, self.lease.ttl)
            elif previous:
                logger.warning("our lease expired on the server: registering again with a new lease")
            self._last_put = ""
        self.update_fence()
        if self.lease.superseded:
            self.wake_heartbeat()
            if self._last_put:
                self.lease.release_superseded()

    # ================================================================== status
    def collect(self) -> KeeperStatus:
        running = self.pg.running()
        st: dict[str, Any] = {}
        healthy = False
        if running:
            try:
                st = self.pg.status()
                healthy = True
            except psycopg2.Error as exc:
                logger.debug("status query failed: %s", str(exc).strip())
        self.pg_status = st if healthy else {}
        role = ROLE_NONE
        if healthy:
            role = ROLE_REPLICA if st["in_recovery"] else ROLE_PRIMARY
        streaming_from = st.get("streaming_from")
        if role == ROLE_REPLICA and (streaming_from is None or streaming_from != self.following):
            if self.not_streaming_since is None:
                self.not_streaming_since = time.monotonic()
        else:
            self.not_streaming_since = None
        final_lsn = None
        system_id = st.get("system_id")
        if not running and self.pg.initialized():
            cdata = self.controldata()
            system_id = cdata.get("Database system identifier")
            if cdata.get("Database cluster state") == "shut down":
                final_lsn = lsn_to_int(cdata.get("Latest checkpoint location"))
        return KeeperStatus(
            uid=self.uid,
            cluster_uid=self.local_state.get("cluster_uid"),
            boot_id=self.boot_id,
            address=self.advertise,
            api_address=f"{self.args.api_listen_address}:{self.args.api_port}" if self.args.api_port else "",
            host=socket.gethostname(),
            data_dir=str(self.data_dir),
            pid=os.getpid(),
            can_be_master=self.args.can_be_master,
            pg_running=running,
            healthy=healthy,
            role=role,
            system_id=system_id,
            timeline=st.get("timeline"),
            lsn=st.get("lsn"),
            replay_lsn=st.get("replay_lsn"),
            streaming_from=streaming_from,
            synchronous_standbys=st.get("synchronous_standbys"),
            replication=st.get("replication", ()),
            final_lsn=final_lsn,
            pending_restart=bool(st.get("pending_restart")),
            pg_version=st.get("pg_version") or self.pg.version(),
            phase=self.phase,
            error=self.error,
            reported_at=time.time(),
            desired_role=self.desired_role(),
            lease_ttl=self.lease.ttl,
        )

    def desired_role(self) -> str:
        """The role the cluster data we last read gives us ("" when it names us not at all)."""
        cd = self.cd
        want = cd.keepers.get(self.uid) if cd else None
        return want.role if want else ""

    def controldata(self) -> dict[str, str]:
        try:
            mtime = (self.pg.pgdata / "global" / "pg_control").stat().st_mtime
        except OSError:
            return {}
        if self._controldata_cache and self._controldata_cache[0] == mtime:
            return self._controldata_cache[1]
        try:
            data = self.pg.controldata()
        except PgError:
            return {}
        self._controldata_cache = (mtime, data)
        return data

    def publish(self, st: KeeperStatus) -> None:
        body = replace(st, reported_at=0.0).dumps()
        now = time.monotonic()
        if body == self._last_put and now - self._last_put_at < 5 * self.spec.sleep_interval:
            return
        self.store.put(self.keys.keeper(self.uid), st.dumps(), lease=self.lease.id)
        self._last_put, self._last_put_at = body, now

    def lease_loop(self) -> None:
        """Renew the lease every LEASE_TICK; fencing is the fence timer's job, not this thread's."""
        problem = ""
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.renew()
                if problem:
                    logger.info("store reachable again")
                    problem = ""
            except StoreError as exc:
                if str(exc) != problem:
                    logger.warning("cannot renew our lease: %s", exc)
                    problem = str(exc)
            left = min(LEASE_TICK, self.spec.sleep_interval) - (time.monotonic() - started)
            if left > 0:
                self.stopping.wait(left)

    def report(self) -> None:
        """Collect PostgreSQL's status and publish it under our lease."""
        with self.collect_lock:
            st = self.collect()
            self.status = st
        self.role_labels.observe(st.role)
        if self.lease.id and not self.fenced:
            self.publish(st)

    def status_loop(self) -> None:
        problem = ""
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.report()
                problem = ""
            except StoreError as exc:
                if str(exc) != problem:
                    logger.warning("cannot publish our status: %s", exc)
                    problem = str(exc)
            left = self.spec.sleep_interval - (time.monotonic() - started)
            if left > 0:
                self.stopping.wait(left)

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
        if text and text != self.error:
            logger.error(text)
        self.error = text

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
        action = kd.decide(want, cd.uid if cd else None, follow_addr, self.local(), rewind_after)
        if (action.kind, action.reason) != self.last_action:
            quiet = action.kind in (kd.WAIT, kd.RECONCILE_PRIMARY, kd.RECONCILE_REPLICA)
            (logger.debug if quiet and not self.last_action[0] == "" else logger.info)(
                "%s: %s", action.kind.replace("_", " "), action.reason)
        self.last_action = (action.kind, action.reason)
        handler = getattr(self, "do_" + action.kind)
        handler(action, want, follow_addr)
        if action.kind != kd.REFUSE:
            self.error = ""

    # ================================================================== actions
    def pg_parameters(self, primary: bool, want: KeeperSpec | None) -> dict[str, str]:
        params = dict(DEFAULT_PG_PARAMETERS)
        params.update(self.spec.pg_parameters)
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
        return params

    def pg_hba(self) -> list[str]:
        su, repl = self.args.pg_su_username, self.args.pg_repl_username
        lines = [
            "# Written by pgha-keeper. Extra rules come from the spec's pg_hba (pghactl update).",
            "# The Unix socket directory is private to the keeper's OS user (0700): trust is safe there.",
            "local all all trust",
            "local replication all trust",
            f"host replication {repl} 0.0.0.0/0 scram-sha-256",
            f"host replication {repl} ::/0 scram-sha-256",
            f"host all {su} 0.0.0.0/0 scram-sha-256",
            f"host all {su} ::/0 scram-sha-256",
        ]
        lines += list(self.spec.pg_hba) or ["host all all 0.0.0.0/0 scram-sha-256", "host all all ::/0 scram-sha-256"]
        return lines

    def conninfo(self, address: str) -> str:
        host, port = address.rsplit(":", 1)
        return (f"host={host} port={port} user={self.args.pg_repl_username} passfile={self.pg.passfile} "
                f"application_name={self.uid} connect_timeout=2 keepalives_idle=5 keepalives_interval=2 "
                f"keepalives_count=3")

    def learn_primary_minimums(self, address: str) -> None:
        """Read the hot-standby-sensitive settings the primary runs with (before a replica starts)."""
        host, port = address.rsplit(":", 1)
        try:
            c = psycopg2.connect(host=host, port=int(port), user=self.args.pg_su_username, dbname="postgres",
                                 connect_timeout=2, passfile=str(self.pg.passfile), application_name="pgha-keeper")
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

    def do_initdb(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        assert self.cd is not None
        with self.lock:
            self.pg.stop("immediate")
        self.save_state(cluster_uid=self.cd.uid, initializing=True)
        self.phase = "initdb"
        self.pg.initdb()
        self.configure(want, True, None)
        self.start()
        self.pg.create_roles()
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
        self.pg.create_roles()
        self.save_state(cluster_uid=self.cd.uid, initializing=False)
        logger.info("adopted the existing data directory as primary")

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
        t0 = time.monotonic()
        self.pg.promote()
        self.following = None
        logger.info("promoted to primary in %.3fs", time.monotonic() - t0)
        self.wake_heartbeat()
        self.reconcile_primary(want)

    def reconcile_primary(self, want: KeeperSpec | None) -> None:
        for change in self.pg.reconcile_slots(self.wanted_slots()):
            logger.info("%s", change)

    def do_reconcile_primary(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        self.phase = "running"
        if self.configure(want, True, None):
            self.pg.reload()
            logger.info("configuration changed: reloaded (synchronous_standby_names=%r)",
                        sync_standby_names(want.synchronous_standbys) if want else "")
            self.wake_heartbeat()
        self.reconcile_primary(want)

    def do_basebackup(self, action: kd.Action, want: KeeperSpec | None, follow_addr: str | None) -> None:
        assert self.cd is not None and follow_addr
        with self.lock:
            self.pg.stop("fast")
        self.save_state(cluster_uid=self.cd.uid, initializing=True)
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

    def source_is_primary(self, address: str) -> bool:
        host, port = address.rsplit(":", 1)
        try:
            c = psycopg2.connect(host=host, port=int(port), user=self.args.pg_su_username, dbname="postgres",
                                 connect_timeout=2, passfile=str(self.pg.passfile), application_name="pgha-keeper")
        except psycopg2.Error:
            return False
        try:
            cur = c.cursor()
            cur.execute("SELECT pg_is_in_recovery()")
            return not cur.fetchone()[0]
        except psycopg2.Error:
            return False
        finally:
            c.close()

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

    def wake_heartbeat(self) -> None:
        """Publish our status now (after a promotion or a role change) instead of at the next tick."""
        try:
            self.report()
        except StoreError:
            pass

    # ================================================================== HTTP API
    def api_routes(self) -> dict[str, Any]:
        def health(q: dict[str, list[str]]) -> tuple[int, str, str]:
            st = self.status
            if st.healthy:
                return 200, "application/json", json.dumps({"healthy": True, "role": st.role})
            return 503, "application/json", json.dumps({"healthy": False, "phase": self.phase, "error": self.error})

        def primary(q: dict[str, list[str]]) -> tuple[int, str, str]:
            cd = self.cd
            ok = bool(cd and cd.primary == self.uid and self.status.healthy and self.status.role == ROLE_PRIMARY
                      and not self.fenced and not (cd.transition and cd.transition.new == self.uid
                                                   and cd.transition.stage == "fence"))
            return (200 if ok else 503), "application/json", json.dumps({"primary": ok})

        def replica(q: dict[str, list[str]]) -> tuple[int, str, str]:
            st = self.status
            lag = self.replica_lag()
            ok = st.healthy and st.role == ROLE_REPLICA and st.streaming_from is not None
            if ok and "max_lag" in q:
                try:
                    limit = int(q["max_lag"][0])
                except ValueError:
                    return 400, "text/plain", "max_lag must be a number of bytes\n"
                ok = lag is not None and lag <= limit
            return (200 if ok else 503), "application/json", json.dumps({"replica": ok, "lag": lag})

        def metrics(q: dict[str, list[str]]) -> tuple[int, str, str]:
            st = self.status
            labels = {"keeper": self.uid}
            m = [
                ("pgha_keeper_up", "gauge", "PostgreSQL is running and answering", labels, 1.0 if st.healthy else 0.0),
                ("pgha_keeper_is_primary", "gauge", "1 when running as primary", labels,
                 1.0 if st.role == ROLE_PRIMARY else 0.0),
                ("pgha_keeper_is_replica", "gauge", "1 when running as replica", labels,
                 1.0 if st.role == ROLE_REPLICA else 0.0),
                ("pgha_keeper_timeline", "gauge", "current timeline", labels, float(st.timeline or 0)),
                ("pgha_keeper_lsn_bytes", "gauge", "current WAL position in bytes", labels, float(st.lsn or 0)),
                ("pgha_keeper_replication_lag_bytes", "gauge", "replay lag behind the upstream (replicas)", labels,
                 float(self.replica_lag() or 0)),
                ("pgha_keeper_store_contact_age_seconds", "gauge", "seconds since the lease was last renewed",
                 labels, self.lease.age() if self.lease.age() is not None else -1.0),
                ("pgha_keeper_fenced", "gauge", "1 when the keeper fenced itself (lease lapsed)", labels,
                 1.0 if self.fenced else 0.0),
            ]
            return 200, "text/plain; version=0.0.4", prometheus(m)

        return {"/health": health, "/primary": primary, "/replica": replica, "/metrics": metrics}

    def replica_lag(self) -> int | None:
        st = self.pg_status
        if not st or not st.get("in_recovery"):
            return None
        latest, replay = st.get("latest_end_lsn"), st.get("replay_lsn")
        if latest is None or replay is None:
            return None
        return max(0, latest - replay)

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
    p.add_flag("--api-listen-address", default="127.0.0.1", help="address of the HTTP API")
    p.add_flag("--api-port", type=int, default=0, help="port of the HTTP API (/health /primary /replica /metrics); "
                                                       "0 disables it")
    p.add_flag("--can-be-master", type=cli.parse_bool, default=True, help="may this keeper become primary")
    args = p.parse_args(argv)
    pglog.setup("keeper", args.log_level)
    if os.geteuid() == 0:
        cli.die("refusing to run as root: PostgreSQL will not run as root. Run pgha-keeper as an unprivileged "
                "user that owns the data directory (for example: useradd --system pgha)")
    if not valid_uid(args.uid):
        cli.die(f"--uid {args.uid!r}: use 1-63 lowercase letters, digits or _")
    if not Path(args.pg_bin_path, "postgres").exists():
        cli.die(f"--pg-bin-path {args.pg_bin_path}: no postgres binary there")
    su_pw = read_password(args.pg_su_password_file, "--pg-su-password-file")
    repl_pw = read_password(args.pg_repl_password_file, "--pg-repl-password-file")
    if args.pg_su_username == args.pg_repl_username and su_pw != repl_pw:
        cli.die("--pg-su-username equals --pg-repl-username but the password files differ")
    data_dir = Path(args.data_dir)
    try:
        lock = lock_data_dir(data_dir)
    except OSError as exc:
        cli.die(f"--data-dir {data_dir}: {exc.strerror}")
    store = cli.store_from_args(args)
    keeper = Keeper(args, store, su_pw, repl_pw)

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
