"""The integration-test harness itself: etcd clusters come up and go away, and process trees can be
frozen, thawed and killed without leaving anything behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import harness
from pgha.store.etcd import EtcdStore


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()[0]


def _wait(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def _gone(pid: int) -> bool:
    return _state(pid) in (None, "Z", "X")


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = [harness.free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < 65536 for p in ports)


@pytest.mark.integration
@pytest.mark.needs("etcd")
def test_three_member_etcd_comes_up_healthy_and_goes_away(etcd_factory) -> None:
    etcd = etcd_factory(3)
    assert len(etcd.endpoints.split(",")) == 3

    health = EtcdStore(etcd.endpoints).member_health()
    assert [h["healthy"] for h in health] == [True, True, True], health
    assert len({h["leader"] for h in health}) == 1, health

    store = EtcdStore(etcd.endpoints)
    store.put("/smoke/key", "value")
    assert store.get("/smoke/key").value == b"value"

    # Losing one member keeps a quorum; the member rejoins on its data directory.
    etcd.kill_member(0)
    etcd.wait_healthy(20)
    assert store.get("/smoke/key").value == b"value"
    etcd.start_member(0)
    etcd.wait_healthy(30)
    assert all(h["healthy"] for h in EtcdStore(etcd.endpoints).member_health())

    pids = [pid for m in etcd.members for pid in m.pids()]
    assert len(pids) == 3
    etcd.stop()
    assert all(_wait(lambda p=p: _gone(p)) for p in pids)
    assert not any(h["healthy"] for h in EtcdStore(etcd.endpoints, timeout=0.5).member_health())


@pytest.mark.integration
@pytest.mark.needs("user")
def test_agent_tree_can_be_stopped_continued_and_killed(pgha_tmp: Path) -> None:
    user, uid, _ = harness.agent_user()
    workdir = pgha_tmp / "dummy"
    workdir.mkdir()
    if harness.running_as_root():
        os.chown(workdir, uid, -1)
    # A parent that outlives its children's signals: sh with two sleeping children.
    agent = harness.Agent("dummy", ["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"], pgha_tmp / "dummy.log",
                          cwd=workdir, user=user)
    try:
        agent.start()
        assert agent.is_running()
        assert _wait(lambda: len(agent.pids()) == 3), agent.pids()
        pids = agent.pids()
        for pid in pids:
            assert os.stat(f"/proc/{pid}").st_uid == uid

        agent.signal_tree(signal.SIGSTOP)
        assert _wait(lambda: all(_state(p) == "T" for p in pids)), [_state(p) for p in pids]
        agent.signal_tree(signal.SIGCONT)
        assert _wait(lambda: all(_state(p) == "S" for p in pids)), [_state(p) for p in pids]

        agent.signal_tree(signal.SIGKILL)
        assert _wait(lambda: all(_gone(p) for p in pids))
        assert _wait(lambda: not agent.is_running())

        # stop() also cleans up a frozen tree, and children orphaned by killing the parent alone.
        agent.start()
        assert _wait(lambda: len(agent.pids()) == 3)
        pids = agent.pids()
        agent.signal_tree(signal.SIGSTOP)
        agent.kill()
        assert not agent.is_running()
        agent.stop()
        assert _wait(lambda: all(_gone(p) for p in pids)), [_state(p) for p in pids]
        assert agent.pids() == []
        assert "start: /bin/sh" in agent.log_text()
    finally:
        agent.stop()
