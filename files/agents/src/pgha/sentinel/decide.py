"""The leading sentinel's decisions, as a pure function of a snapshot of the store and the clock.

``decide(snapshot, memory)`` returns the new desired cluster data (or None when nothing changes),
the sentinel's updated in-memory timers, the command keys it consumed, and one line per decision
saying what was decided and why. No I/O happens here; ``pgha.sentinel.main`` does the reading and
the compare-and-swap write.

The rules, in order:

* **Init.** With a spec and no cluster data, create it (phase ``initializing``) and pick the first
  registered keeper (by uid) that may be master and has no data of another cluster; it runs initdb
  and becomes primary. Phase becomes ``normal`` when it reports itself a running primary.
* **Membership.** A keeper that registers with no cluster (fresh data dir) or with this cluster is
  added as a replica of the primary. A keeper with another cluster's data is ignored (logged).
* **Failure.** A keeper has failed when its status key is gone (lease expired), when ``pghactl
  failkeeper`` asked for it, or when its PostgreSQL has been unhealthy for longer than
  ``fail_interval``. A new leader starts its unhealthy timers afresh.
* **Election.** When the primary fails, the most advanced eligible replica is chosen: healthy,
  running as a replica, allowed to be master, same system id and timeline as the cluster, lag within
  ``max_standby_lag`` (asynchronous mode) or a member of the synchronous candidates (synchronous
  mode). With no eligible replica the primary is kept and ``message`` says why.
* **Fencing (layer 1).** A primary change is a two-stage transition. ``fence``: proxies are told to
  route nowhere (new proxy generation) and the old primary to stop; the new primary is promoted only
  once every live proxy has acknowledged that generation (a proxy whose lease expired is not
  waited for), the old primary can no longer accept writes (below) and, for a switchover, the
  target has received the old primary's final WAL. ``promote``: the new primary is told to
  promote; when it reports itself primary, proxies are pointed at it.

  **The invariant: a new primary is never promoted while the old one may still acknowledge a
  write.** The old primary counts as stopped when either

  - its keeper is still registered and reports, after reading that it must stop (``desired_role``
    none), that PostgreSQL is not running; or
  - its status key is gone *because its lease is gone* (``leases_alive`` says so for the lease the
    key last had; a key deleted while its lease lives does not count). The server expires a lease
    no earlier than its granted TTL after the last renewal it saw, and the keeper's fence timer
    kills a primary PostgreSQL ``fence_margin`` (1 s at the default TTL) before that, counted from
    the renewal it *sent* (which the server saw later) and the TTL the server *granted*. So when
    the key is gone, the old primary stopped at least that margin earlier, however the keeper and
    the store were cut off. A proxy whose key is gone likewise stopped relaying a margin before.
* **Synchronous replication.** See ``manage_sync``.
* **Drain.** ``pghactl drain KEEPER`` (before restarting a replica for maintenance) takes the keeper
  out of the synchronous standbys, when another streaming replica can take its place, and out of the
  read-only targets, so that its restart stalls no commit and cuts no read-only client; it is
  elected or chosen for a switchover only when no other replica is eligible. ``pghactl drain --undo``
  ends it.
"""

from __future__ import annotations

from dataclasses import replace

from pgha.model import (
    COMMAND_SWITCHOVER,
    PHASE_INITIALIZING,
    PHASE_NORMAL,
    ROLE_NONE,
    ROLE_PRIMARY,
    ROLE_REPLICA,
    ClusterData,
    KeeperSpec,
    KeeperStatus,
    ProxySpec,
    SyncState,
)
from pgha.sentinel.context import Ctx, Decision, Memory, Snapshot, failed, track_health
from pgha.sentinel.election import failover, start_switchover
from pgha.sentinel.syncset import manage_sync
from pgha.sentinel.transitions import advance_transition

__all__ = ["Decision", "Memory", "Snapshot", "decide"]


def decide(snap: Snapshot, memory: Memory) -> Decision:
    ctx = Ctx(snap, memory)
    old = snap.cd
    cd = _decide(ctx, old)
    if cd is not None and old is not None and cd == old:
        cd = None
    if cd is not None:
        cd = replace(cd, generation=(old.generation + 1) if old else 1)
    return Decision(cd=cd, events=tuple(ctx.events), consumed=tuple(ctx.consumed))


