# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""cluster_info, keeper_replication, switchover and etcd_health against the fake library."""

from __future__ import annotations

import pytest

from ansible_collections.pgha.cluster.plugins.module_utils import client
from ansible_collections.pgha.cluster.plugins.modules import (
    cluster_info,
    etcd_health,
    keeper_replication,
    switchover,
)
from ansible_collections.pgha.cluster.tests.unit.plugins.modules.fake_pgha import (
    FakeCtl,
    FakeEtcdStore,
    fake_status,
)

ARGS = {"store_endpoints": "http://127.0.0.1:12379", "cluster_name": "main"}


def use(monkeypatch, module, ctl):
    monkeypatch.setattr(module, "open_ctl", lambda m: ctl)
    return ctl


# ---------------------------------------------------------------------------- cluster_info
def test_cluster_info_returns_the_status_and_spec(run_module, monkeypatch):
    use(monkeypatch, cluster_info, FakeCtl(spec={"fail_interval": 3.0}))
    result, failed = run_module(cluster_info, ARGS)
    assert not failed and result["changed"] is False
    assert result["initialized"] is True
    assert result["cluster"]["primary"] == "keeper1"
    assert [k["uid"] for k in result["keepers"]] == ["keeper1", "keeper2", "keeper3"]
    assert result["sentinels"][0]["leader"] is True


def test_cluster_info_before_init(run_module, monkeypatch):
    use(monkeypatch, cluster_info, FakeCtl(spec=None, status=fake_status(primary=None, replicas=(), phase=None)))
    result, failed = run_module(cluster_info, ARGS)
    assert not failed and result["initialized"] is False and result["spec"] is None


# ---------------------------------------------------------------------- keeper_replication
@pytest.mark.parametrize("name, status, args, problem", [
    ("healthy cluster", fake_status(), {}, None),
    ("not initialized", fake_status(primary=None, replicas=(), phase=None), {}, "not initialized"),
    ("replica not streaming",
     fake_status(keepers=[{"uid": "keeper1", "healthy": True, "role": "primary"},
                          {"uid": "keeper2", "healthy": True, "role": "replica", "streaming": False}]),
     {}, "keeper2: replica not streaming"),
    ("unhealthy keeper",
     fake_status(keepers=[{"uid": "keeper1", "healthy": True, "role": "primary"},
                          {"uid": "keeper2", "healthy": False, "role": "none"}]),
     {}, "keeper2: not healthy"),
    ("expected keeper missing", fake_status(), {"keepers": ["keeper1", "keeper4"]}, "keeper4: not registered"),
    ("lag above the limit",
     fake_status(keepers=[{"uid": "keeper1", "healthy": True, "role": "primary"},
                          {"uid": "keeper2", "healthy": True, "role": "replica", "streaming": True, "lag": 5000}]),
     {"max_lag": 1000}, "keeper2: lag 5000 bytes exceeds 1000"),
    ("no primary elected", fake_status(primary=None, replicas=("keeper2",),
                                       cluster={"name": "main", "phase": "normal", "primary": None,
                                                "message": "no eligible keeper"}),
     {}, "no primary is elected: no eligible keeper"),
])
def test_keeper_replication(run_module, monkeypatch, name, status, args, problem):
    use(monkeypatch, keeper_replication, FakeCtl(status=status))
    result, failed = run_module(keeper_replication, dict(ARGS, **args))
    if problem is None:
        assert not failed, result
        assert result["primary"] == "keeper1" and result["replicas"] == ["keeper2", "keeper3"]
    else:
        assert failed, name
        assert problem in result["msg"]


# ------------------------------------------------------------------------------ switchover
def test_switchover_to_the_current_primary_changes_nothing(run_module, monkeypatch):
    ctl = use(monkeypatch, switchover, FakeCtl())
    result, failed = run_module(switchover, dict(ARGS, to="keeper1"))
    assert not failed and result["changed"] is False and result["state"] == "unchanged"
    assert "switchover" not in ctl.names()


def test_switchover_runs_and_reports_the_diff(run_module, monkeypatch):
    ctl = use(monkeypatch, switchover, FakeCtl())
    result, failed = run_module(switchover, dict(ARGS, to="keeper2", timeout=30), diff=True)
    assert not failed and result["changed"] and result["to"] == "keeper2" and result["from"] == "keeper1"
    assert ("switchover", "keeper2", 30.0) in ctl.calls
    assert result["diff"] == {"before": {"primary": "keeper1"}, "after": {"primary": "keeper2"}}


def test_switchover_in_check_mode_asks_for_nothing(run_module, monkeypatch):
    ctl = use(monkeypatch, switchover, FakeCtl())
    result, failed = run_module(switchover, dict(ARGS, to="keeper3"), check_mode=True)
    assert not failed and result["changed"] and result["state"] == "planned"
    assert "switchover" not in ctl.names()


