"""The lease every agent holds (pgha.store.lease.Lease): deadlines from the TTL the server granted,
renewal inside a budget, re-grant on a TTL change; and the keeper's fence timer, which must act on
the deadline however long a store request blocks."""

from __future__ import annotations

import threading
import time

import pytest

from pgha.store import StoreError
from pgha.store.lease import Lease, fence_margin, renew_budget
from pgha.store.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class SlowStore(MemoryStore):
    """A store whose lease requests block, as a partitioned store does: each one takes ``delay``
    seconds or its budget, whichever is shorter, then fails."""

    def __init__(self, clock=time.monotonic) -> None:
        super().__init__(clock)
        self.delay = 0.0
        self.budgets: list[float | None] = []

    def _block(self, budget: float | None) -> None:
        self.budgets.append(budget)
        if self.delay:
            wait = self.delay if budget is None else min(self.delay, budget)
            time.sleep(wait)
            raise StoreError(f"store unreachable: no answer within {wait:.2f}s")

    def keepalive(self, lease: int, budget: float | None = None) -> int:
        self._block(budget)
        return super().keepalive(lease, budget)

    def grant(self, ttl: int, budget: float | None = None) -> int:
        self._block(budget)
        return super().grant(ttl, budget)



def fresh() -> tuple[Clock, MemoryStore, Lease]:
    """A lease on an in-memory store, both on a fake clock at 100 s."""
    clock = Clock()
    store = MemoryStore(clock)
    return clock, store, Lease(store, clock=clock)

def test_deadline_counts_from_the_renewal_sent_and_the_granted_ttl() -> None:
    clock = Clock()
    lease = Lease(MemoryStore(clock), clock=clock)
    assert lease.lapsed() and lease.deadline() == float("-inf")  # no lease yet
    assert lease.renew(3) is True
    assert lease.id and lease.ttl == 3
    assert lease.expires_at() == 103.0
    assert lease.deadline() == 103.0 - fence_margin(3) == 102.0
    clock.t = 101.5
    assert lease.renew(3) is False  # a keepalive, same lease
    assert lease.deadline() == 103.5
    clock.t = 103.6
    assert lease.lapsed()


def test_a_ttl_change_grants_a_new_lease_and_keeps_the_old_deadline_until_the_keys_moved() -> None:
    clock, store, lease = fresh()
    lease.renew(3)
    first = lease.id
    clock.t = 101.0
    assert lease.renew(8) is True  # the spec's fail_interval went from 3 to 8
    assert lease.id != first and lease.ttl == 8 and lease.superseded == first
    # keys are still under the old lease (TTL 3): its deadline holds
    assert lease.deadline() == 102.0
    store.put("/k", "status", lease=lease.id)
    lease.release_superseded()
    assert lease.superseded == 0 and not store.lease_alive(first)
    assert lease.deadline() == 101.0 + 8 - fence_margin(8)
    assert lease.renew(8) is False


def test_an_expired_lease_is_granted_again() -> None:
    clock, store, lease = fresh()
    lease.renew(2)
    first = lease.id
    clock.t = 110.0
    assert lease.renew(2) is True
    assert lease.id != first and lease.superseded == 0  # nothing left to move from the expired one


def test_a_lease_revoked_by_someone_else_is_reported_lost_before_a_new_grant() -> None:
    clock, store, _ = fresh()
    seen: list[tuple[int, bool]] = []
    lease = Lease(store, clock=clock, on_lost=lambda: seen.append((lease.id, lease.lapsed())))
    lease.renew(3)
    first = lease.id
    assert lease.renew(3) is False and seen == []  # a keepalive that worked: nothing lost
    store.revoke(first)  # the leading sentinel confirmed a crash
    assert lease.renew(3) is True and lease.id != first
    assert seen == [(0, True)]  # told while it had no lease, so nothing could be published under one
    lease.renew(4)  # a TTL change grants a new lease while the old one lives: nothing lost
    assert seen == [(0, True)]


def test_a_store_that_does_not_answer_loses_no_lease() -> None:
    store = SlowStore()
    seen: list[int] = []
    lease = Lease(store, on_lost=lambda: seen.append(1))
    lease.renew(3)
    store.delay = 0.05
    with pytest.raises(StoreError):
        lease.renew(3)
    assert seen == [] and lease.id


def test_a_failed_renewal_leaves_the_deadline_running() -> None:
    clock, store, lease = fresh()
    lease.renew(3)
    store.down = True
    clock.t = 101.0
    with pytest.raises(StoreError):
        lease.renew(3)
    assert lease.deadline() == 102.0 and lease.error


def test_renewal_budget_fits_inside_the_ttl() -> None:
    store = SlowStore()
    lease = Lease(store)
    lease.renew(3)
    assert store.budgets == [renew_budget(3)]
    assert renew_budget(3) * 2 < 3 - fence_margin(3)  # two attempts fit before fencing


def test_fence_timer_acts_on_the_deadline_while_a_renewal_blocks() -> None:
    """The partition bug: a renewal blocked on unreachable endpoints, and the fencing check only ran
    after it returned. The timer must fire at the deadline, not after the store answers."""
    store = SlowStore()
    lease = Lease(store)
    lease.renew(2)
    renewed = lease.renewed_at
    store.delay = 10.0  # every request now blocks (at most its budget)
    fired: list[float] = []
    stop = threading.Event()

    def renewer() -> None:
        while not stop.is_set():
            try:
                lease.renew(2)
            except StoreError:
                pass

    def fence_timer() -> None:  # what Keeper.fence_loop does, without PostgreSQL
        while not stop.is_set():
            if lease.lapsed():
                fired.append(time.monotonic())
                return
            stop.wait(0.05)

    threads = [threading.Thread(target=renewer, daemon=True), threading.Thread(target=fence_timer, daemon=True)]
    for t in threads:
        t.start()
    threads[1].join(timeout=10)
    stop.set()
    assert fired, "the fence timer never fired"
    assert renewed is not None
    late = fired[0] - (renewed + lease.ttl - fence_margin(lease.ttl))
    assert -0.01 <= late < 0.5, f"fenced {late:.2f}s after the deadline"
    assert fired[0] < renewed + lease.ttl, "fenced after the server could have expired the lease"
    assert all(b is not None and b <= renew_budget(2) for b in store.budgets)
