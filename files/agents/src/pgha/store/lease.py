"""A lease in the store, as the agent that holds it sees it: one object for keeper, sentinel and proxy.

Each agent writes its status (and the leading sentinel its leader key) under a lease of its own;
the key disappears when the lease expires on the server. An agent whose authority depends on that
key (a keeper running a primary, a proxy relaying to it) must stop using it before the server can
let the lease expire, because that is when the leading sentinel acts on its absence. What the
holder can know:

* the server renews the lease no earlier than the moment a keepalive (or the grant) was *sent*,
  and with the TTL the server *granted* (from the grant's answer, never from the current spec);
* so the server cannot expire it before ``renewed_at + ttl`` (``expires_at``). The holder acts
  ``margin`` seconds before that (``deadline``), which leaves time to stop PostgreSQL.

``renew(ttl)`` is one renewal attempt inside a time budget that fits well inside the TTL, however
many store endpoints there are; when the wanted TTL differs from the granted one it grants a new
lease at the new TTL (the holder puts its keys under it, then calls ``release_superseded()`` to
revoke the old one; until then ``deadline`` is the earlier of the two leases'). Checking the
deadline is the holder's job, on its own timer: never behind a store request that may block.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from pgha.store.base import Store, StoreError


def fence_margin(ttl: float) -> float:
    """How long before the earliest possible expiry a holder stops relying on its lease."""
    return min(1.0, ttl / 3)


def renew_budget(ttl: float) -> float:
    """Time allowed for one renewal attempt, over every store endpoint: a quarter of the TTL,
    so that several attempts fit before the fencing deadline (``ttl - fence_margin(ttl)``)."""
    return ttl / 4


class Lease:
    def __init__(self, store: Store, *, clock: Callable[[], float] = time.monotonic,
                 margin: Callable[[float], float] = fence_margin,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.store = store
        # called when a keepalive finds the lease gone on the server (expired, or revoked by someone
        # else), before a new one is granted: the holder stops what relied on it first
        self.on_lost = on_lost
        self._clock = clock
        self.margin = margin  # seconds before expires_at that the deadline falls, from the TTL
        self._lock = threading.Lock()  # the renewing thread writes, fencing timers read
        self.id = 0
        self.ttl = 0  # the TTL the server granted to ``id``
        self.asked = 0  # the TTL asked for (the server may grant more)
        self.renewed_at: float | None = None  # clock time the last successful grant/keepalive was sent
        self._superseded: tuple[int, float, int] | None = None  # (old id, its deadline, ttl) until keys moved
        self.error = ""  # why the last renewal failed ("" after a success)

    # ------------------------------------------------------------------ what the holder may rely on
    def expires_at(self) -> float:
        """The earliest clock time at which the server may have expired the lease (-inf: none)."""
        with self._lock:
            if not self.id or self.renewed_at is None:
                return float("-inf")
            return self.renewed_at + self.ttl

    def deadline(self) -> float:
        """The clock time after which the holder must not rely on the lease (-inf: no lease)."""
        with self._lock:
            if not self.id or self.renewed_at is None:
                return float("-inf")
            d = self.renewed_at + self.ttl - self.margin(self.ttl)
            if self._superseded is not None:
                d = min(d, self._superseded[1])
            return d

    def lapsed(self, now: float | None = None) -> bool:
        """Whether the deadline has passed (always True before the first grant)."""
        return (self._clock() if now is None else now) >= self.deadline()

    @property
    def superseded(self) -> int:
        """The lease a TTL change replaced, until ``release_superseded()`` (0: none)."""
        old = self._superseded
        return old[0] if old else 0

    @property
    def superseded_ttl(self) -> int:
        old = self._superseded
        return old[2] if old else 0

    def age(self) -> float | None:
        """Seconds since the last successful renewal was sent (None: never)."""
        return None if self.renewed_at is None else self._clock() - self.renewed_at

    # ------------------------------------------------------------------ renewing
    def renew(self, ttl: int) -> bool:
        """One renewal attempt: a keepalive, or a grant when there is no lease, it expired on the
        server or ``ttl`` differs from the granted TTL. Returns True when a new lease was granted
        (the holder must put its keys under ``id`` again). Raises StoreError when the store did not
        answer within ``renew_budget``; the lease is then left as it was (the deadline still runs)."""
        sent = self._clock()
        budget = renew_budget(min(ttl, self.ttl) if self.ttl else ttl)
        try:
            if self.id and self.asked == ttl:
                if self.store.keepalive(self.id, budget=budget) > 0:
                    with self._lock:
                        self.renewed_at = sent
                    self.error = ""
                    return False
                # expired or revoked on the server: its keys are gone already, nothing to move
                with self._lock:
                    self.id = 0
                if self.on_lost is not None:
                    self.on_lost()
            new_id, granted = self.store.grant_lease(ttl, budget=budget)
        except StoreError as exc:
            self.error = str(exc)
            raise
        with self._lock:
            if self.id and self._superseded is None:
                # still valid on the server: keep counting its deadline until the keys moved
                self._superseded = (self.id, self.renewed_at + self.ttl - self.margin(self.ttl)
                                    if self.renewed_at is not None else float("-inf"), self.ttl)
            self.id, self.ttl, self.asked, self.renewed_at = new_id, max(granted, 1), ttl, sent
        self.error = ""
        return True

    def release_superseded(self) -> None:
        """Revoke the lease a TTL change replaced, once the holder's keys are under the new one."""
        with self._lock:
            old, self._superseded = self._superseded, None
        if old is not None:
            try:
                self.store.revoke(old[0])
            except StoreError:
                pass  # it expires on its own; nothing is attached to it any more

    def revoke(self) -> None:
        """End the lease now (its keys disappear): a clean shutdown, or a holder that must leave."""
        with self._lock:
            lid, self.id, self.renewed_at = self.id, 0, None
            old, self._superseded = self._superseded, None
        for x in (lid, old[0] if old else 0):
            if x:
                self.store.revoke(x)

    def forget(self) -> None:
        """Drop the lease without telling the server (it will expire there)."""
        with self._lock:
            self.id, self.renewed_at, self._superseded = 0, None, None
