"""The keeper's lease and its fence (part of ``pgha.keeper.main.Keeper``).

Two threads: the **lease** thread renews the keeper's lease (``pgha.store.lease.Lease``) every
LEASE_TICK, each attempt bounded by a budget well inside the TTL the server granted; the **fence**
timer, on its own clock, kills a PostgreSQL that runs as primary once the lease's deadline passes
(``fence_margin`` before the server can expire it, counted from the last renewal *sent* and the TTL
the server *granted*), and keeps it down until the lease is renewed; the lease thread enforces the
same fence before each renewal, so a lapse is never hidden by a new grant. The fence timer never
waits on a store request or on the keeper's lock, so a store that hangs cannot delay it: the
sentinel acts on the lease's expiry only after that.
"""

from __future__ import annotations

import logging
import math
import time

from pgha.keeper.pg import PgError
from pgha.store import StoreError
from pgha.store.lease import fence_margin

logger = logging.getLogger("pgha.keeper")

LEASE_TICK = 0.5  # seconds between two lease renewals (at most sleep_interval)
FENCE_TICK = 0.05  # the fence timer's longest sleep


class Fencing:
    """Lease renewal and the fence timer; uses the Keeper's lease, pg, spec and stopping event."""

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
            self.enforce_fence()
            left = self.lease.deadline() - time.monotonic()
            self.stopping.wait(min(FENCE_TICK, left) if left > 0.001 else FENCE_TICK)

    def enforce_fence(self) -> None:
        """Kill a PostgreSQL running as primary while the lease may have lapsed. Called by the fence
        timer and, before each renewal, by the lease thread: whichever observes the lapse first acts,
        so a keeper that was frozen past its deadline kills its primary before a new lease can hide
        the lapse (the lease thread re-registering first once left it running until the main loop
        stopped it)."""
        if self.update_fence():
            age = self.lease.age()
            self.kill_primary("could not renew our lease for %.1fs (granted ttl %ss): killing PostgreSQL now, a "
                              "primary without a live lease must not accept writes",
                              age if age is not None else -1, self.lease.ttl)

    def kill_primary(self, why: str, *args: object) -> None:
        """Kill PostgreSQL when it runs as primary, logging ``why`` (a format with ``args``)."""
        if self.pg.running() and not self.pg.is_standby_configured():
            logger.error("FENCING: " + why, *args)
            self.phase = "fenced"
            try:
                self.pg.kill()
            except PgError as exc:
                logger.error("fencing: %s", exc)

    def lease_lost(self) -> None:
        """The server no longer knows our lease (``Lease.on_lost``, before a new grant): it expired
        (the fence timer has killed a primary already) or the leading sentinel revoked it, having
        confirmed a crash (``pgha.sentinel.crash``) and failing over now. A primary still running
        is killed before we register again: another keeper may be promoted meanwhile."""
        try:
            self.kill_primary("our lease is gone on the server (revoked by the leading sentinel, which takes us for "
                              "crashed and fails over, or expired): killing PostgreSQL before registering again")
        except Exception as exc:  # noqa: BLE001 - the lease thread must live to register again
            logger.error("fencing after the lease was lost: %s", exc)

    def renew(self) -> None:
        """One renewal attempt. A new lease (the first one, one after the old one expired on the
        server, or one at a changed TTL) gets our status at once, and a superseded lease is revoked
        only once the status is under the new one."""
        self.enforce_fence()  # a lapse (a freeze, a stalled thread) is acted on before a new grant
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

    def lease_loop(self) -> None:
        """Renew the lease every LEASE_TICK (each renewal first enforces the fence, as the timer does)."""
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
