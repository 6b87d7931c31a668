"""Keeping the store's leader off the primary's host: the choice (a table) and the move (real etcd)."""

from __future__ import annotations

import time

import pytest

from pgha.sentinel.placement import store_leader_move
from pgha.store.etcd import EtcdStore


def m(host: str, member: str, leader: str | None = "a", healthy: bool = True) -> dict:
    return {"endpoint": f"http://{host}:12379", "member_id": member, "leader": leader, "healthy": healthy}


CASES = [
    ("leader on the primary's host moves to the first member elsewhere",
     [m("10.0.0.11", "a"), m("10.0.0.12", "b"), m("10.0.0.13", "c")], "10.0.0.11:5433", "b"),
    ("leader already elsewhere: nothing", [m("10.0.0.11", "a", "b"), m("10.0.0.12", "b", "b")], "10.0.0.11:5433", None),
    ("every member on the primary's host (one machine): nothing",
     [m("127.0.0.1", "a"), m("127.0.0.1", "b")], "127.0.0.1:5433", None),
    ("an unhealthy member elsewhere is not chosen",
     [m("10.0.0.11", "a"), m("10.0.0.12", "b", healthy=False), m("10.0.0.13", "c")], "10.0.0.11:5433", "c"),
    ("members disagree on the leader: nothing", [m("10.0.0.11", "a", "a"), m("10.0.0.12", "b", "b")],
     "10.0.0.11:5433", None),
    ("no leader: nothing", [m("10.0.0.11", "a", None), m("10.0.0.12", "b", None)], "10.0.0.11:5433", None),
    ("unknown primary address: nothing", [m("10.0.0.11", "a"), m("10.0.0.12", "b")], "", None),
    ("IPv6 addresses", [{"endpoint": "http://[fd00::11]:12379", "member_id": "a", "leader": "a", "healthy": True},
                        {"endpoint": "http://[fd00::12]:12379", "member_id": "b", "leader": "a", "healthy": True}],
     "[fd00::11]:5433", "b"),
]


@pytest.mark.parametrize("members,primary,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_store_leader_move(members, primary, want) -> None:
    target, why = store_leader_move(members, primary)
    assert target == want, why


@pytest.mark.integration
def test_move_leader_hands_etcd_leadership_over(etcd_factory) -> None:
    etcd = etcd_factory(3)
    store = EtcdStore(etcd.endpoints, timeout=2)
    try:
        before = store.members()
        leader = before[0]["leader"]
        target = next(x["member_id"] for x in before if x["member_id"] != leader)
        store.move_leader(target)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = {x["leader"] for x in store.members() if x["healthy"]}
            if now == {target}:
                break
            time.sleep(0.1)
        assert now == {target}
    finally:
        store.close()
