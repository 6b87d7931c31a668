"""Transitions: a primary change in two stages, ``fence`` then ``promote`` (the rules and the
invariant are in ``pgha.sentinel.decide``'s module doc), aborted when it cannot complete. A
switchover starts with ``prepare``: the old primary, still serving, runs a checkpoint, so that the
shutdown checkpoint it runs once fenced has little left to write; the fence starts when it reports
that, or after PREPARE_TIMEOUT (a keeper that does not know the stage, a checkpoint that takes
long: the switchover is only slower).
"""

from __future__ import annotations

from dataclasses import replace

from pgha.model import (
    ROLE_NONE,
    ROLE_PRIMARY,
    ROLE_REPLICA,
    ClusterData,
    ProxySpec,
    SyncState,
    Transition,
)
from pgha.sentinel.context import Ctx, failed, failure_reason
from pgha.sentinel.election import begin_transition

PREPARE_TIMEOUT = 5.0  # seconds a switchover waits for the old primary's checkpoint before fencing anyway


def _proxies_acked(ctx: Ctx, generation: int) -> tuple[bool, list[str]]:
    waiting = [uid for uid, p in sorted(ctx.snap.proxies.items()) if p.generation < generation]
    return not waiting, waiting


def advance_transition(ctx: Ctx, cd: ClusterData) -> ClusterData:
    t = cd.transition
    assert t is not None
    snap = ctx.snap
    spec = cd.spec
    new_st = snap.keepers.get(t.new)
    elapsed = snap.now - t.started

    if t.stage == "prepare":
        return _prepare(ctx, cd)
    if t.stage == "fence":
        new_reason = failure_reason(ctx, cd, t.new)
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
        if t.kind == "switchover":
            cd = _switchover_record(cd, t, state="done", seconds=round(elapsed, 3))
        ctx.mem.primary_lsn = new_st.lsn
        if cd.last_transition and cd.last_transition.get("new") == t.new:
            # the new primary's own times of pg_promote() called and returned (pgha.keeper.actions)
            own = {k: v for k, v in (("promote_called", new_st.promote_called_at), ("promote_done", new_st.promoted_at))
                   if v is not None and v >= t.started}
            cd = replace(cd, last_transition={**cd.last_transition, "completed": snap.now, **own})
        return cd
    reason = failure_reason(ctx, cd, t.new)
    if reason:
        ctx.log(f"{t.kind}: new primary {t.new} failed while promoting ({reason}); will elect again")
        return replace(cd, transition=None, message=f"{t.new} failed while promoting")
    return cd


def _prepare(ctx: Ctx, cd: ClusterData) -> ClusterData:
    """A switchover's first stage: nothing is fenced yet, so it ends without harm when a party fails."""
    t = cd.transition
    assert t is not None and t.old is not None
    snap = ctx.snap
    for uid, role in ((t.old, "primary"), (t.new, "target")):
        reason = failure_reason(ctx, cd, uid)
        if reason:
            ctx.log(f"switchover to {t.new} abandoned before fencing: the {role} {uid} failed ({reason})")
            cd = replace(cd, transition=None, message=f"switchover abandoned: {uid} failed")
            return _switchover_record(cd, t, state="failed", reason=f"{uid} failed ({reason})")
    old_st = snap.keepers.get(t.old)
    waited = snap.now - t.started
    if old_st is not None and old_st.checkpointed_for == t.started:
        why = f"{t.old} checkpointed in {waited:.2f}s"
    elif waited > PREPARE_TIMEOUT:
        why = f"{t.old} did not report its checkpoint within {PREPARE_TIMEOUT:g}s, fencing anyway"
    else:
        return cd
    ctx.log(f"switchover to {t.new}: {why}; fencing: proxies hold new connections, {t.old} stops")
    return begin_transition(ctx, replace(cd, transition=None), "switchover", t.old, t.new, reason=t.reason,
                            request_id=t.request_id)  # switchover_timeout counts from the fence


def _switchover_record(cd: ClusterData, t: Transition, **changes: object) -> ClusterData:
    """``last_switchover`` updated with ``changes`` when it is the record of ``t``'s request."""
    if cd.last_switchover and cd.last_switchover.get("id") == t.request_id:
        return replace(cd, last_switchover={**cd.last_switchover, **changes})
    return cd


def _may_still_write(ctx: Ctx, old: str) -> str | None:
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


def _abort(ctx: Ctx, cd: ClusterData, why: str) -> ClusterData:
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
        cd = _switchover_record(cd, t, state="failed", reason=why)
    else:
        # failover: the old primary stays fenced; the next check elects again
        cd = replace(cd, proxy=ProxySpec(target=None, generation=gen, ro_targets=()))
    return cd


def _promote(ctx: Ctx, cd: ClusterData) -> ClusterData:
    t = cd.transition
    assert t is not None
    new = t.new
    standbys = _initial_sync_set(ctx, cd, new, t.old)
    cd = replace(cd, primary=new, transition=replace(t, stage="promote"),
                 sync=SyncState(standbys=standbys, candidates=(), barrier=None))
    if cd.last_transition and cd.last_transition.get("new") == new:
        acks = [p.applied_at for p in ctx.snap.proxies.values() if p.generation >= t.proxy_generation and p.applied_at]
        cd = replace(cd, last_transition={**cd.last_transition, "promoted": ctx.snap.now,
                                          **({"fence_acknowledged": max(acks)} if acks else {})})
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


def _initial_sync_set(ctx: Ctx, cd: ClusterData, new: str, old: str | None) -> tuple[str, ...]:
    """The synchronous set a new primary starts with, before it accepts any write."""
    if not cd.spec.synchronous_replication:
        return ()
    snap = ctx.snap
    spec = cd.spec
    pool = [u for u in sorted(cd.keepers, key=lambda u: (cd.keepers[u].drained,
                                                          -(snap.keepers[u].lsn or 0) if u in snap.keepers else 0, u))
            if u not in (new, old) and u in snap.keepers and snap.keepers[u].healthy
            and not failed(ctx, cd, u)]
    chosen = pool[: spec.max_synchronous_standbys]
    if len(chosen) < spec.min_synchronous_standbys:
        # not enough live standbys: keep writes blocked rather than acknowledge unreplicated commits
        extra = [u for u in list(cd.sync.standbys) + ([old] if old else []) if u not in chosen and u != new]
        chosen += extra[: spec.min_synchronous_standbys - len(chosen)]
    return tuple(sorted(chosen))
