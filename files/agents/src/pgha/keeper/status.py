"""What the keeper reports (part of ``pgha.keeper.main.Keeper``): the **status** thread collects
PostgreSQL's status and publishes it under the keeper's lease every ``sleep_interval``, whatever the
main loop is doing, and every ``TRANSITION_TICK`` while a transition names this keeper (the sentinel
waits on what it reports: a switchover's target has received the final WAL, say); actions that
change the role publish at once (``wake_heartbeat``)."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import replace
from typing import Any

import psycopg2

from pgha.keeper.pg import PgError
from pgha.model import ROLE_NONE, ROLE_PRIMARY, ROLE_REPLICA, KeeperStatus, lsn_to_int
from pgha.store import StoreError

logger = logging.getLogger("pgha.keeper")

TRANSITION_TICK = 0.02  # seconds between two status reports while a transition names this keeper


class Reporting:
    """Collecting and publishing the keeper's status; uses the Keeper's pg, lease and store."""

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
            pg_tls=self.pg.cfg.tls,
            roles_ready=self.roles_ensured,
            checkpointed_for=self.checkpointed_for,
            promote_called_at=self.promote_times[0],
            promoted_at=self.promote_times[1],
            backup=self.backup_state,
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

    def report(self) -> None:
        """Collect PostgreSQL's status and publish it under our lease."""
        with self.collect_lock:
            st = self.collect()
            self.status = st
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
            left = self.report_interval() - (time.monotonic() - started)
            if left > 0 and not self.stopping.is_set():
                self.report_soon.wait(left)
            self.report_soon.clear()

    def report_interval(self) -> float:
        if self.named_in(self.cd):
            return min(TRANSITION_TICK, self.spec.sleep_interval)
        return self.spec.sleep_interval

    def named_in(self, cd: Any) -> bool:
        """Whether the transition of cluster data ``cd`` (None: none read) names this keeper."""
        t = cd.transition if cd is not None else None
        return t is not None and self.uid in (t.old, t.new)

    def wake_heartbeat(self) -> None:
        """Publish our status now (after a promotion or a role change) instead of at the next tick."""
        try:
            self.report()
        except StoreError:
            pass

    def replica_lag(self) -> int | None:
        st = self.pg_status
        if not st or not st.get("in_recovery"):
            return None
        latest, replay = st.get("latest_end_lsn"), st.get("replay_lsn")
        if latest is None or replay is None:
            return None
        return max(0, latest - replay)
