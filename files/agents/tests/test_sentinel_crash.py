"""Table tests of crash detection from positive evidence (pgha.sentinel.crash, pure), and of the
sentinel's probe against real sockets on loopback."""

from __future__ import annotations

import socket

import pytest

from pgha.model import KeeperStatus
from pgha.sentinel import crash
from pgha.sentinel.main import probe

R = crash.REFUSED
PG, API = ("10.0.0.1", 5432), ("10.0.0.1", 8008)


def ev(rounds, before=(7, 99), after=(7, 99), span=0.04, reached=("pg", "api")) -> crash.Evidence:
    return crash.Evidence(uid="k1", pg=PG, api=API, key_before=before, key_after=after, rounds=tuple(rounds), span=span,
                          reached=frozenset(reached))


@pytest.mark.parametrize("evidence, confirmed, why", [
    (ev([(R, R)] * 3), True, "PostgreSQL at 10.0.0.1:5432 and the keeper's API at 10.0.0.1:8008 refused all 6 "
                             "connections over 40 ms, its status key unchanged"),
    # one port answers: the keeper or PostgreSQL lives
    (ev([(R, R), ("accepted", R), (R, R)]), False, "not every connection was refused (accepted): only refusals count"),
    (ev([(R, "accepted")] * 3), False, "not every connection was refused (accepted): only refusals count"),
    # a frozen or partitioned machine does not answer at all: the lease path
    (ev([("timeout", "timeout")] * 3), False, "not every connection was refused (timeout): only refusals count"),
    (ev([(R, R), ("unreachable", R), (R, "timeout")]), False,
     "not every connection was refused (timeout, unreachable): only refusals count"),
    (ev([(R, R)] * 2), False, "2 probe rounds, 3 needed"),
    # the keeper restarted with a new identity (new lease), or published meanwhile
    (ev([(R, R)] * 3, after=(8, 100)), False,
     "its status key changed during the probes (the keeper is alive, or registered again)"),
    (ev([(R, R)] * 3, after=(8, 99)), False,
     "its status key changed during the probes (the keeper is alive, or registered again)"),
    (ev([(R, R)] * 3, after=None), False, "its status key is gone already (the lease path goes on)"),
    # refusals from endpoints this sentinel never reached under this lease: a firewall rejecting it,
    # an address it cannot reach; never a crash
    (ev([(R, R)] * 3, reached=()), False, "this sentinel never reached PostgreSQL and the keeper's API under the "
     "keeper's current lease (a firewall that rejects it, or an address it cannot reach, refuses from the start)"),
    (ev([(R, R)] * 3, reached=("api",)), False, "this sentinel never reached PostgreSQL under the keeper's current "
     "lease (a firewall that rejects it, or an address it cannot reach, refuses from the start)"),
])
def test_only_refusals_on_both_ports_with_the_status_key_unchanged_are_a_crash(evidence, confirmed, why) -> None:
    assert crash.confirm(evidence) == (confirmed, why)


def st(address: str, api: str, host: str = "db1") -> KeeperStatus:
    return KeeperStatus(uid="k1", address=address, api_address=api, host=host)


@pytest.mark.parametrize("status, sentinel_host, expected", [
    (st("10.0.0.1:5432", "0.0.0.0:8008"), "other", (PG, API)),
    (st("10.0.0.1:5432", "10.0.0.1:8008"), "other", (PG, API)),
    (st("[fd00::1]:5432", "[::]:8008"), "other", (("fd00::1", 5432), ("fd00::1", 8008))),
    (st("10.0.0.1:5432", ""), "other", None),  # no API: nothing to confirm with
    (st("10.0.0.1:5432", "127.0.0.1:8008"), "other", None),  # a loopback API seen from another machine
    (st("127.0.0.1:5432", "127.0.0.1:8008"), "other", None),
    (st("127.0.0.1:5432", "127.0.0.1:8008"), "db1", (("127.0.0.1", 5432), ("127.0.0.1", 8008))),
    (st("127.0.0.1:5432", "0.0.0.0:8008", host=""), "", None),  # unknown machine
    (st("nowhere", "0.0.0.0:8008"), "other", None),
    (st("0.0.0.0:5432", "0.0.0.0:8008"), "other", None),  # an unspecified address names no machine
    (st("10.0.0.1:5432", "[::]:8008"), "other", (PG, API)),
    (st("localhost:5432", "0.0.0.0:8008"), "other", None),
    (st("db1:5432", "localhost6:8008"), "other", None),
    (st("db1:5432", "0.0.0.0:8008"), "other", (("db1", 5432), ("db1", 8008))),
    (st("10.0.0.1:99999", "0.0.0.0:8008"), "other", None),
])
def test_where_the_prober_connects(status: KeeperStatus, sentinel_host: str, expected) -> None:
    assert crash.probe_targets(status, sentinel_host) == expected