def _decide(ctx: Ctx, cd: ClusterData | None) -> ClusterData | None:
    snap = ctx.snap
    if snap.spec is None or snap.spec_uid is None:
        return None  # not initialized: nothing to do
    if cd is None or cd.uid != snap.spec_uid:
        ctx.log(f"creating cluster data for cluster {snap.cluster_name} (uid {snap.spec_uid}), phase initializing")
        ctx.mem.init_started = snap.mono
        return ClusterData(uid=snap.spec_uid, name=snap.cluster_name, spec=snap.spec)
    if cd.spec != snap.spec:
        ctx.log("spec changed: distributing the new spec to the keepers")
        cd = replace(cd, spec=snap.spec)

    track_health(ctx, cd)
    cd = _membership(ctx, cd)
    if cd.phase == PHASE_INITIALIZING:
        return _initialize(ctx, cd)
    cd = _commands(ctx, cd)
    if cd.transition is not None:
        return advance_transition(ctx, cd)
    if cd.primary is not None and failed(ctx, cd, cd.primary):
        return failover(ctx, cd)
    return _steady(ctx, cd)


# ----------------------------------------------------------------------------- membership


def _membership(ctx: Ctx, cd: ClusterData) -> ClusterData:
    snap = ctx.snap
    for uid in sorted(snap.keepers):
        st = snap.keepers[uid]
        if st.cluster_uid not in _joinable(cd):
            if uid not in ctx.mem.ignored:
                ctx.mem.ignored.add(uid)
                ctx.log(f"ignoring keeper {uid}: its data directory belongs to cluster {st.cluster_uid}")
            continue
        if cd.system_id and st.system_id and st.system_id != cd.system_id and uid not in cd.keepers:
            if uid not in ctx.mem.ignored:
                ctx.mem.ignored.add(uid)
                ctx.log(f"ignoring keeper {uid}: system id {st.system_id} differs from the cluster's {cd.system_id}")
            continue
        if uid not in cd.keepers:
            if cd.phase == PHASE_NORMAL and cd.primary:
                ctx.log(f"adding keeper {uid} as a replica of {cd.primary}")
                cd = cd.with_keeper(uid, role=ROLE_REPLICA, follow=cd.primary, address=st.address)
            continue
        if st.address and cd.keepers[uid].address != st.address:
            ctx.log(f"keeper {uid} now advertises {st.address}")
            cd = cd.with_keeper(uid, address=st.address)
    # dead keeper removal: long gone, never the primary or a transition party
    limit = cd.spec.dead_keeper_removal_interval
    for uid in sorted(cd.keepers):
        if uid in snap.keepers or uid == cd.primary:
            continue
        if cd.transition and uid in (cd.transition.old, cd.transition.new):
            continue
        seen = ctx.mem.last_seen.setdefault(uid, snap.mono)
        if snap.mono - seen > limit:
            ctx.log(f"removing keeper {uid}: not seen for {snap.mono - seen:.0f}s (> dead_keeper_removal_interval)")
            cd = _remove_keeper(cd, uid)
    return cd


def _joinable(cd: ClusterData) -> tuple[str | None, ...]:
    """The cluster uids a keeper's data may belong to for it to take part: none yet, this cluster,
    or the clusters this one restores in place (init_mode pitr with pghactl init --yes: that data is
    discarded)."""
    return (None, cd.uid, *cd.spec.replaced_clusters)


def _remove_keeper(cd: ClusterData, uid: str) -> ClusterData:
    cd = cd.without_keeper(uid)
    sync = cd.sync
    if uid in sync.standbys or uid in sync.candidates:
        sync = SyncState(
            standbys=tuple(s for s in sync.standbys if s != uid),
            candidates=tuple(s for s in sync.candidates if s != uid),
            barrier=None,
        )
        cd = replace(cd, sync=sync)
        if cd.primary in cd.keepers:
            cd = cd.with_keeper(cd.primary, synchronous_standbys=sync.standbys)
    return cd


