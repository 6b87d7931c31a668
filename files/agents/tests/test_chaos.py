"""The chaos plan (which fault each round brings), a pure function."""

from __future__ import annotations

import pytest

from pgha.chaos import Target, failovers, plan

TARGETS = [Target("pg1_keeper1", "keeper", "pg1"), Target("pg2_keeper1", "keeper", "pg2"),
           Target("pg1_sentinel1", "sentinel", "pg1"), Target("pg3_proxy1", "proxy", "pg3"),
           Target("pg1-etcd1", "etcd", "pg1")]
HOSTS = ["pg1", "pg2", "pg3"]


def test_one_kill_per_round_and_never_etcd_by_default() -> None:
    rounds = plan(TARGETS, HOSTS, rounds=50, seed=1)
    assert len(rounds) == 50 and all(r["fault"] == "kill" for r in rounds)
    assert all(r["component"] != "etcd" for r in rounds)
    assert {r["host"] for r in rounds} <= set(HOSTS)


def test_etcd_only_when_asked() -> None:
    assert any(r["component"] == "etcd" for r in plan(TARGETS, HOSTS, rounds=50, seed=3, include_etcd=True))


def test_partitions_mix_with_kills_and_name_host_scope_and_duration() -> None:
    rounds = plan(TARGETS, HOSTS, rounds=40, seed=5, faults=("kill", "partition"), partition_seconds=6)
    parts = [r for r in rounds if r["fault"] == "partition"]
    assert parts and len(parts) < 40
    assert {p["scope"] for p in parts} == {"host", "store"} and all(p["seconds"] == 6 for p in parts)
    assert {p["host"] for p in parts} <= set(HOSTS)


def test_the_same_seed_replays_the_same_run() -> None:
    kw = dict(rounds=20, seed=11, faults=("kill", "partition"))
    assert plan(TARGETS, HOSTS, **kw) == plan(TARGETS, HOSTS, **kw)


@pytest.mark.parametrize("hosts,faults,why", [
    (["localhost"], ("partition",), "at least three hosts"),
    (HOSTS, ("flood",), "faults must be"),
    (HOSTS, (), "faults must be"),
])
def test_refused(hosts, faults, why) -> None:
    with pytest.raises(ValueError, match=why):
        plan(TARGETS, hosts, rounds=3, faults=faults)


def test_failovers_counted_from_primary_changes() -> None:
    assert failovers(["k1", "k1", None, "k2", "k2", "k3", None, "k3"]) == 2
    assert failovers([]) == 0
