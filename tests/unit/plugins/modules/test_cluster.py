# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

import pytest

from ansible_collections.pgha.cluster.plugins.module_utils import client
from ansible_collections.pgha.cluster.plugins.modules import cluster
from ansible_collections.pgha.cluster.tests.unit.plugins.modules.fake_pgha import FakeCtl

ARGS = {"store_endpoints": "http://127.0.0.1:12379"}


@pytest.fixture
def use_ctl(monkeypatch):
    def install(ctl):
        monkeypatch.setattr(cluster, "open_ctl", lambda module: ctl)
        return ctl
    return install


def test_init_on_an_empty_cluster(run_module, use_ctl):
    ctl = use_ctl(FakeCtl(spec=None))
    result, failed = run_module(cluster, dict(ARGS, spec={"fail_interval": 5.0}), diff=True)
    assert not failed
    assert result["changed"] and result["action"] == "init"
    assert ctl.spec["fail_interval"] == 5.0
    assert result["diff"] == {"before": {}, "after": ctl.spec}


def test_init_in_check_mode_writes_nothing(run_module, use_ctl):
    ctl = use_ctl(FakeCtl(spec=None))
    result, failed = run_module(cluster, dict(ARGS, spec={"fail_interval": 5.0}), check_mode=True)
    assert not failed and result["changed"] and result["action"] == "init"
    assert "init" not in ctl.names() and ctl.spec is None
    assert "diff" not in result  # only with --diff


def test_same_spec_again_changes_nothing(run_module, use_ctl):
    ctl = use_ctl(FakeCtl(spec=None))
    run_module(cluster, dict(ARGS, spec={"fail_interval": 5.0}))
    result, failed = run_module(cluster, dict(ARGS, spec={"fail_interval": 5.0}), diff=True)
    assert not failed
    assert result["changed"] is False and result["action"] == "none"
    assert "set_spec" not in ctl.names()


def test_changed_spec_is_stored_whole_with_its_patch_and_diff(run_module, use_ctl):
    ctl = use_ctl(FakeCtl(spec=None))
    run_module(cluster, dict(ARGS, spec={"fail_interval": 5.0, "pg_parameters": {"work_mem": "8MB"}}))
    result, failed = run_module(cluster, dict(ARGS, spec={"synchronous_replication": True,
                                                          "pg_parameters": {"max_connections": "200"}}), diff=True)
    assert not failed and result["action"] == "update" and result["changed"]
    # fail_interval went back to its default; work_mem was removed; max_connections added.
    assert result["patch"] == {"fail_interval": 3.0, "synchronous_replication": True,
                               "pg_parameters": {"work_mem": None, "max_connections": "200"}}
    assert result["diff"]["before"]["synchronous_replication"] is False
    assert result["diff"]["after"]["synchronous_replication"] is True
    assert ctl.spec["pg_parameters"] == {"max_connections": "200"}


def test_update_in_check_mode_shows_the_diff_and_writes_nothing(run_module, use_ctl):
    ctl = use_ctl(FakeCtl(spec=FakeCtl().normalize({})))
    result, failed = run_module(cluster, dict(ARGS, spec={"synchronous_replication": True}),
                                check_mode=True, diff=True)
    assert not failed and result["changed"] and result["action"] == "update"
    assert result["diff"]["after"]["synchronous_replication"] is True
    assert "set_spec" not in ctl.names() and ctl.spec["synchronous_replication"] is False


def test_invalid_spec_fails_naming_the_key(run_module, use_ctl):
    use_ctl(FakeCtl(spec=None))
    result, failed = run_module(cluster, dict(ARGS, spec={"fail_intervall": 5}))
    assert failed
    assert "fail_intervall" in result["msg"]
    assert "checking the spec of cluster main" in result["msg"]


def test_store_error_is_reported_clearly(run_module, use_ctl):
    use_ctl(FakeCtl(error=client.StoreError("store unreachable: http://127.0.0.1:12379: connection refused")))
    result, failed = run_module(cluster, dict(ARGS, spec={}))
    assert failed
    assert "store error" in result["msg"] and "connection refused" in result["msg"]


def test_the_patch_reported_is_the_one_between_the_documents():
    patch_between = client.patch_between
    assert patch_between({"a": {"b": 1}, "c": [1]}, {"a": {"b": 1}, "c": [1]}) == {}
    assert patch_between({"a": 1}, {}) == {"a": None}
    assert patch_between({"c": [1, 2]}, {"c": [2]}) == {"c": [2]}
    assert patch_between({"p": {"x": "1", "y": "2"}}, {"p": {"y": "3"}}) == {"p": {"x": None, "y": "3"}}
