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

import uuid
from dataclasses import dataclass, field, replace

from pgha.model import (
    COMMAND_SWITCHOVER,
    PHASE_INITIALIZING,
    PHASE_NORMAL,
    ROLE_NONE,
    ROLE_PRIMARY,
    ROLE_REPLICA,
    ClusterData,
    Command,
    KeeperSpec,
    KeeperStatus,
    ProxySpec,
    ProxyStatus,
    SyncState,
    Transition,
)
from pgha.spec import Spec


@dataclass(frozen=True)
class Snapshot:
    now: float  # wall clock, for timestamps written to the store
    mono: float  # monotonic clock, for timers
    cluster_name: str
    spec: Spec | None  # the spec key's, parsed; None before init
    spec_uid: str | None  # the cluster uid the spec was created with
    cd: ClusterData | None
    keepers: dict[str, KeeperStatus]  # live keepers (status key present)
    proxies: dict[str, ProxyStatus]  # live proxies
    commands: dict[str, Command] = field(default_factory=dict)  # command key name -> request
    keeper_leases: dict[str, int] = field(default_factory=dict)  # live keeper -> lease of its status key
    # absent keeper (the primary, or a transition's old primary) -> whether the lease its status key
    # had when this sentinel last saw it still exists (asked by the sentinel; missing: never seen)
    leases_alive: dict[str, bool] = field(default_factory=dict)


@dataclass
class Memory:
    """Timers the leading sentinel keeps in memory; reset when it (re)gains leadership."""

    unhealthy_since: dict[str, float] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)
    primary_lsn: int | None = None  # last LSN the primary reported
    init_started: float | None = None
    ignored: set[str] = field(default_factory=set)  # keepers already logged as foreign
    keeper_leases: dict[str, int] = field(default_factory=dict)  # keeper -> lease its status key last had


@dataclass(frozen=True)
class Decision:
    cd: ClusterData | None  # the new cluster data to write, or None when unchanged
    events: tuple[str, ...]
    consumed: tuple[str, ...] = ()  # command key names to delete


class _Ctx:
    """Scratch state of one decide() call."""

    def __init__(self, snap: Snapshot, memory: Memory) -> None:
        self.snap = snap
        self.mem = memory
        self.events: list[str] = []
        self.consumed: list[str] = []

    def log(self, text: str) -> None:
        self.events.append(text)


def decide(snap: Snapshot, memory: Memory) -> Decision:
    ctx = _Ctx(snap, memory)
    old = snap.cd
    cd = _decide(ctx, old)
    if cd is not None and old is not None and cd == old:
        cd = None
    if cd is not None:
        cd = replace(cd, generation=(old.generation + 1) if old else 1)
    return Decision(cd=cd, events=tuple(ctx.events), consumed=tuple(ctx.consumed))


def _decide(ctx: _Ctx, cd: ClusterData | None) -> ClusterData | None:
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

    _track_health(ctx, cd)
    cd = _membership(ctx, cd)
    if cd.phase == PHASE_INITIALIZING:
        return _initialize(ctx, cd)
    cd = _commands(ctx, cd)
    if cd.transition is not None:
        return _advance_transition(ctx, cd)
    if cd.primary is not None and _failed(ctx, cd, cd.primary):
        return _failover(ctx, cd)
    return _steady(ctx, cd)


# ----------------------------------------------------------------------------- health


def _track_health(ctx: _Ctx, cd: ClusterData) -> None:
    snap, mem = ctx.snap, ctx.mem
    mem.keeper_leases.update({uid: lid for uid, lid in snap.keeper_leases.items() if lid})
    for uid, st in snap.keepers.items():
        mem.last_seen[uid] = snap.mono
        if st.healthy:
            mem.unhealthy_since.pop(uid, None)
        else:
            mem.unhealthy_since.setdefault(uid, snap.mono)
    for uid in list(mem.unhealthy_since):
        if uid not in snap.keepers:
            mem.unhealthy_since.pop(uid, None)
    if cd.primary and cd.primary in snap.keepers:
        st = snap.keepers[cd.primary]
        if st.role == ROLE_PRIMARY and st.lsn is not None:
            mem.primary_lsn = st.lsn


