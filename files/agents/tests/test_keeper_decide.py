"""Table tests of the keeper's pure decide()."""

from __future__ import annotations

import pytest

from pgha.keeper import decide as kd
from pgha.keeper.decide import Local
from pgha.model import KeeperSpec

C = "c1"
PRIMARY = KeeperSpec(role="primary")
NEW = KeeperSpec(role="primary", init="new")
EXISTING = KeeperSpec(role="primary", init="existing")
PITR = KeeperSpec(role="primary", init="pitr")
OLD = "c0"  # the cluster restored in place
REPLICA = KeeperSpec(role="replica", follow="k1")
FENCED = KeeperSpec(role="none")
ADDR = "h:5432"

RUNNING_PRIMARY = Local(data_exists=True, cluster_uid=C, running=True, in_recovery=False)
RUNNING_REPLICA = Local(data_exists=True, cluster_uid=C, running=True, in_recovery=True, standby_configured=True,
                        following=ADDR, streaming=True)

CASES = [
    ("no cluster data", None, None, None, Local(), kd.WAIT),
    ("data of another cluster is never touched", PRIMARY, C, None,
     Local(data_exists=True, cluster_uid="other", running=True), kd.REFUSE),
    ("foreign PostgreSQL data is never touched", REPLICA, C, ADDR, Local(data_exists=True), kd.REFUSE),
    ("not assigned, running: stop", None, C, None, RUNNING_REPLICA, kd.STOP),
    ("not assigned, stopped: wait", None, C, None, Local(), kd.WAIT),
    ("fenced by the sentinel: stop", FENCED, C, None, RUNNING_PRIMARY, kd.STOP),
    ("fenced and stopped: wait", FENCED, C, None, Local(data_exists=True, cluster_uid=C), kd.WAIT),
    ("chosen for init with no data: initdb", NEW, C, None, Local(), kd.INITDB),
    ("interrupted initdb is redone", NEW, C, None, Local(data_exists=True, cluster_uid=C, initializing=True), kd.INITDB),
    ("init existing adopts foreign data", EXISTING, C, None, Local(data_exists=True), kd.ADOPT),
    ("elected primary without data refuses", PRIMARY, C, None, Local(), kd.REFUSE),
    ("elected primary, stopped: start", PRIMARY, C, None, Local(data_exists=True, cluster_uid=C), kd.START_PRIMARY),
    ("elected primary, running replica: promote", PRIMARY, C, None, RUNNING_REPLICA, kd.PROMOTE),
    ("primary running: reconcile", PRIMARY, C, None, RUNNING_PRIMARY, kd.RECONCILE_PRIMARY),
    ("lease lapsed: a running primary stops", PRIMARY, C, None,
     Local(data_exists=True, cluster_uid=C, running=True, in_recovery=False, fenced=True), kd.STOP),
    ("lease lapsed: a stopped primary waits", PRIMARY, C, None,
     Local(data_exists=True, cluster_uid=C, fenced=True), kd.WAIT),
    ("replica without data: base backup", REPLICA, C, ADDR, Local(), kd.BASEBACKUP),
    ("interrupted base backup is redone", REPLICA, C, ADDR,
     Local(data_exists=True, cluster_uid=C, initializing=True), kd.BASEBACKUP),
    ("replica whose upstream address is unknown waits", REPLICA, C, None, Local(), kd.WAIT),
    ("old primary still running: rewind", REPLICA, C, ADDR, RUNNING_PRIMARY, kd.REWIND),
    ("old primary stopped (crashed): rewind", REPLICA, C, ADDR, Local(data_exists=True, cluster_uid=C), kd.REWIND),
    ("stopped replica: start", REPLICA, C, ADDR,
     Local(data_exists=True, cluster_uid=C, standby_configured=True), kd.START_REPLICA),
    ("replica following another address: reconfigure", REPLICA, C, "h:6000", RUNNING_REPLICA, kd.RECONCILE_REPLICA),
    ("streaming replica: reconcile", REPLICA, C, ADDR, RUNNING_REPLICA, kd.RECONCILE_REPLICA),
    ("replica not streaming for long: rewind (forked timeline)", REPLICA, C, ADDR,
     Local(data_exists=True, cluster_uid=C, running=True, in_recovery=True, standby_configured=True, following=ADDR,
           streaming=False, not_streaming_for=30), kd.REWIND),
    ("replica not streaming briefly: keep waiting", REPLICA, C, ADDR,
     Local(data_exists=True, cluster_uid=C, running=True, in_recovery=True, standby_configured=True, following=ADDR,
           streaming=False, not_streaming_for=1), kd.RECONCILE_REPLICA),
]


@pytest.mark.parametrize("name,want,cluster_uid,addr,local,expected", CASES, ids=[c[0] for c in CASES])
def test_keeper_decide(name: str, want: KeeperSpec | None, cluster_uid: str | None, addr: str | None, local: Local,
                       expected: str) -> None:
    action = kd.decide(want, cluster_uid, addr, local, rewind_after=10)
    assert action.kind == expected, action
    assert action.reason


RESTORE_CASES = [
    ("chosen for a point-in-time recovery, no data: restore", PITR, Local(), kd.RESTORE),
    ("an interrupted restore is redone", PITR, Local(data_exists=True, cluster_uid=C, initializing=True), kd.RESTORE),
    ("restore in place: the replaced cluster's data is discarded by the restore", PITR,
     Local(data_exists=True, cluster_uid=OLD, running=True, in_recovery=False), kd.RESTORE),
    ("restore in place: the other keepers' old primaries stop until given a role", None,
     Local(data_exists=True, cluster_uid=OLD, running=True, in_recovery=False), kd.STOP),
    ("restore in place: a stopped keeper of the replaced cluster waits", None,
     Local(data_exists=True, cluster_uid=OLD), kd.WAIT),
    ("restore in place: the replaced cluster's replica clones the restored primary", REPLICA,
     Local(data_exists=True, cluster_uid=OLD, running=True, in_recovery=True, standby_configured=True,
           following=ADDR, streaming=True), kd.BASEBACKUP),
    ("a third cluster's data is never touched, even while restoring in place", PITR,
     Local(data_exists=True, cluster_uid="other"), kd.REFUSE),
    ("PostgreSQL data not created by pgha is never overwritten by a restore", PITR, Local(data_exists=True),
     kd.REFUSE),
]


@pytest.mark.parametrize("name,want,local,expected", RESTORE_CASES, ids=[c[0] for c in RESTORE_CASES])
def test_keeper_decide_restore(name: str, want: KeeperSpec | None, local: Local, expected: str) -> None:
    action = kd.decide(want, C, ADDR, local, rewind_after=10, replaces=(OLD, "c00"))
    assert action.kind == expected, action
    assert action.reason


def test_without_a_restore_in_place_the_old_clusters_data_is_refused() -> None:
    local = Local(data_exists=True, cluster_uid=OLD)
    assert kd.decide(PITR, C, None, local, rewind_after=10).kind == kd.REFUSE
    assert kd.decide(REPLICA, C, ADDR, local, rewind_after=10).kind == kd.REFUSE