def test_switchover_refused_says_why(run_module, monkeypatch):
    ctl = FakeCtl()

    def refuse(to=None, timeout=60.0):
        raise client.CtlError("keeper3 is not a healthy replica")

    ctl.switchover = refuse
    use(monkeypatch, switchover, ctl)
    result, failed = run_module(switchover, dict(ARGS, to="keeper3"))
    assert failed and "keeper3 is not a healthy replica" in result["msg"]


# ----------------------------------------------------------------------------- etcd_health
def member(endpoint, healthy=True, leader="aa", member_id="aa", error=""):
    return {"endpoint": endpoint, "healthy": healthy, "leader": leader if healthy else None,
            "member_id": member_id, "version": "3.4.23", "error": error}


@pytest.fixture
def fake_etcd(monkeypatch):
    monkeypatch.setattr(etcd_health, "EtcdStore", FakeEtcdStore)
    monkeypatch.setattr(etcd_health, "require_pgha", lambda module: None)
    return FakeEtcdStore


def test_etcd_all_healthy_with_a_leader(run_module, fake_etcd):
    fake_etcd.members = [member("http://127.0.0.1:12379"), member("http://127.0.0.1:12381", member_id="bb")]
    result, failed = run_module(etcd_health, ARGS)
    assert not failed and result["healthy"] == 2 and result["leader"] == "aa"


def test_etcd_unhealthy_member_fails_naming_it(run_module, fake_etcd):
    fake_etcd.members = [member("http://127.0.0.1:12379"),
                         member("http://127.0.0.1:12381", healthy=False, error="connection refused")]
    result, failed = run_module(etcd_health, ARGS)
    assert failed and "http://127.0.0.1:12381 (connection refused)" in result["msg"]


def test_etcd_min_healthy_allows_a_member_down(run_module, fake_etcd):
    fake_etcd.members = [member("http://127.0.0.1:12379"), member("http://127.0.0.1:12381", healthy=False)]
    result, failed = run_module(etcd_health, dict(ARGS, min_healthy=1))
    assert not failed and result["healthy"] == 1


def test_etcd_without_leader_fails(run_module, fake_etcd):
    fake_etcd.members = [member("http://127.0.0.1:12379", leader=None)]
    result, failed = run_module(etcd_health, ARGS)
    assert failed and "no etcd member knows a leader" in result["msg"]


# ---------------------------------------------------------------------------- backup, backup_info
def test_backup_takes_one_and_lists_the_repository(run_module, monkeypatch):
    from ansible_collections.pgha.cluster.plugins.modules import backup

    ctl = use(monkeypatch, backup, FakeCtl(spec={}))
    result, failed = run_module(backup, dict(ARGS, type="incr", timeout=60))
    assert not failed and result["changed"] is True
    assert result["backup"]["label"].endswith("I") and result["backup"]["keeper"] == "keeper1"
    assert [b["label"] for b in result["backups"]] == [result["backup"]["label"]]
    assert ("backup", "incr", 60.0, "auto") in ctl.calls
    result, failed = run_module(backup, dict(ARGS, source="primary"))
    assert not failed and result["backup"]["from"] == "keeper1" and ("backup", "full", 3600.0, "primary") in ctl.calls
    result, failed = run_module(backup, dict(ARGS, source="replica"))
    assert failed and "source" in result["msg"]


def test_backup_in_check_mode_takes_none(run_module, monkeypatch):
    from ansible_collections.pgha.cluster.plugins.modules import backup

    ctl = use(monkeypatch, backup, FakeCtl(spec={}))
    result, failed = run_module(backup, ARGS, check_mode=True)
    assert not failed and result["changed"] is True and result["backup"] is None
    assert "backup" not in ctl.names()


def test_backup_failure_says_why(run_module, monkeypatch):
    from ansible_collections.pgha.cluster.plugins.modules import backup

    use(monkeypatch, backup, FakeCtl(spec={}, error=client.CtlError("keeper keeper1 has no backup repository")))
    result, failed = run_module(backup, ARGS)
    assert failed and "no backup repository" in result["msg"]


def test_backup_info_lists_backups_and_each_keepers_state(run_module, monkeypatch):
    from ansible_collections.pgha.cluster.plugins.modules import backup_info

    ctl = FakeCtl(spec={})
    ctl.backup("full")
    use(monkeypatch, backup_info, ctl)
    result, failed = run_module(backup_info, ARGS)
    assert not failed and result["changed"] is False
    assert [b["label"] for b in result["backups"]] == ["20261203-101500F"]
    assert set(result["keepers"]) == {"keeper1", "keeper2", "keeper3"}