def _failure_reason(ctx: _Ctx, cd: ClusterData, uid: str) -> str | None:
    snap = ctx.snap
    if f"failkeeper/{uid}" in snap.commands:
        return "failed on request (pghactl failkeeper)"
    st = snap.keepers.get(uid)
    if st is None:
        return "its lease expired (no status in the store)"
    since = ctx.mem.unhealthy_since.get(uid)
    if since is not None and snap.mono - since > cd.spec.fail_interval:
        return f"PostgreSQL unhealthy for {snap.mono - since:.1f}s (> fail_interval {cd.spec.fail_interval}s)"
    if uid == cd.primary and cd.transition is None and st.role != ROLE_PRIMARY and since is not None \
            and snap.mono - since > cd.spec.fail_interval:
        return "not running as primary"
    return None


def _failed(ctx: _Ctx, cd: ClusterData, uid: str) -> bool:
    return _failure_reason(ctx, cd, uid) is not None


# ----------------------------------------------------------------------------- membership


def _membership(ctx: _Ctx, cd: ClusterData) -> ClusterData:
    snap = ctx.snap
    for uid in sorted(snap.keepers):
        st = snap.keepers[uid]
        if st.cluster_uid not in (None, cd.uid):
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


def _initialize(ctx: _Ctx, cd: ClusterData) -> ClusterData:
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
                     if snap.keepers[u].cluster_uid in (None, cd.uid) and snap.keepers[u].can_be_master
                     and not snap.keepers[u].error]
            if not fresh:
                return replace(cd, message="waiting for a keeper that can be master to register")
            chosen, init = fresh[0], "new"
        ctx.mem.init_started = snap.mono
        ctx.log(f"initializing: keeper {chosen} will {'run initdb' if init == 'new' else 'adopt its data'} "
                f"and become primary")
        cd = cd.with_keeper(chosen, role=ROLE_PRIMARY, follow=None, init=init,
                            address=snap.keepers[chosen].address)
        return replace(cd, primary=chosen, message=f"initializing on keeper {chosen}")

    st = snap.keepers.get(cd.primary)
    if st is not None and st.role == ROLE_PRIMARY and st.healthy and st.cluster_uid == cd.uid:
        ctx.log(f"cluster initialized: keeper {cd.primary} is primary (system id {st.system_id}, "
                f"timeline {st.timeline}); routing proxies to it")
        cd = cd.with_keeper(cd.primary, init=None)
        for uid in sorted(snap.keepers):
            if uid != cd.primary and uid not in cd.keepers and snap.keepers[uid].cluster_uid in (None, cd.uid):
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


def _commands(ctx: _Ctx, cd: ClusterData) -> ClusterData:
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
            cd = _start_switchover(ctx, cd, cmd)
    return cd


# ----------------------------------------------------------------------------- election


