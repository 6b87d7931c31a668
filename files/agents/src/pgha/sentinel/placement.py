"""Where the store's leader should run: off the primary's host.

When the host of the primary also runs the etcd leader, cutting that host off (or crashing it)
costs an etcd election on top of the failover: the majority needs an election timeout to elect a
new etcd leader, which then extends every lease by that much, so the primary's lease, and the
failover, come 2-3 s later (bench/results/partition-*.json: 5-6.5 s instead of about 3.5 s). The
leading sentinel therefore moves the etcd leadership to a member on another host whenever it finds
it on the primary's host (spec ``store_leader_off_primary``, on by default). ``store_leader_move``
is the pure choice; the sentinel does the reading and the move.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def host_of_endpoint(url: str) -> str:
    return urlsplit(url).hostname or ""


def host_of_address(address: str) -> str:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.strip("[]")


def store_leader_move(members: list[dict[str, Any]], primary_address: str) -> tuple[str | None, str]:
    """(member id to hand the leadership to, why) or (None, why nothing is done)."""
    primary = host_of_address(primary_address)
    if not primary:
        return None, "the primary's address is unknown"
    healthy = [m for m in members if m.get("healthy") and m.get("member_id")]
    leaders = {m.get("leader") for m in healthy if m.get("leader")}
    if len(leaders) != 1:
        return None, "the store has no single leader"
    leader_id = leaders.pop()
    leader = next((m for m in healthy if m["member_id"] == leader_id), None)
    if leader is None:
        return None, "the store's leader is not one of the endpoints"
    if host_of_endpoint(leader["endpoint"]) != primary:
        return None, "the store's leader is not on the primary's host"
    others = sorted((m for m in healthy if host_of_endpoint(m["endpoint"]) != primary),
                    key=lambda m: m["endpoint"])
    if not others:
        return None, "every store member is on the primary's host"
    target = others[0]
    return str(target["member_id"]), (f"the store's leader ({leader['endpoint']}) runs on the primary's host "
                                      f"{primary}: moving it to {target['endpoint']}")
