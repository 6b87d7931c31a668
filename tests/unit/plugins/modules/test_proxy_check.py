# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

import pytest

from ansible_collections.pgha.cluster.plugins.modules import proxy_check


class FakePsycopg2:
    """Stands in for psycopg2: each port answers as a primary or a replica."""

    class Error(Exception):
        pass

    def __init__(self, servers):
        self.servers = servers  # port -> (in_recovery, server_port) or None (refuses)
        self.connects = []

    def connect(self, **kw):
        self.connects.append(kw)
        answer = self.servers.get(kw["port"])
        if answer is None:
            raise self.Error("connection refused")
        return FakeConn(answer)


class FakeConn:
    def __init__(self, answer):
        self.answer = answer

    def cursor(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql):
        pass

    def fetchone(self):
        return (self.answer[0], self.answer[1], "15.18")

    def close(self):
        pass


@pytest.fixture
def fake_pg(monkeypatch):
    def install(servers):
        fake = FakePsycopg2(servers)
        monkeypatch.setattr(proxy_check, "psycopg2", fake)
        return fake
    return install


def test_rw_primary_and_ro_replica(run_module, fake_pg, tmp_path):
    fake = fake_pg({25432: (False, 5433), 25433: (True, 5434)})
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    result, failed = run_module(proxy_check, {"port": 25432, "ro_port": 25433, "require_replica": True,
                                              "password_file": str(pw)})
    assert not failed
    assert result["rw"] == {"in_recovery": False, "server_port": 5433, "version": "PostgreSQL 15.18"}
    assert result["ro"]["in_recovery"] is True
    assert all(c["password"] == "s3cret" for c in fake.connects)


def test_rw_reaching_a_replica_fails(run_module, fake_pg):
    fake_pg({25432: (True, 5434)})
    result, failed = run_module(proxy_check, {"port": 25432, "password": "x"})
    assert failed and "not the primary" in result["msg"]


def test_ro_reaching_the_primary_fails_only_when_a_replica_is_required(run_module, fake_pg):
    fake_pg({25432: (False, 5433), 25433: (False, 5433)})
    result, failed = run_module(proxy_check, {"port": 25432, "ro_port": 25433, "password": "x"})
    assert not failed and result["ro"]["in_recovery"] is False
    result, failed = run_module(proxy_check, {"port": 25432, "ro_port": 25433, "password": "x",
                                              "require_replica": True})
    assert failed and "reached the primary" in result["msg"]


def test_connection_refused_is_reported(run_module, fake_pg):
    fake_pg({})
    result, failed = run_module(proxy_check, {"port": 25432, "password": "x"})
    assert failed and "cannot connect through 127.0.0.1:25432" in result["msg"]


def test_password_is_never_returned(run_module, fake_pg):
    fake_pg({25432: (False, 5433)})
    result, failed = run_module(proxy_check, {"port": 25432, "password": "topsecret"})
    assert not failed and "topsecret" not in repr(result)