def eligible(ctx: _Ctx, cd: ClusterData, exclude: str | None) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Replicas that may become primary, most advanced first, and why each other one may not."""
    snap = ctx.snap
    sync_mode = _sync_in_effect(cd)
    out: list[tuple[str, int]] = []
    why: dict[str, str] = {}
    candidates: list[tuple[str, KeeperStatus]] = []
    for uid in sorted(cd.keepers):
        if uid == exclude:
            continue
        spec = cd.keepers[uid]
        st = snap.keepers.get(uid)
        reason = _failure_reason(ctx, cd, uid)
        if reason:
            why[uid] = reason
        elif spec.role != ROLE_REPLICA:
            why[uid] = f"its desired role is {spec.role}"
        elif st is None or not st.healthy or st.role != ROLE_REPLICA:
            why[uid] = "not a healthy running replica"
        elif not st.can_be_master:
            why[uid] = "started with --can-be-master=false"
        elif cd.system_id and st.system_id != cd.system_id:
            why[uid] = f"system id {st.system_id} differs from the cluster's {cd.system_id}"
        elif cd.timeline is not None and st.timeline != cd.timeline:
            why[uid] = f"on timeline {st.timeline}, the cluster is on {cd.timeline}"
        elif st.lsn is None:
            why[uid] = "reports no WAL position"
        elif sync_mode and uid not in cd.sync.candidates:
            why[uid] = "not a synchronous standby known to hold every acknowledged commit"
        else:
            candidates.append((uid, st))
    if not sync_mode and candidates:
        ref = ctx.mem.primary_lsn
        best = max(st.lsn or 0 for _, st in candidates)
        ref = max(ref, best) if ref is not None else best
        for uid, st in candidates:
            lag = ref - (st.lsn or 0)
            if lag > cd.spec.max_standby_lag:
                why[uid] = f"lag {lag} bytes > max_standby_lag {cd.spec.max_standby_lag}"
            else:
                out.append((uid, st.lsn or 0))
    else:
        out = [(uid, st.lsn or 0) for uid, st in candidates]
    # a drained keeper is about to restart: chosen only when no other replica is eligible
    out.sort(key=lambda item: (cd.keepers[item[0]].drained, -item[1], item[0]))
    return out, why


def _sync_in_effect(cd: ClusterData) -> bool:
    return bool(cd.spec.synchronous_replication or cd.sync.standbys or cd.sync.candidates)


def _lag(ctx: _Ctx, uid: str) -> int | None:
    st = ctx.snap.keepers.get(uid)
    if st is None or st.lsn is None or ctx.mem.primary_lsn is None:
        return None
    return max(0, ctx.mem.primary_lsn - st.lsn)


def _failover(ctx: _Ctx, cd: ClusterData) -> ClusterData:
    old = cd.primary
    assert old is not None
    reason = _failure_reason(ctx, cd, old)
    cands, why = eligible(ctx, cd, exclude=old)
    if not cands:
        detail = "; ".join(f"{u}: {w}" for u, w in sorted(why.items())) or "no replicas"
        msg = f"primary {old} failed ({reason}) and no replica is eligible: {detail}"
        if cd.message != msg:
            ctx.log(f"keeping {old} as primary: {msg}")
        return replace(cd, message=msg)
    new, lsn = cands[0]
    lag = _lag(ctx, new)
    mode = "synchronous candidate" if _sync_in_effect(cd) else "most advanced healthy replica"
    ctx.log(f"primary {old} failed ({reason}): electing {new}: {mode}, lsn {lsn}"
            + (f", lag {lag} bytes" if lag is not None else "")
            + "; fencing: proxies stop routing, old primary told to stop")
    return _begin_transition(ctx, cd, "failover", old, new, reason=reason or "")


def _begin_transition(ctx: _Ctx, cd: ClusterData, kind: str, old: str | None, new: str, *,
                      reason: str = "", request_id: str | None = None) -> ClusterData:
    gen = cd.proxy.generation + 1
    # stored timestamps are wall-clock: another sentinel may finish the transition
    t = Transition(kind=kind, old=old, new=new, stage="fence", started=ctx.snap.now, proxy_generation=gen,
                   reason=reason, request_id=request_id)
    # read-only traffic keeps flowing to the replicas that are neither party of the transition
    ro = tuple(u for u in cd.proxy.ro_targets if u not in (old, new))
    cd = replace(cd, transition=t, proxy=ProxySpec(target=None, generation=gen, ro_targets=ro),
                 message=f"{kind} from {old} to {new} in progress")
    cd = replace(cd, last_transition={"kind": kind, "old": old, "new": new, "reason": reason,
                                      "detected": ctx.snap.now, "promoted": None, "completed": None})
    if old is not None and old in cd.keepers:
        cd = cd.with_keeper(old, role=ROLE_NONE, follow=None)
    # the other replicas cascade from the new primary already: when it is promoted they are connected
    # and follow its new timeline, so a synchronous standby is there to acknowledge the first commits
    for uid in sorted(cd.keepers):
        if uid not in (old, new) and cd.keepers[uid].role == ROLE_REPLICA and cd.keepers[uid].follow != new:
            cd = cd.with_keeper(uid, follow=new)
    return cd


def _start_switchover(ctx: _Ctx, cd: ClusterData, cmd: Command) -> ClusterData:
    rid = cmd.id or uuid.uuid4().hex[:8]
    target = cmd.to
    old = cd.primary

    def refuse(reason: str) -> ClusterData:
        ctx.log(f"switchover {rid} refused: {reason}")
        return replace(cd, last_switchover={"id": rid, "state": "failed", "reason": reason, "from": old,
                                            "to": target})

    if old is None or _failed(ctx, cd, old):
        return refuse("there is no healthy primary to switch over from")
    if target == old:
        return refuse(f"{target} is already the primary")
    if target is not None and target not in cd.keepers:
        return refuse(f"no keeper {target} in the cluster")
    cands, why = eligible(ctx, cd, exclude=old)
    names = [u for u, _ in cands]
    if target is None:
        if not cands:
            return refuse("no eligible replica: " + "; ".join(f"{u}: {w}" for u, w in sorted(why.items())))
        target = names[0]
    elif target not in names:
        return refuse(f"{target} is not eligible: {why.get(target, 'not a healthy replica')}")
    ctx.log(f"switchover {rid}: moving primary from {old} to {target}; proxies hold new connections, "
            f"{old} stops cleanly, {target} is promoted once it has all of {old}'s WAL")
    cd = replace(cd, last_switchover={"id": rid, "state": "running", "reason": "", "from": old, "to": target})
    return _begin_transition(ctx, cd, "switchover", old, target, reason="requested", request_id=rid)


# ----------------------------------------------------------------------------- transitions


def _proxies_acked(ctx: _Ctx, generation: int) -> tuple[bool, list[str]]:
    waiting = [uid for uid, p in sorted(ctx.snap.proxies.items()) if p.generation < generation]
    return not waiting, waiting


def _advance_transition(ctx: _Ctx, cd: ClusterData) -> ClusterData:
    t = cd.transition
    assert t is not None
    snap = ctx.snap
    spec = cd.spec
    new_st = snap.keepers.get(t.new)
    elapsed = snap.now - t.started

    if t.stage == "fence":
        new_reason = _failure_reason(ctx, cd, t.new)
        if new_reason:
            return _abort(ctx, cd, f"{t.new} failed during the {t.kind} ({new_reason})")
        acked, waiting = _proxies_acked(ctx, t.proxy_generation)
        old_final = t.old_final_lsn
        if t.kind == "switchover":
            if elapsed > spec.switchover_timeout:
                return _abort(ctx, cd, f"did not complete within switchover_timeout {spec.switchover_timeout}s")
            old_st = snap.keepers.get(t.old) if t.old else None
            if old_st is not None and (old_st.pg_running or old_st.final_lsn is None):
                return cd  # waiting for the old primary to stop cleanly
            if old_st is not None:
                old_final = old_st.final_lsn
            if old_final is not None and (new_st is None or (new_st.lsn or 0) < old_final):
                return replace(cd, transition=replace(t, old_final_lsn=old_final))  # target catching up
        if not acked:
            return replace(cd, transition=replace(t, old_final_lsn=old_final))
        if t.kind != "switchover" and t.old is not None:
            waiting_for = _may_still_write(ctx, t.old)
            if waiting_for:
                msg = f"{t.kind} from {t.old} to {t.new}: not promoting yet, {waiting_for}"
                if cd.message != msg:
                    ctx.log(msg)
                return replace(cd, message=msg, transition=replace(t, old_final_lsn=old_final))
        ctx.log(f"{t.kind}: every live proxy stopped routing (generation {t.proxy_generation})"
                + (f", {t.new} has the old primary's final WAL" if old_final is not None else "")
                + f": promoting {t.new}")
        return _promote(ctx, replace(cd, transition=replace(t, old_final_lsn=old_final)))

    # stage promote
    if new_st is not None and new_st.role == ROLE_PRIMARY and new_st.healthy:
        ctx.log(f"{t.kind} complete in {elapsed:.2f}s: {t.new} is primary on timeline {new_st.timeline}; "
                f"routing proxies to it")
        gen = cd.proxy.generation + 1
        cd = replace(cd, transition=None, timeline=new_st.timeline,
                     proxy=ProxySpec(target=t.new, generation=gen, ro_targets=cd.proxy.ro_targets), message="")
        if t.kind == "switchover" and cd.last_switchover and cd.last_switchover.get("id") == t.request_id:
            cd = replace(cd, last_switchover={**cd.last_switchover, "state": "done",
                                              "seconds": round(elapsed, 3)})
        ctx.mem.primary_lsn = new_st.lsn
        if cd.last_transition and cd.last_transition.get("new") == t.new:
            cd = replace(cd, last_transition={**cd.last_transition, "completed": snap.now})
        return cd
    reason = _failure_reason(ctx, cd, t.new)
    if reason:
        ctx.log(f"{t.kind}: new primary {t.new} failed while promoting ({reason}); will elect again")
        return replace(cd, transition=None, message=f"{t.new} failed while promoting")
    return cd


def _may_still_write(ctx: _Ctx, old: str) -> str | None:
    """Why the old primary may still acknowledge writes, or None when it cannot (the invariant in
    the module doc)."""
    snap = ctx.snap
    st = snap.keepers.get(old)
    if st is None:
        if snap.leases_alive.get(old):
            return (f"the status key of {old} is gone but its lease is still alive (deleted by hand?): "
                    f"waiting for the lease to expire")
        return None
    if st.pg_running:
        return f"waiting for {old} to stop PostgreSQL"
    if st.desired_role not in ("", ROLE_NONE):  # "": a keeper older than desired_role
        return f"waiting for {old} to read that it must stop"
    return None


def _abort(ctx: _Ctx, cd: ClusterData, why: str) -> ClusterData:
    t = cd.transition
    assert t is not None
    ctx.log(f"{t.kind} to {t.new} aborted: {why}")
    if cd.last_transition and cd.last_transition.get("new") == t.new:
        cd = replace(cd, last_transition={**cd.last_transition, "aborted": ctx.snap.now, "why": why})
    gen = cd.proxy.generation + 1
    cd = replace(cd, transition=None, message=f"{t.kind} aborted: {why}")
    if t.kind == "switchover" and t.old is not None:
        # the old primary stopped cleanly and nothing was promoted: it simply becomes primary again
        cd = cd.with_keeper(t.old, role=ROLE_PRIMARY, follow=None)
        cd = replace(cd, proxy=ProxySpec(target=t.old, generation=gen, ro_targets=()))
        if cd.last_switchover and cd.last_switchover.get("id") == t.request_id:
            cd = replace(cd, last_switchover={**cd.last_switchover, "state": "failed", "reason": why})
    else:
        # failover: the old primary stays fenced; the next check elects again
        cd = replace(cd, proxy=ProxySpec(target=None, generation=gen, ro_targets=()))
    return cd


def _promote(ctx: _Ctx, cd: ClusterData) -> ClusterData:
    t = cd.transition
    assert t is not None
    new = t.new
    standbys = _initial_sync_set(ctx, cd, new, t.old)
    cd = replace(cd, primary=new, transition=replace(t, stage="promote"),
                 sync=SyncState(standbys=standbys, candidates=(), barrier=None))
    if cd.last_transition and cd.last_transition.get("new") == new:
        cd = replace(cd, last_transition={**cd.last_transition, "promoted": ctx.snap.now})
    cd = cd.with_keeper(new, role=ROLE_PRIMARY, follow=None, init=None, synchronous_standbys=standbys)
    for uid in sorted(cd.keepers):
        if uid == new:
            continue
        k = cd.keepers[uid]
        if uid == t.old or k.role == ROLE_REPLICA:
            cd = cd.with_keeper(uid, role=ROLE_REPLICA, follow=new, synchronous_standbys=())
    if standbys:
        ctx.log(f"synchronous standbys of {new}: {', '.join(standbys)}")
    return cd


def _initial_sync_set(ctx: _Ctx, cd: ClusterData, new: str, old: str | None) -> tuple[str, ...]:
    """The synchronous set a new primary starts with, before it accepts any write."""
    if not cd.spec.synchronous_replication:
        return ()
    snap = ctx.snap
    spec = cd.spec
    pool = [u for u in sorted(cd.keepers, key=lambda u: (cd.keepers[u].drained,
                                                          -(snap.keepers[u].lsn or 0) if u in snap.keepers else 0, u))
            if u not in (new, old) and u in snap.keepers and snap.keepers[u].healthy
            and not _failed(ctx, cd, u)]
    chosen = pool[: spec.max_synchronous_standbys]
    if len(chosen) < spec.min_synchronous_standbys:
        # not enough live standbys: keep writes blocked rather than acknowledge unreplicated commits
        extra = [u for u in list(cd.sync.standbys) + ([old] if old else []) if u not in chosen and u != new]
        chosen += extra[: spec.min_synchronous_standbys - len(chosen)]
    return tuple(sorted(chosen))


# ----------------------------------------------------------------------------- steady state


def _steady(ctx: _Ctx, cd: ClusterData) -> ClusterData:
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


def _streaming_replicas(ctx: _Ctx, cd: ClusterData, pst: KeeperStatus) -> list[str]:
    """Replicas the primary reports as streaming, most advanced first; drained keepers left out."""
    snap = ctx.snap
    rows = {r.name: r for r in pst.replication if r.state == "streaming"}
    out = []
    for uid in cd.keepers:
        if uid == cd.primary or uid not in rows:
            continue
        st = snap.keepers.get(uid)
        if st is None or not st.healthy or cd.keepers[uid].role != ROLE_REPLICA or _failed(ctx, cd, uid):
            continue
        if cd.keepers[uid].drained:
            continue
        out.append(uid)
    out.sort(key=lambda u: (-(rows[u].flush_lsn or 0), u))
    return out


def manage_sync(ctx: _Ctx, cd: ClusterData, pst: KeeperStatus) -> ClusterData:
    """Keep ``synchronous_standby_names`` such that no acknowledged commit can be lost.

    The primary runs with ``N (s1, ..., sN)``: every listed standby must acknowledge every commit.
    ``sync.standbys`` is the desired list; ``sync.candidates`` the members known to hold every
    acknowledged commit. When the list changes, removed members leave the candidates at once
    (conservative) and new members join only after the primary reports the new list applied
    (``barrier`` = its LSN at that report) and reports them synchronous with a flush position at
    or past the barrier. A dead member is replaced by a healthy streaming replica when there is
    one; when fewer than ``min_synchronous_standbys`` are available the dead members stay listed
    and commits block rather than be acknowledged unreplicated.
    """
    spec = cd.spec
    sync = cd.sync
    primary = cd.primary
    assert primary is not None
    if not spec.synchronous_replication:
        if sync.standbys or sync.candidates:
            ctx.log("synchronous replication disabled: clearing synchronous_standby_names")
            cd = replace(cd, sync=SyncState())
            cd = cd.with_keeper(primary, synchronous_standbys=())
        return cd

    streaming = _streaming_replicas(ctx, cd, pst)
    keep = [u for u in sync.standbys if u in streaming]
    for u in streaming:
        if len(keep) >= spec.max_synchronous_standbys:
            break
        if u not in keep:
            keep.append(u)
    if len(keep) < spec.min_synchronous_standbys:
        for u in sync.standbys:
            if len(keep) >= spec.min_synchronous_standbys:
                break
            if u not in keep and u in cd.keepers:
                keep.append(u)
    desired = tuple(sorted(keep[: max(spec.max_synchronous_standbys, spec.min_synchronous_standbys)]))

    if set(desired) != set(sync.standbys):
        ctx.log(f"synchronous standbys {list(sync.standbys) or '[]'} -> {list(desired) or '[]'} "
                f"(streaming replicas: {streaming or 'none'}, min {spec.min_synchronous_standbys}, "
                f"max {spec.max_synchronous_standbys})")
        sync = SyncState(standbys=desired, candidates=tuple(c for c in sync.candidates if c in desired),
                         barrier=None, barrier_time=None)
        cd = replace(cd, sync=sync)
        return cd.with_keeper(primary, synchronous_standbys=desired)

    if cd.keepers[primary].synchronous_standbys != desired:
        cd = cd.with_keeper(primary, synchronous_standbys=desired)
    applied = pst.synchronous_standbys
    if applied is None or set(applied) != set(desired) or pst.lsn is None:
        return cd
    if sync.barrier is None:
        return replace(cd, sync=replace(sync, barrier=pst.lsn, barrier_time=pst.reported_at))
    if pst.reported_at <= (sync.barrier_time or 0):
        return cd  # wait for a report made after the barrier was taken
    rows = {r.name: r for r in pst.replication}
    candidates = list(sync.candidates)
    for uid in desired:
        row = rows.get(uid)
        if uid in candidates or row is None:
            continue
        if row.sync_state in ("sync", "quorum") and row.flush_lsn is not None and row.flush_lsn >= sync.barrier:
            ctx.log(f"{uid} is a synchronous standby holding every acknowledged commit: eligible for failover")
            candidates.append(uid)
    if tuple(sorted(candidates)) != sync.candidates:
        cd = replace(cd, sync=replace(sync, candidates=tuple(sorted(candidates))))
    return cd


def _ro_targets(ctx: _Ctx, cd: ClusterData, pst: KeeperStatus) -> ClusterData:
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
