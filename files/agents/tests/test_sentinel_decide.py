"""Table tests of the sentinel's pure decide(): one case per scenario."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Callable

import pytest

from pgha.model import (
    PHASE_INITIALIZING,
    PHASE_NORMAL,
    ClusterData,
    Command,
    KeeperSpec,
    KeeperStatus,
    ProxySpec,
    ProxyStatus,
    Replication,
    SyncState,
    Transition,
)
from pgha.sentinel.context import Revocation
from pgha.sentinel.decide import Decision, Memory, Snapshot, decide
from pgha.spec import Spec, normalize

UID = "c1"
NOW = 1000.0


def spec(**kw: Any) -> Spec:
    return normalize(kw)


def ks(uid: str, role: str = "replica", *, lsn: int = 100, tl: int = 1, healthy: bool = True,
       streaming: str | None = "h:1", cluster: str | None = UID, can_be_master: bool = True,
       sync: tuple[str, ...] | None = None, repl: tuple[Replication, ...] = (), final_lsn: int | None = None,
       running: bool = True, reported_at: float = NOW, roles_ready: bool = True) -> KeeperStatus:
    return KeeperStatus(uid=uid, cluster_uid=cluster, address=f"h:{uid}", healthy=healthy, role=role,
                        system_id="sys", timeline=tl, lsn=lsn, replay_lsn=lsn,
                        streaming_from=streaming if role == "replica" else None, can_be_master=can_be_master,
                        synchronous_standbys=sync, replication=repl, final_lsn=final_lsn, pg_running=running,
                        reported_at=reported_at, roles_ready=roles_ready and role == "primary")


def rows(*names: str, sync: tuple[str, ...] = (), flush: int = 100) -> tuple[Replication, ...]:
    return tuple(Replication(name=n, state="streaming", sync_state="sync" if n in sync else "async",
                             flush_lsn=flush) for n in names)


def cluster(primary: str = "k1", replicas: tuple[str, ...] = ("k2", "k3"), **kw: Any) -> ClusterData:
    keepers = {primary: KeeperSpec(role="primary", address=f"h:{primary}")}
    for r in replicas:
        keepers[r] = KeeperSpec(role="replica", follow=primary, address=f"h:{r}")
    base = ClusterData(uid=UID, name="main", spec=kw.pop("spec", spec()), phase=PHASE_NORMAL, generation=5,
                       primary=primary, keepers=keepers, proxy=ProxySpec(target=primary, generation=3,
                                                                          ro_targets=tuple(sorted(replicas))),
                       system_id="sys", timeline=1)
    return replace(base, **kw)


def snap(cd: ClusterData | None, keepers: list[KeeperStatus], proxies: list[ProxyStatus] | None = None,
         commands: dict[str, dict[str, Any]] | None = None, mono: float = 100.0,
         the_spec: Spec | None = None) -> Snapshot:
    sp = the_spec if the_spec is not None else (cd.spec if cd else spec())
    return Snapshot(now=NOW, mono=mono, cluster_name="main", spec=sp, spec_uid=UID, cd=cd,
                    keepers={k.uid: k for k in keepers},
                    proxies={p.uid: p for p in (proxies if proxies is not None else [ProxyStatus("p1", generation=3)])},
                    commands={n: Command.loads(n, json.dumps({"format_version": 1, **d}))
                              for n, d in (commands or {}).items()})


def healthy3(primary_lsn: int = 100) -> list[KeeperStatus]:
    return [ks("k1", "primary", lsn=primary_lsn, repl=rows("k2", "k3")), ks("k2"), ks("k3")]


def run(s: Snapshot, memory: Memory | None = None) -> tuple[Decision, ClusterData]:
    d = decide(s, memory or Memory())
    return d, d.cd if d.cd is not None else s.cd  # type: ignore[return-value]


Case = tuple[str, Callable[[], Snapshot], Callable[[Decision, ClusterData], None]]


def _promoted(called: float, done: float) -> Snapshot:
    """A failover in its promote stage whose new primary k2 reports itself primary, with its
    pg_promote() times."""
    return snap(replace(cluster("k2", ("k1", "k3")), proxy=ProxySpec(None, 4),
                        transition=Transition("failover", "k1", "k2", "promote", NOW - 1, 4),
                        last_transition={"kind": "failover", "old": "k1", "new": "k2", "detected": NOW - 1}),
                [replace(ks("k2", "primary", tl=2, repl=rows("k3")), promote_called_at=called, promoted_at=done),
                 ks("k3")], proxies=[ProxyStatus("p1", generation=4)])


def _preparing(started: float = NOW - 0.1) -> ClusterData:
    return replace(cluster(), transition=Transition("switchover", "k1", "k3", "prepare", started, 3, request_id="s1"),
                   last_switchover={"id": "s1", "state": "running", "reason": "", "from": "k1", "to": "k3"})


def _fencing() -> ClusterData:
    """A failover from k1 to k2 in its fence stage, proxies told generation 4."""
    return replace(cluster(), proxy=ProxySpec(None, 4), keepers={**cluster().keepers, "k1": KeeperSpec(role="none")},
                   transition=Transition("failover", "k1", "k2", "fence", NOW - 1, 4))


def _expect_primary_unchanged(d: Decision, cd: ClusterData) -> None:
    assert cd.primary == "k1" and cd.transition is None


CASES: list[Case] = [
    # ---------------------------------------------------------------- init
    ("no spec: nothing to do",
     lambda: Snapshot(now=NOW, mono=1, cluster_name="main", spec=None, spec_uid=None, cd=None, keepers={},
                      proxies={}),
     lambda d, cd: (d.cd is None) or pytest.fail("wrote cluster data without a spec")),
    ("spec without cluster data creates it in phase initializing",
     lambda: snap(None, []),
     lambda d, cd: (cd.phase == PHASE_INITIALIZING and cd.uid == UID and cd.generation == 1) or pytest.fail(str(cd))),
    ("init picks the first fresh keeper that can be master",
     lambda: snap(ClusterData(uid=UID, name="main", spec=spec()),
                  [ks("k2", "none", cluster=None, can_be_master=False), ks("k3", "none", cluster=None),
                   ks("k4", "none", cluster=None)]),
     lambda d, cd: (cd.primary == "k3" and cd.keepers["k3"].init == "new" and cd.keepers["k3"].role == "primary")
     or pytest.fail(str(cd))),
    ("init ignores keepers with another cluster's data",
     lambda: snap(ClusterData(uid=UID, name="main", spec=spec()), [ks("k1", "none", cluster="other")]),
     lambda d, cd: (cd.primary is None and "waiting" in cd.message) or pytest.fail(str(cd))),
    ("init completes when the chosen keeper reports a running primary",
     lambda: snap(ClusterData(uid=UID, name="main", spec=spec(), primary="k1",
                              keepers={"k1": KeeperSpec(role="primary", init="new", address="h:k1")}),
                  [ks("k1", "primary"), ks("k2", "none", cluster=None)]),
     lambda d, cd: (cd.phase == PHASE_NORMAL and cd.proxy.target == "k1" and cd.keepers["k2"].role == "replica"
                    and cd.keepers["k2"].follow == "k1" and cd.system_id == "sys" and cd.keepers["k1"].init is None)
     or pytest.fail(str(cd))),
    ("init waits until the chosen primary has created its roles and database: no routing before",
     lambda: snap(ClusterData(uid=UID, name="main", spec=spec(), primary="k1",
                              keepers={"k1": KeeperSpec(role="primary", init="new", address="h:k1")}),
                  [ks("k1", "primary", roles_ready=False), ks("k2", "none", cluster=None)]),
     lambda d, cd: (cd.phase == PHASE_INITIALIZING and cd.proxy.target is None and "k2" not in cd.keepers
                    and "roles" in cd.message) or pytest.fail(str(cd))),
    ("init_mode pitr picks a keeper with a backup repository to restore",
     lambda: snap(ClusterData(uid=UID, name="main", spec=spec(init_mode="pitr", pitr={})),
                  [ks("k1", "none", cluster=None), replace(ks("k2", "none", cluster=None), backup={"repo": "/r"})]),
     lambda d, cd: (cd.primary == "k2" and cd.keepers["k2"].init == "pitr" and "k1" not in cd.keepers)
     or pytest.fail(str(cd))),
    ("init_mode pitr waits while no keeper has a backup repository",
     lambda: snap(ClusterData(uid=UID, name="main", spec=spec(init_mode="pitr", pitr={})),
                  [ks("k1", "none", cluster=None)]),
     lambda d, cd: (cd.primary is None and "backup repository" in cd.message) or pytest.fail(str(cd))),
    ("a restore in place takes the replaced cluster's keepers, and only them",
     lambda: snap(ClusterData(uid=UID, name="main", spec=spec(init_mode="pitr", pitr={"replaces": ["c0"]})),
                  [replace(ks("k1", "primary", cluster="c0"), backup={"repo": "/r"}),
                   replace(ks("k2", "primary", cluster="c9"), backup={"repo": "/r"})]),
     lambda d, cd: (cd.primary == "k1" and cd.keepers["k1"].init == "pitr" and "k2" not in cd.keepers)
     or pytest.fail(str(cd))),
    ("after a restore in place the replaced cluster's keepers join as replicas",
     lambda: snap(ClusterData(uid=UID, name="main", spec=spec(init_mode="pitr", pitr={"replaces": ["c0"]}), primary="k1",
                              keepers={"k1": KeeperSpec(role="primary", init="pitr", address="h:k1")}),
                  [ks("k1", "primary"), ks("k2", "primary", cluster="c0"), ks("k3", "replica", cluster="c9")]),
     lambda d, cd: (cd.phase == PHASE_NORMAL and cd.keepers["k2"].role == "replica" and "k3" not in cd.keepers)
     or pytest.fail(str(cd))),
    ("init_mode existing waits for the named keeper",
     lambda: snap(ClusterData(uid=UID, name="main", spec=spec(init_mode="existing", existing_keeper="k9")),
                  [ks("k1", "none", cluster=None)]),
     lambda d, cd: (cd.primary is None and "k9" in cd.message) or pytest.fail(str(cd))),
    # ---------------------------------------------------------------- steady state
    ("healthy cluster: no change",
     lambda: snap(cluster(), healthy3()),
     lambda d, cd: (d.cd is None) or pytest.fail(f"unexpected write: {d.events}")),
    ("new keeper joins as a replica of the primary",
     lambda: snap(cluster(), healthy3() + [ks("k4", "none", cluster=None)]),
     lambda d, cd: (cd.keepers["k4"] == KeeperSpec(role="replica", follow="k1", address="h:k4"))
     or pytest.fail(str(cd.keepers))),
    ("keeper of another cluster is ignored",
     lambda: snap(cluster(), healthy3() + [ks("k4", "none", cluster="other")]),
     lambda d, cd: ("k4" not in cd.keepers and any("another" in e or "belongs" in e for e in d.events))
     or pytest.fail(str(d.events))),
    ("replica too far behind is not a read-only target",
     lambda: snap(cluster(), [ks("k1", "primary", lsn=10_000_000, repl=rows("k2", "k3")), ks("k2", lsn=10_000_000),
                              ks("k3", lsn=10)]),
     lambda d, cd: (cd.proxy.ro_targets == ("k2",)) or pytest.fail(str(cd.proxy))),
    # ---------------------------------------------------------------- failure and election
    ("primary lease expired: most advanced healthy replica elected, proxies fenced first",
     lambda: snap(cluster(), [ks("k2", lsn=90), ks("k3", lsn=95)]),
     lambda d, cd: (cd.transition is not None and cd.transition.new == "k3" and cd.transition.stage == "fence"
                    and cd.proxy.target is None and cd.proxy.generation == 4 and cd.keepers["k1"].role == "none"
                    and cd.primary == "k1") or pytest.fail(str(cd))),
    ("primary whose lease the prober revoked (a confirmed crash): failover says why, through the same fence",
     lambda: replace(snap(cluster(), [ks("k2", lsn=90), ks("k3", lsn=95)]), leases_alive={"k1": False},
                     revoked={"k1": Revocation("PostgreSQL at h:5432 and the keeper's API at h:8008 refused all 6 "
                                               "connections", suspected=NOW - 0.06, confirmed=NOW - 0.01)}),
     lambda d, cd: (cd.transition is not None and cd.transition.new == "k3" and cd.transition.stage == "fence"
                    and cd.proxy.target is None and cd.keepers["k1"].role == "none"
                    and (cd.last_transition["suspected"], cd.last_transition["confirmed"]) == (NOW - 0.06, NOW - 0.01)
                    and any("crashed: PostgreSQL at h:5432" in e and "(its lease revoked)" in e for e in d.events))
     or pytest.fail(str(d.events))),
    ("a revoked keeper that registered again is not failed for it (its new status counts)",
     lambda: replace(snap(cluster(), healthy3()), revoked={"k1": Revocation("refused", NOW - 1, NOW - 1)}),
     lambda d, cd: _expect_primary_unchanged(d, cd)),
    ("fence stage after a revocation that did not happen (the lease lives) does not promote",
     lambda: replace(snap(_fencing(), [ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4)]),
                     leases_alive={"k1": True}, revoked={"k1": Revocation("refused", NOW - 1, NOW - 1)}),
     lambda d, cd: (cd.transition is not None and cd.transition.stage == "fence" and cd.primary == "k1")
     or pytest.fail(str(cd))),
    ("fence stage waits for a revoked keeper that registered again and runs PostgreSQL",
     lambda: replace(snap(_fencing(), [ks("k1", "primary", repl=rows("k2", "k3")), ks("k2"), ks("k3")],
                          proxies=[ProxyStatus("p1", generation=4)]), revoked={"k1": Revocation("refused", NOW - 1, NOW - 1)}),
     lambda d, cd: (cd.transition is not None and cd.transition.stage == "fence" and cd.primary == "k1"
                    and "waiting for k1 to stop PostgreSQL" in cd.message) or pytest.fail(str(cd))),
    ("fence stage after a revoked lease promotes: the lease is gone",
     lambda: replace(snap(_fencing(), [ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4)]),
                     leases_alive={"k1": False}, revoked={"k1": Revocation("refused", NOW - 1, NOW - 1)}),
     lambda d, cd: (cd.primary == "k2" and cd.transition is not None and cd.transition.stage == "promote")
     or pytest.fail(str(cd))),
    ("unhealthy primary within fail_interval is kept",
     lambda: snap(cluster(), [ks("k1", "primary", healthy=False), ks("k2"), ks("k3")]),
     lambda d, cd: _expect_primary_unchanged(d, cd)),
    ("no eligible replica: primary kept and status says why",
     lambda: snap(cluster(), [ks("k2", healthy=False), ks("k3", can_be_master=False)]),
     lambda d, cd: (cd.transition is None and cd.primary == "k1" and "no replica is eligible" in cd.message
                    and "can-be-master" in cd.message) or pytest.fail(cd.message)),
    ("lag too high: replica not elected",
     lambda: snap(cluster(), [ks("k2", lsn=10), ks("k3", lsn=5_000_000)]),
     lambda d, cd: (cd.transition is not None and cd.transition.new == "k3") or pytest.fail(str(cd))),
    ("replica on another timeline is not eligible",
     lambda: snap(cluster(), [ks("k2", lsn=200, tl=2), ks("k3", lsn=100)]),
     lambda d, cd: (cd.transition is not None and cd.transition.new == "k3") or pytest.fail(str(cd))),
    ("failkeeper on the primary forces a failover",
     lambda: snap(cluster(), healthy3(), commands={"failkeeper/k1": {}}),
     lambda d, cd: (cd.transition is not None and cd.transition.old == "k1" and "failkeeper/k1" in d.consumed)
     or pytest.fail(str(cd))),
    # ---------------------------------------------------------------- fencing handshake
    ("fence stage waits for every live proxy to acknowledge",
     lambda: snap(replace(cluster(), proxy=ProxySpec(None, 4), keepers={**cluster().keepers,
                                                                        "k1": KeeperSpec(role="none")},
                          transition=Transition("failover", "k1", "k2", "fence", NOW - 1, 4)),
                  [ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4), ProxyStatus("p2", generation=3)]),
     lambda d, cd: (d.cd is None) or pytest.fail(f"promoted before every proxy acknowledged: {d.events}")),
    ("fence stage promotes once proxies acknowledged (gone proxies are not waited for)",
     lambda: snap(replace(cluster(), proxy=ProxySpec(None, 4), keepers={**cluster().keepers,
                                                                        "k1": KeeperSpec(role="none")},
                          transition=Transition("failover", "k1", "k2", "fence", NOW - 1, 4)),
                  [ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4)]),
     lambda d, cd: (cd.primary == "k2" and cd.keepers["k2"].role == "primary" and cd.transition is not None
                    and cd.transition.stage == "promote" and cd.keepers["k3"].follow == "k2"
                    and (cd.keepers["k1"].role, cd.keepers["k1"].follow) == ("replica", "k2")
                    and cd.proxy.target is None) or pytest.fail(str(cd))),
    # the invariant: never promote while the old primary may still acknowledge a write
    ("fence stage waits while the old primary is registered and runs PostgreSQL (failkeeper on a live primary)",
     lambda: snap(_fencing(), [ks("k1", "primary", repl=rows("k2", "k3")), ks("k2"), ks("k3")],
                  proxies=[ProxyStatus("p1", generation=4)]),
     lambda d, cd: (cd.transition is not None and cd.transition.stage == "fence" and cd.primary == "k1"
                    and "waiting for k1 to stop PostgreSQL" in cd.message) or pytest.fail(str(cd))),
    ("fence stage waits for a stopped old primary to read that it must stop",
     lambda: snap(_fencing(), [replace(ks("k1", "none", running=False, healthy=False), desired_role="primary"),
                               ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4)]),
     lambda d, cd: (cd.transition is not None and cd.transition.stage == "fence"
                    and "read that it must stop" in cd.message) or pytest.fail(str(cd))),
    ("fence stage promotes once the registered old primary stopped after reading role none",
     lambda: snap(_fencing(), [replace(ks("k1", "none", running=False, healthy=False), desired_role="none"),
                               ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4)]),
     lambda d, cd: (cd.primary == "k2" and cd.transition is not None and cd.transition.stage == "promote")
     or pytest.fail(str(cd))),
    ("fence stage does not promote past a status key deleted while its lease lives",
     lambda: replace(snap(_fencing(), [ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4)]),
                     leases_alive={"k1": True}),
     lambda d, cd: (cd.transition is not None and cd.transition.stage == "fence" and cd.primary == "k1"
                    and "lease is still alive" in cd.message) or pytest.fail(str(cd))),
    ("the transition's record takes the last proxy's own time of applying the fence",
     lambda: replace(snap(replace(_fencing(), last_transition={"kind": "failover", "old": "k1", "new": "k2"}),
                          [ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4, applied_at=NOW - 0.05),
                                                         ProxyStatus("p2", generation=5, applied_at=NOW - 0.02)]),
                     leases_alive={"k1": False}),
     lambda d, cd: (cd.transition.stage == "promote" and cd.last_transition["fence_acknowledged"] == NOW - 0.02
                    and cd.last_transition["promoted"] == NOW) or pytest.fail(str(cd.last_transition))),
    ("fence stage promotes when the old primary's key went with its lease",
     lambda: replace(snap(_fencing(), [ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4)]),
                     leases_alive={"k1": False}),
     lambda d, cd: (cd.primary == "k2" and cd.transition is not None and cd.transition.stage == "promote")
     or pytest.fail(str(cd))),
    ("the transition's record takes the new primary's own promotion times, not an earlier promotion's",
     lambda: _promoted(called=NOW - 0.3, done=NOW - 0.2),
     lambda d, cd: (cd.last_transition["promote_called"], cd.last_transition["promote_done"],
                    cd.last_transition["completed"]) == (NOW - 0.3, NOW - 0.2, NOW) or pytest.fail(str(cd.last_transition))),
    ("promotion times older than the transition are not its own",
     lambda: _promoted(called=NOW - 90, done=NOW - 89),
     lambda d, cd: ("promote_called" not in cd.last_transition and cd.last_transition["completed"] == NOW)
     or pytest.fail(str(cd.last_transition))),
    ("promote stage routes proxies once the new primary reports itself primary",
     lambda: snap(replace(cluster("k2", ("k1", "k3")), proxy=ProxySpec(None, 4),
                          transition=Transition("failover", "k1", "k2", "promote", NOW - 1, 4)),
                  [ks("k2", "primary", tl=2, repl=rows("k3")), ks("k3")], proxies=[ProxyStatus("p1", generation=4)]),
     lambda d, cd: (cd.transition is None and cd.proxy.target == "k2" and cd.proxy.generation == 5
                    and cd.timeline == 2) or pytest.fail(str(cd))),
    # ---------------------------------------------------------------- switchover
    ("switchover to a healthy replica starts a transition",
     lambda: snap(cluster(), healthy3(), commands={"switchover": {"id": "s1", "to": "k3"}}),
     lambda d, cd: (cd.transition is not None and cd.transition.kind == "switchover" and cd.transition.new == "k3"
                    and cd.last_switchover["state"] == "running" and "switchover" in d.consumed)
     or pytest.fail(str(cd))),
    ("switchover starts by preparing: nothing fenced yet, the old primary still primary and routed",
     lambda: snap(cluster(), healthy3(), commands={"switchover": {"id": "s1", "to": "k3"}}),
     lambda d, cd: (cd.transition.stage == "prepare" and cd.proxy.target == "k1" and cd.proxy.generation == 3
                    and cd.keepers["k1"].role == "primary" and cd.primary == "k1") or pytest.fail(str(cd))),
    ("prepare waits for the old primary's checkpoint",
     lambda: snap(_preparing(), healthy3()),
     lambda d, cd: (d.cd is None) or pytest.fail(str(d.events))),
    ("prepare fences once the old primary checkpointed for this switchover",
     lambda: snap(_preparing(), [replace(healthy3()[0], checkpointed_for=NOW - 0.1), *healthy3()[1:]]),
     lambda d, cd: (cd.transition.stage == "fence" and cd.transition.started == NOW
                    and cd.proxy.target is None and cd.proxy.generation == 4 and cd.keepers["k1"].role == "none"
                    and any("k1 checkpointed in" in e for e in d.events)) or pytest.fail(str(cd))),
    ("a checkpoint for an earlier switchover does not count",
     lambda: snap(_preparing(), [replace(healthy3()[0], checkpointed_for=NOW - 50), *healthy3()[1:]]),
     lambda d, cd: (d.cd is None) or pytest.fail(str(d.events))),
    ("prepare fences anyway after PREPARE_TIMEOUT (a keeper that does not know the stage)",
     lambda: snap(_preparing(started=NOW - 6), healthy3()),
     lambda d, cd: (cd.transition.stage == "fence" and cd.proxy.target is None
                    and any("fencing anyway" in e for e in d.events)) or pytest.fail(str(cd))),
    ("the old primary failing while preparing abandons the switchover (then fails over as usual)",
     lambda: snap(_preparing(), [ks("k2"), ks("k3")]),
     lambda d, cd: (cd.transition is None or cd.transition.kind == "failover")
     and cd.last_switchover["state"] == "failed" and any("abandoned before fencing" in e for e in d.events)
     or pytest.fail(str(cd))),
    ("the target failing while preparing abandons the switchover, the primary untouched",
     lambda: snap(_preparing(), [ks("k1", "primary", repl=rows("k2")), ks("k2")]),
     lambda d, cd: (cd.transition is None and cd.primary == "k1" and cd.proxy.target == "k1"
                    and cd.last_switchover["state"] == "failed") or pytest.fail(str(cd))),
    ("switchover to the primary is refused",
     lambda: snap(cluster(), healthy3(), commands={"switchover": {"id": "s1", "to": "k1"}}),
     lambda d, cd: (cd.transition is None and cd.last_switchover["state"] == "failed"
                    and "already the primary" in cd.last_switchover["reason"]) or pytest.fail(str(cd))),
    ("switchover waits for the target to receive the old primary's final WAL",
     lambda: snap(replace(cluster(), proxy=ProxySpec(None, 4),
                          transition=Transition("switchover", "k1", "k2", "fence", NOW - 1, 4, request_id="s1")),
                  [ks("k1", "none", running=False, final_lsn=500), ks("k2", lsn=400), ks("k3")],
                  proxies=[ProxyStatus("p1", generation=4)]),
     lambda d, cd: (cd.transition is not None and cd.transition.stage == "fence" and cd.transition.old_final_lsn == 500)
     or pytest.fail(str(cd))),
    ("switchover promotes once the target caught up",
     lambda: snap(replace(cluster(), proxy=ProxySpec(None, 4),
                          transition=Transition("switchover", "k1", "k2", "fence", NOW - 1, 4, request_id="s1")),
                  [ks("k1", "none", running=False, final_lsn=500), ks("k2", lsn=600), ks("k3")],
                  proxies=[ProxyStatus("p1", generation=4)]),
     lambda d, cd: (cd.transition is not None and cd.transition.stage == "promote" and cd.primary == "k2")
     or pytest.fail(str(cd))),
    ("switchover aborted after its timeout restores the old primary",
     lambda: snap(replace(cluster(), proxy=ProxySpec(None, 4), last_switchover={"id": "s1", "state": "running"},
                          transition=Transition("switchover", "k1", "k2", "fence", NOW - 90, 4, request_id="s1")),
                  [ks("k1", "none", running=False, final_lsn=500), ks("k2", lsn=400), ks("k3")],
                  proxies=[ProxyStatus("p1", generation=4)], mono=100.0),
     lambda d, cd: (cd.transition is None and cd.keepers["k1"].role == "primary" and cd.proxy.target == "k1"
                    and cd.last_switchover["state"] == "failed") or pytest.fail(str(cd))),
    # ---------------------------------------------------------------- synchronous replication
    ("sync mode: a streaming replica becomes the synchronous standby",
     lambda: snap(cluster(spec=spec(synchronous_replication=True)), healthy3()),
     lambda d, cd: (cd.sync.standbys == ("k2",) and cd.keepers["k1"].synchronous_standbys == ("k2",)
                    and cd.sync.candidates == ()) or pytest.fail(str(cd.sync))),
    ("sync mode: the barrier is taken when the primary reports the set applied",
     lambda: snap(cluster(spec=spec(synchronous_replication=True), sync=SyncState(("k2",))),
                  [ks("k1", "primary", lsn=700, sync=("k2",), repl=rows("k2", "k3", sync=("k2",))), ks("k2"), ks("k3")]),
     lambda d, cd: (cd.sync.barrier == 700 and cd.sync.candidates == ()) or pytest.fail(str(cd.sync))),
    ("sync mode: a standby past the barrier becomes a failover candidate",
     lambda: snap(cluster(spec=spec(synchronous_replication=True),
                          sync=SyncState(("k2",), barrier=700, barrier_time=NOW - 1)),
                  [ks("k1", "primary", lsn=800, sync=("k2",), repl=rows("k2", "k3", sync=("k2",), flush=750)),
                   ks("k2"), ks("k3")]),
     lambda d, cd: (cd.sync.candidates == ("k2",)) or pytest.fail(str(cd.sync))),
    ("sync mode: a standby behind the barrier is not yet a candidate",
     lambda: snap(cluster(spec=spec(synchronous_replication=True),
                          sync=SyncState(("k2",), barrier=700, barrier_time=NOW - 1)),
                  [ks("k1", "primary", lsn=800, sync=("k2",), repl=rows("k2", "k3", sync=("k2",), flush=600)),
                   ks("k2"), ks("k3")]),
     lambda d, cd: (cd.sync.candidates == ()) or pytest.fail(str(cd.sync))),
    ("sync mode: only a synchronous candidate may be elected, even if less advanced",
     lambda: snap(cluster(spec=spec(synchronous_replication=True), sync=SyncState(("k2",), ("k2",), 700)),
                  [ks("k2", lsn=100), ks("k3", lsn=900)]),
     lambda d, cd: (cd.transition is not None and cd.transition.new == "k2") or pytest.fail(str(cd))),
    ("sync mode: no candidate means no failover",
     lambda: snap(cluster(spec=spec(synchronous_replication=True), sync=SyncState(("k2",), (), None)),
                  [ks("k2"), ks("k3")]),
     lambda d, cd: (cd.transition is None and "synchronous standby" in cd.message) or pytest.fail(cd.message)),
    ("sync mode: a dead sync standby is replaced; it leaves the candidates at once",
     lambda: snap(cluster(spec=spec(synchronous_replication=True), sync=SyncState(("k2",), ("k2",), 700)),
                  [ks("k1", "primary", lsn=800, sync=("k2",), repl=rows("k3")), ks("k3")]),
     lambda d, cd: (cd.sync.standbys == ("k3",) and cd.sync.candidates == () and cd.sync.barrier is None)
     or pytest.fail(str(cd.sync))),
    ("sync mode: with no replacement the dead standby stays listed (writes block, nothing is lost)",
     lambda: snap(cluster(replicas=("k2",), spec=spec(synchronous_replication=True),
                          sync=SyncState(("k2",), ("k2",), 700)),
                  [ks("k1", "primary", lsn=800, sync=("k2",), repl=())]),
     lambda d, cd: (cd.sync.standbys == ("k2",) and cd.sync.candidates == ("k2",)) or pytest.fail(str(cd.sync))),
    ("sync mode: min_synchronous_standbys 0 drops the dead standby",
     lambda: snap(cluster(replicas=("k2",), spec=spec(synchronous_replication=True, min_synchronous_standbys=0),
                          sync=SyncState(("k2",), ("k2",), 700)),
                  [ks("k1", "primary", lsn=800, sync=("k2",), repl=())]),
     lambda d, cd: (cd.sync.standbys == () and cd.keepers["k1"].synchronous_standbys == ())
     or pytest.fail(str(cd.sync))),
    ("sync mode: new primary starts with a live synchronous standby before accepting writes",
     lambda: snap(replace(cluster(spec=spec(synchronous_replication=True), sync=SyncState(("k2",), ("k2",), 700)),
                          proxy=ProxySpec(None, 4), keepers={**cluster().keepers, "k1": KeeperSpec(role="none")},
                          transition=Transition("failover", "k1", "k2", "fence", NOW - 1, 4)),
                  [ks("k2"), ks("k3")], proxies=[ProxyStatus("p1", generation=4)]),
     lambda d, cd: (cd.keepers["k2"].synchronous_standbys == ("k3",) and cd.sync.standbys == ("k3",)
                    and cd.sync.candidates == ()) or pytest.fail(str(cd))),
    # ---------------------------------------------------------------- drain (maintenance of a replica)
    ("drain: the drained sync standby is replaced by another streaming replica and leaves the RO targets",
     lambda: snap(cluster(spec=spec(synchronous_replication=True), sync=SyncState(("k2",), ("k2",), 700)),
                  [ks("k1", "primary", lsn=800, sync=("k2",), repl=rows("k2", "k3", sync=("k2",))), ks("k2"), ks("k3")],
                  commands={"drain/k2": {"drained": True}}),
     lambda d, cd: (cd.keepers["k2"].drained and cd.sync.standbys == ("k3",) and cd.sync.candidates == ()
                    and cd.keepers["k1"].synchronous_standbys == ("k3",) and cd.proxy.ro_targets == ("k3",)
                    and d.consumed == ("drain/k2",)) or pytest.fail(f"{cd.sync} {cd.proxy} {d.events}")),
    ("drain: with no other replica the drained sync standby stays synchronous (commits block, nothing is lost)",
     lambda: snap(cluster(replicas=("k2",), spec=spec(synchronous_replication=True),
                          sync=SyncState(("k2",), ("k2",), 700)),
                  [ks("k1", "primary", lsn=800, sync=("k2",), repl=rows("k2", sync=("k2",))), ks("k2")],
                  commands={"drain/k2": {"drained": True}}),
     lambda d, cd: (cd.keepers["k2"].drained and cd.sync.standbys == ("k2",) and cd.sync.candidates == ("k2",))
     or pytest.fail(str(cd.sync))),
    ("drain: a drained keeper is not chosen as synchronous standby while another one can be",
     lambda: snap(cluster(spec=spec(synchronous_replication=True),
                          keepers={**cluster().keepers, "k2": KeeperSpec(role="replica", follow="k1", address="h:k2",
                                                                         drained=True)}),
                  [ks("k1", "primary", lsn=800, repl=rows("k2", "k3")), ks("k2"), ks("k3")]),
     lambda d, cd: (cd.sync.standbys == ("k3",)) or pytest.fail(str(cd.sync))),
    ("drain --undo: the keeper is no longer drained, the synchronous standby stays where it is",
     lambda: snap(cluster(spec=spec(synchronous_replication=True), sync=SyncState(("k3",), ("k3",), 700),
                          keepers={**cluster().keepers, "k2": KeeperSpec(role="replica", follow="k1", address="h:k2",
                                                                         drained=True)}),
                  [ks("k1", "primary", lsn=800, sync=("k3",), repl=rows("k2", "k3", sync=("k3",))), ks("k2"), ks("k3")],
                  commands={"drain/k2": {"drained": False}}),
     lambda d, cd: (not cd.keepers["k2"].drained and cd.sync.standbys == ("k3",) and "k2" in cd.proxy.ro_targets)
     or pytest.fail(f"{cd.sync} {cd.proxy}")),
    ("drain: a switchover without a target prefers a keeper that is not drained",
     lambda: snap(cluster(keepers={**cluster().keepers, "k2": KeeperSpec(role="replica", follow="k1", address="h:k2",
                                                                         drained=True)}),
                  [ks("k1", "primary", lsn=100, repl=rows("k2", "k3")), ks("k2", lsn=100), ks("k3", lsn=90)],
                  commands={"switchover": {"id": "s1"}}),
     lambda d, cd: (cd.transition is not None and cd.transition.new == "k3") or pytest.fail(str(cd.transition))),
    ("drain of an unknown keeper is ignored",
     lambda: snap(cluster(), healthy3(), commands={"drain/k9": {"drained": True}}),
     lambda d, cd: (d.consumed == ("drain/k9",) and any("no such keeper" in e for e in d.events))
     or pytest.fail(str(d))),
    # ---------------------------------------------------------------- membership
    ("removekeeper removes a replica and refuses the primary",
     lambda: snap(cluster(), healthy3(), commands={"removekeeper/k3": {}, "removekeeper/k1": {}}),
     lambda d, cd: ("k3" not in cd.keepers and "k1" in cd.keepers and
                    set(d.consumed) == {"removekeeper/k3", "removekeeper/k1"}) or pytest.fail(str(d))),
]


@pytest.mark.parametrize("name,make,check", CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, make: Callable[[], Snapshot], check: Callable[[Decision, ClusterData], None]) -> None:
    d, cd = run(make())
    check(d, cd)


def test_lag_relative_to_last_known_primary_position() -> None:
    mem = Memory(primary_lsn=10_000_000)
    d, cd = run(snap(cluster(), [ks("k2", lsn=10), ks("k3", lsn=20)]), mem)
    assert cd.transition is None
    assert "max_standby_lag" in cd.message


def test_unhealthy_primary_fails_after_fail_interval() -> None:
    mem = Memory()
    s = snap(cluster(), [ks("k1", "primary", healthy=False), ks("k2"), ks("k3")], mono=100.0)
    d, cd = run(s, mem)
    assert cd.transition is None
    s2 = replace(s, mono=100.0 + cd.spec.fail_interval + 0.1)
    d, cd = run(s2, mem)
    assert cd.transition is not None and "unhealthy" in cd.transition.reason


def test_dead_keeper_removed_after_interval() -> None:
    mem = Memory()
    sp = spec(dead_keeper_removal_interval="10s")
    s = snap(cluster(spec=sp), healthy3()[:2], mono=100.0)
    run(s, mem)
    d, cd = run(replace(s, mono=111.0), mem)
    assert "k3" not in cd.keepers
    assert any("removing keeper k3" in e for e in d.events)


def test_every_write_bumps_generation() -> None:
    d, cd = run(snap(cluster(), healthy3() + [ks("k4", "none", cluster=None)]))
    assert cd.generation == 6


def test_decisions_are_explained() -> None:
    d, _ = run(snap(cluster(), [ks("k2", lsn=90), ks("k3", lsn=95)]))
    assert any("electing k3" in e and "most advanced" in e for e in d.events)


def test_the_lease_of_each_keeper_is_remembered_for_when_its_key_is_gone() -> None:
    mem = Memory()
    decide(replace(snap(cluster(), healthy3()), keeper_leases={"k1": 11, "k2": 12, "k3": 0}), mem)
    assert mem.keeper_leases == {"k1": 11, "k2": 12}
