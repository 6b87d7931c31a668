"""The leading sentinel's reading of the store (Sentinel.snapshot) against hostile documents,
on the in-memory store: what decide() gets to see."""

from __future__ import annotations

import logging

from pgha.ctl import Ctl
from pgha.model import KeeperStatus, ProxyStatus, keys
from pgha.sentinel.main import Sentinel
from pgha.store.memory import MemoryStore

KEYS = keys("pgha", "main")


def sentinel_with(store: MemoryStore) -> Sentinel:
    Ctl(store, "pgha", "main").init({})
    return Sentinel(store, "pgha", "main", "s1")


def test_status_documents_without_a_lease_or_under_another_uid_are_ignored_and_logged_once(caplog) -> None:
    store = MemoryStore()
    s = sentinel_with(store)
    lease, _ = store.grant_lease(10)
    store.put(KEYS.keeper("k1"), KeeperStatus(uid="k1", healthy=True).dumps(), lease=lease)
    # written by hand: no lease (a proxy whose acknowledgement a failover would wait for, for ever) ...
    store.put(KEYS.proxy("p9"), ProxyStatus(uid="p9", generation=1).dumps())
    store.put(KEYS.keeper("k2"), KeeperStatus(uid="k2", healthy=True).dumps())
    # ... or under the key of another uid (a second copy of the primary that would outlive its lease)
    store.put(KEYS.keeper("k3"), KeeperStatus(uid="k1", healthy=True).dumps(), lease=lease)
    with caplog.at_level(logging.WARNING, logger="pgha.sentinel"):
        for _ in range(3):
            snap, _, _ = s.snapshot()
            assert snap is not None
            assert set(snap.keepers) == {"k1"} and snap.keeper_leases == {"k1": lease}
            assert snap.proxies == {}
    lines = [r.getMessage() for r in caplog.records]
    assert sum("proxies/p9" in x and "not attached to a lease" in x for x in lines) == 1, lines
    assert sum("keepers/k2" in x for x in lines) == 1 and sum("keepers/k3" in x and "'k1'" in x for x in lines) == 1


def test_a_malformed_command_is_removed_and_a_good_one_kept() -> None:
    store = MemoryStore()
    s = sentinel_with(store)
    store.put(KEYS.command("switchover"), "[]")
    store.put(KEYS.command("drain/k1"), '{"format_version": 1, "drained": false}')
    snap, _, _ = s.snapshot()
    assert snap is not None and list(snap.commands) == ["drain/k1"] and snap.commands["drain/k1"].drained is False
    assert store.get(KEYS.command("switchover")) is None
    assert store.get(KEYS.command("drain/k1")) is not None  # the leader consumes it when it acts on it