def test_a_closed_port_is_refused_a_listening_one_accepted() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        assert probe(("127.0.0.1", port)) == "accepted"
    assert probe(("127.0.0.1", port)) == crash.REFUSED
    # a listener that never accepts still completes the handshake (the kernel's backlog): a
    # frozen process is not refused
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert probe(s.getsockname()) == "accepted"


class FakeProbe:
    """The prober's connection test, scripted: a result per address, changed by the test."""

    def __init__(self) -> None:
        self.results: dict[tuple[str, int], str] = {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, address: tuple[str, int], timeout: float = 0.25) -> str:
        self.calls.append(address)
        return self.results.get(address, "timeout")


def leading_sentinel():
    """A leading sentinel on an in-memory store whose primary keeper1 registered under a lease."""
    from pgha.model import keys
    from pgha.sentinel.main import Sentinel
    from pgha.store.memory import MemoryStore

    store = MemoryStore()
    s = Sentinel(store, "pgha", "main", "s1")
    s.lease.renew(3)
    store.cas(s.keys.leader, "s1", 0, lease=s.lease.id)
    s.leader = True
    lease = store.grant(3)
    st = KeeperStatus(uid="keeper1", address="10.0.0.1:5432", api_address="0.0.0.0:8008", host="db1", role="primary")
    store.put(keys("pgha", "main").keeper("keeper1"), st.dumps(), lease=lease)
    s.probe_target = ("keeper1", lease, st)
    return s, store, lease


def test_the_prober_revokes_the_lease_of_a_primary_it_reached_before_once_both_ports_refuse() -> None:
    s, store, lease = leading_sentinel()
    fake = FakeProbe()
    fake.results = {PG: "accepted", API: "accepted"}
    s.probe_primary(fake)  # both reached under this lease
    assert store.lease_alive(lease)
    fake.results = {PG: R, API: R}  # killed
    s.probe_primary(fake)
    assert not store.lease_alive(lease) and s.probe_target is None
    assert s.revoked["keeper1"].lease == lease and s.revoked["keeper1"].suspected <= s.revoked["keeper1"].confirmed
    assert fake.calls.count(PG) == 1 + crash.CONFIRM_ROUNDS


def test_the_prober_never_revokes_on_refusals_from_the_start_a_timeout_or_as_a_follower() -> None:
    s, store, lease = leading_sentinel()
    fake = FakeProbe()
    fake.results = {PG: R, API: R}  # a firewall that rejects this sentinel: never reached
    s.probe_primary(fake)
    assert store.lease_alive(lease) and s.revoked == {}
    fake.results = {PG: "accepted", API: "accepted"}
    s.probe_primary(fake)
    fake.results = {PG: "timeout", API: R}  # PostgreSQL's machine does not answer: the lease path
    s.probe_primary(fake)
    assert store.lease_alive(lease)
    fake.results = {PG: R, API: R}
    s.leader = False  # no longer the leader
    s.probe_primary(fake)
    assert store.lease_alive(lease)
    s.leader = True
    store.delete(s.keys.leader)  # the leader key is gone (another sentinel may lead): our flag is not enough
    s.probe_primary(fake)
    assert store.lease_alive(lease) and s.revoked == {}


def test_what_was_reached_under_one_lease_does_not_count_for_the_next() -> None:
    s, store, lease = leading_sentinel()
    fake = FakeProbe()
    fake.results = {PG: "accepted", API: "accepted"}
    s.probe_primary(fake)
    uid, _, st = s.probe_target
    other = store.grant(3)
    store.put(s.keys.keeper(uid), st.dumps(), lease=other)  # the keeper registered again
    s.probe_target = (uid, other, st)
    fake.results = {PG: R, API: R}
    s.probe_primary(fake)
    assert store.lease_alive(other) and s.revoked == {}