# ----------------------------------------------------------------------------- init


def _initialize(ctx: Ctx, cd: ClusterData) -> ClusterData:
    snap = ctx.snap
    spec = cd.spec
    if cd.primary is None:
        if spec.init_mode == "existing":
            uid = spec.existing_keeper
            st = snap.keepers.get(uid)
            if st is None:
                return replace(cd, message=f"waiting for keeper {uid} (init_mode existing) to register")
            chosen, init = uid, "existing"
        else:
            fresh = [u for u in sorted(snap.keepers)
                     if snap.keepers[u].cluster_uid in _joinable(cd) and snap.keepers[u].can_be_master
                     and not snap.keepers[u].error]
            if spec.init_mode == "pitr":
                # only a keeper that reaches the backup repository can restore from it
                fresh = [u for u in fresh if snap.keepers[u].backup.get("repo")]
                if not fresh:
                    return replace(cd, message="waiting for a keeper with a backup repository (--backup-repo-path) "
                                               "to register (init_mode pitr)")
            if not fresh:
                return replace(cd, message="waiting for a keeper that can be master to register")
            chosen, init = fresh[0], spec.init_mode if spec.init_mode == "pitr" else "new"
        ctx.mem.init_started = snap.mono
        doing = {"new": "run initdb", "existing": "adopt its data", "pitr": "restore the backup (point-in-time recovery)"}
        ctx.log(f"initializing: keeper {chosen} will {doing[init]} and become primary")
        cd = cd.with_keeper(chosen, role=ROLE_PRIMARY, follow=None, init=init,
                            address=snap.keepers[chosen].address)
        return replace(cd, primary=chosen, message=f"initializing on keeper {chosen}")

    st = snap.keepers.get(cd.primary)
    if st is not None and st.role == ROLE_PRIMARY and st.healthy and st.cluster_uid == cd.uid \
            and not st.roles_ready:
        # PostgreSQL answers before the keeper has created the roles and the application database:
        # routing clients now would greet them with 'database "app" does not exist'
        return replace(cd, message=f"initializing on keeper {cd.primary}: waiting for its roles and database")
    if st is not None and st.role == ROLE_PRIMARY and st.healthy and st.cluster_uid == cd.uid:
        ctx.log(f"cluster initialized: keeper {cd.primary} is primary (system id {st.system_id}, "
                f"timeline {st.timeline}); routing proxies to it")
        cd = cd.with_keeper(cd.primary, init=None)
        for uid in sorted(snap.keepers):
            if uid != cd.primary and uid not in cd.keepers and snap.keepers[uid].cluster_uid in _joinable(cd):
                ctx.log(f"adding keeper {uid} as a replica of {cd.primary}")
                cd = cd.with_keeper(uid, role=ROLE_REPLICA, follow=cd.primary, address=snap.keepers[uid].address)
        return replace(cd, phase=PHASE_NORMAL, system_id=st.system_id, timeline=st.timeline,
                       proxy=ProxySpec(target=cd.primary, generation=cd.proxy.generation + 1),
                       message="")
    started = ctx.mem.init_started if ctx.mem.init_started is not None else snap.mono
    ctx.mem.init_started = started
    if st is None and snap.mono - started > cd.spec.convergence_timeout:
        ctx.log(f"initialization on keeper {cd.primary} did not finish within "
                f"{cd.spec.convergence_timeout}s and the keeper is gone: choosing again")
        cd = cd.without_keeper(cd.primary)
        return replace(cd, primary=None, message="initialization failed; choosing another keeper")
    return cd


# ----------------------------------------------------------------------------- commands


