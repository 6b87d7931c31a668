"""Crash detection from positive evidence (pure; the leading sentinel's prober does the I/O).

A primary whose keeper and PostgreSQL were killed on a live machine leaves evidence long before its
lease expires: that machine's kernel answers connections to both ports with a reset ("connection
refused"). The leading sentinel connects to the primary keeper's API every ``PROBE_EVERY``; when
that is refused it confirms with ``CONFIRM_ROUNDS`` rounds, ``CONFIRM_GAP`` apart, of one
connection to PostgreSQL and one to the keeper's API, reading the keeper's status key before and
after. ``confirm`` says whether that is a crash: every connection refused, the status key unchanged
(same revision, same lease) meanwhile, and both endpoints reached by this sentinel before, under the
same lease (a firewall that rejects the sentinel, or an address it cannot reach, refuses from the
start: that is never taken for a crash). Then the sentinel revokes the keeper's lease, and
the failover runs through the unchanged path of ``pgha.sentinel.decide`` (the primary's key is
gone *because its lease is gone*: fence, acknowledgements, promote).

Only refusals count. A timeout, "host unreachable", an accepted connection (PostgreSQL starting up,
or refusing logins with "too many clients" still accepts the TCP connection) never does, so a
frozen, partitioned or powered-off machine stays on the lease path, whose fencing does not depend
on the old primary being dead. What a refusal proves: nothing listens on that port of a machine
whose kernel runs, so the postmaster accepts no connection and the keeper process is gone (its
backends exit when they see the postmaster die; connections the proxies relay are closed by the
fence before any promotion). A firewall that *rejects* with a reset looks the same; the keeper of a
live primary behind one learns at its next renewal (``LEASE_TICK``) that its lease is gone and
stops PostgreSQL before registering again (``pgha.keeper.fencing``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

REFUSED = "refused"
PROBE_EVERY = 0.1  # seconds between two connections to the primary keeper's API
CONFIRM_ROUNDS = 3
CONFIRM_GAP = 0.02
PROBE_TIMEOUT = 0.25

WILDCARDS = ("", "0.0.0.0", "::", "*")
LOOPBACK_NAMES = ("localhost", "localhost4", "localhost6", "ip6-localhost", "ip6-loopback")


def split_address(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` as (host, port); None when it is not one."""
    host, sep, port = (address or "").rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def loopback(host: str) -> bool:
    """Whether ``host`` names this machine wherever it is read (a loopback address or name, or an
    unspecified one, which connects to the local machine)."""
    if host.lower().rstrip(".") in LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def probe_targets(st: Any, sentinel_host: str) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """Where to probe the keeper of status ``st`` (a KeeperStatus): its PostgreSQL's advertised
    address and its API, or None when a refusal there would prove nothing: no API, an address that
    does not parse, or a loopback address while the sentinel runs on another machine (it would
    connect to its own)."""
    pg, api = split_address(st.address), split_address(st.api_address)
    if pg is None or api is None or pg[0] in WILDCARDS:
        return None
    api_host = pg[0] if api[0] in WILDCARDS else api[0]
    if (loopback(pg[0]) or loopback(api_host)) and (not st.host or st.host != sentinel_host):
        return None
    return pg, (api_host, api[1])


@dataclass(frozen=True)
class Evidence:
    """One confirmation round on the primary keeper ``uid``."""

    uid: str
    pg: tuple[str, int]
    api: tuple[str, int]
    key_before: tuple[int, int]  # (mod revision, lease) of its status key before the first probe
    key_after: tuple[int, int] | None  # ... after the last one (None: gone)
    rounds: tuple[tuple[str, str], ...]  # (PostgreSQL, API) outcome of each round
    span: float  # seconds from the first probe to the last
    reached: frozenset[str] = frozenset()  # of "pg", "api": accepted this sentinel's connection under this lease


def confirm(ev: Evidence) -> tuple[bool, str]:
    """Whether ``ev`` proves the keeper and its PostgreSQL are dead, and why (or why not)."""
    if ev.reached != {"pg", "api"}:
        never = " and ".join(n for n, k in (("PostgreSQL", "pg"), ("the keeper's API", "api")) if k not in ev.reached)
        return False, (f"this sentinel never reached {never} under the keeper's current lease (a firewall that "
                       "rejects it, or an address it cannot reach, refuses from the start)")
    if ev.key_after is None:
        return False, "its status key is gone already (the lease path goes on)"
    if ev.key_after != ev.key_before:
        return False, "its status key changed during the probes (the keeper is alive, or registered again)"
    if len(ev.rounds) < CONFIRM_ROUNDS:
        return False, f"{len(ev.rounds)} probe rounds, {CONFIRM_ROUNDS} needed"
    other = sorted({o for r in ev.rounds for o in r if o != REFUSED})
    if other:
        return False, f"not every connection was refused ({', '.join(other)}): only refusals count"
    n = 2 * len(ev.rounds)
    return True, (f"PostgreSQL at {ev.pg[0]}:{ev.pg[1]} and the keeper's API at {ev.api[0]}:{ev.api[1]} refused "
                  f"all {n} connections over {ev.span * 1000:.0f} ms, its status key unchanged")
