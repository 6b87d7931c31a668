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


def ev(rounds, before=(7, 99), after=(7, 99), span=0.04) -> crash.Evidence:
    return crash.Evidence(uid="k1", pg=PG, api=API, key_before=before, key_after=after, rounds=tuple(rounds), span=span)


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
