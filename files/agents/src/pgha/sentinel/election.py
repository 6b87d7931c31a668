"""Election: which replicas may become primary, choosing one when the primary fails, and starting
a switchover; both begin a transition (``pgha.sentinel.transitions`` carries it through).
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from pgha.model import (
    ROLE_NONE,
    ROLE_REPLICA,
    ClusterData,
    Command,
    KeeperStatus,
    ProxySpec,
    Transition,
)
from pgha.sentinel.context import Ctx, failed, failure_reason


def eligible(ctx: Ctx, cd: ClusterData, exclude: str | None) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Replicas that may become primary, most advanced first, and why each other one may not."""
    snap = ctx.snap
    sync_mode = sync_in_effect(cd)
    out: list[tuple[str, int]] = []
    why: dict[str, str] = {}
    candidates: list[tuple[str, KeeperStatus]] = []
    for uid in sorted(cd.keepers):
        if uid == exclude:
            continue
        spec = cd.keepers[uid]
        st = snap.keepers.get(uid)
        reason = failure_reason(ctx, cd, uid)
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


def sync_in_effect(cd: ClusterData) -> bool:
    return bool(cd.spec.synchronous_replication or cd.sync.standbys or cd.sync.candidates)


def _lag(ctx: Ctx, uid: str) -> int | None:
    st = ctx.snap.keepers.get(uid)
    if st is None or st.lsn is None or ctx.mem.primary_lsn is None:
        return None
    return max(0, ctx.mem.primary_lsn - st.lsn)


def failover(ctx: Ctx, cd: ClusterData) -> ClusterData:
    old = cd.primary
    assert old is not None
    reason = failure_reason(ctx, cd, old)
    cands, why = eligible(ctx, cd, exclude=old)
    if not cands:
        detail = "; ".join(f"{u}: {w}" for u, w in sorted(why.items())) or "no replicas"
        msg = f"primary {old} failed ({reason}) and no replica is eligible: {detail}"
        if cd.message != msg:
            ctx.log(f"keeping {old} as primary: {msg}")
        return replace(cd, message=msg)
    new, lsn = cands[0]
    lag = _lag(ctx, new)
    mode = "synchronous candidate" if sync_in_effect(cd) else "most advanced healthy replica"
    ctx.log(f"primary {old} failed ({reason}): electing {new}: {mode}, lsn {lsn}"
            + (f", lag {lag} bytes" if lag is not None else "")
            + "; fencing: proxies stop routing, old primary told to stop")
    return begin_transition(ctx, cd, "failover", old, new, reason=reason or "")


def begin_transition(ctx: Ctx, cd: ClusterData, kind: str, old: str | None, new: str, *,
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
    crashed = ctx.snap.revoked.get(old) if old else None
    if crashed is not None:  # the prober's own times, not this check's
        cd = replace(cd, last_transition={**cd.last_transition, "suspected": crashed.suspected,
                                          "confirmed": crashed.confirmed})
    if old is not None and old in cd.keepers:
        cd = cd.with_keeper(old, role=ROLE_NONE, follow=None)
    # the other replicas cascade from the new primary already: when it is promoted they are connected
    # and follow its new timeline, so a synchronous standby is there to acknowledge the first commits
    for uid in sorted(cd.keepers):
        if uid not in (old, new) and cd.keepers[uid].role == ROLE_REPLICA and cd.keepers[uid].follow != new:
            cd = cd.with_keeper(uid, follow=new)
    return cd


def start_switchover(ctx: Ctx, cd: ClusterData, cmd: Command) -> ClusterData:
    rid = cmd.id or uuid.uuid4().hex[:8]
    target = cmd.to
    old = cd.primary

    def refuse(reason: str) -> ClusterData:
        ctx.log(f"switchover {rid} refused: {reason}")
        return replace(cd, last_switchover={"id": rid, "state": "failed", "reason": reason, "from": old,
                                            "to": target})

    if old is None or failed(ctx, cd, old):
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
    ctx.log(f"switchover {rid}: moving primary from {old} to {target}; {old} checkpoints while it still serves, "
            f"then proxies hold new connections, {old} stops cleanly, {target} is promoted once it has all of "
            f"{old}'s WAL")
    cd = replace(cd, last_switchover={"id": rid, "state": "running", "reason": "", "from": old, "to": target})
    t = Transition(kind="switchover", old=old, new=target, stage="prepare", started=ctx.snap.now,
                   proxy_generation=cd.proxy.generation, reason="requested", request_id=rid)
    return replace(cd, transition=t, message=f"switchover from {old} to {target}: {old} checkpoints")