def _commands(ctx: Ctx, cd: ClusterData) -> ClusterData:
    snap = ctx.snap
    for name in sorted(snap.commands):
        cmd = snap.commands[name]
        uid = cmd.keeper or ""
        if cmd.kind == "failkeeper":
            ctx.consumed.append(name)
            if uid not in cd.keepers:
                ctx.log(f"failkeeper {uid}: no such keeper, ignored")
            else:
                ctx.log(f"failkeeper {uid}: treating it as failed for this check")
        elif cmd.kind == "removekeeper":
            ctx.consumed.append(name)
            if uid == cd.primary or (cd.transition and uid in (cd.transition.old, cd.transition.new)):
                ctx.log(f"removekeeper {uid}: refused, it is the primary or part of a transition")
            elif uid in cd.keepers:
                ctx.log(f"removekeeper {uid}: removed from the cluster")
                cd = _remove_keeper(cd, uid)
        elif cmd.kind == "drain":
            ctx.consumed.append(name)
            drained = cmd.drained
            if uid not in cd.keepers:
                ctx.log(f"drain {uid}: no such keeper, ignored")
            elif cd.keepers[uid].drained != drained:
                ctx.log(f"keeper {uid} drained for maintenance: out of the synchronous standbys (when another "
                        f"replica can take its place) and the read-only targets" if drained
                        else f"keeper {uid} no longer drained: it may again be a synchronous standby and serve reads")
                cd = cd.with_keeper(uid, drained=drained)
        elif cmd.kind == COMMAND_SWITCHOVER:
            if cd.transition is not None:
                continue  # handled when the current transition ends
            ctx.consumed.append(name)
            cd = start_switchover(ctx, cd, cmd)
    return cd


# ----------------------------------------------------------------------------- steady state


def _steady(ctx: Ctx, cd: ClusterData) -> ClusterData:
    snap = ctx.snap
    primary = cd.primary
    if primary is None:
        return cd
    pst = snap.keepers.get(primary)
    # replicas follow the primary
    for uid in sorted(cd.keepers):
        k = cd.keepers[uid]
        if uid != primary and k.role == ROLE_REPLICA and k.follow != primary:
            cd = cd.with_keeper(uid, follow=primary)
        if uid != primary and k.role == ROLE_NONE and (uid in snap.keepers):
            # a fenced old primary that is alive again rejoins as a replica
            ctx.log(f"keeper {uid} is back: rejoining as a replica of {primary}")
            cd = cd.with_keeper(uid, role=ROLE_REPLICA, follow=primary, synchronous_standbys=())
    if cd.keepers.get(primary, KeeperSpec()).role != ROLE_PRIMARY:
        cd = cd.with_keeper(primary, role=ROLE_PRIMARY, follow=None)
    primary_ok = pst is not None and pst.role == ROLE_PRIMARY and pst.healthy
    if primary_ok and cd.proxy.target != primary:
        ctx.log(f"routing proxies to primary {primary}")
        cd = replace(cd, proxy=replace(cd.proxy, target=primary, generation=cd.proxy.generation + 1))
    if primary_ok and cd.message and not cd.message.startswith("switchover"):
        cd = replace(cd, message="")
    if primary_ok:
        assert pst is not None
        if cd.timeline is None and pst.timeline is not None:
            cd = replace(cd, timeline=pst.timeline)
        cd = manage_sync(ctx, cd, pst)
        cd = _ro_targets(ctx, cd, pst)
    return cd


def _ro_targets(ctx: Ctx, cd: ClusterData, pst: KeeperStatus) -> ClusterData:
    snap = ctx.snap
    limit = cd.spec.max_standby_lag
    out = []
    rows = {r.name: r for r in pst.replication if r.state == "streaming"}
    for uid in sorted(cd.keepers):
        if uid == cd.primary or uid not in rows or cd.keepers[uid].role != ROLE_REPLICA or cd.keepers[uid].drained:
            continue
        st = snap.keepers.get(uid)
        if st is None or not st.healthy or st.role != ROLE_REPLICA:
            continue
        replay = st.replay_lsn if st.replay_lsn is not None else st.lsn
        if pst.lsn is not None and replay is not None and pst.lsn - replay > limit:
            continue
        out.append(uid)
    targets = tuple(out)
    if targets != cd.proxy.ro_targets:
        ctx.log(f"read-only targets: {list(targets) or 'none (the primary serves read-only traffic)'}")
        cd = replace(cd, proxy=replace(cd.proxy, ro_targets=targets, generation=cd.proxy.generation + 1))
    return cd
