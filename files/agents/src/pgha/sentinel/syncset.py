"""The synchronous set in steady state: which replicas the primary waits for (see ``manage_sync``).
"""

from __future__ import annotations

from dataclasses import replace

from pgha.model import (
    ROLE_REPLICA,
    ClusterData,
    KeeperStatus,
    SyncState,
)
from pgha.sentinel.context import Ctx, failed


def _streaming_replicas(ctx: Ctx, cd: ClusterData, pst: KeeperStatus) -> list[str]:
    """Replicas the primary reports as streaming, most advanced first; drained keepers left out."""
    snap = ctx.snap
    rows = {r.name: r for r in pst.replication if r.state == "streaming"}
    out = []
    for uid in cd.keepers:
        if uid == cd.primary or uid not in rows:
            continue
        st = snap.keepers.get(uid)
        if st is None or not st.healthy or cd.keepers[uid].role != ROLE_REPLICA or failed(ctx, cd, uid):
            continue
        if cd.keepers[uid].drained:
            continue
        out.append(uid)
    out.sort(key=lambda u: (-(rows[u].flush_lsn or 0), u))
    return out


def manage_sync(ctx: Ctx, cd: ClusterData, pst: KeeperStatus) -> ClusterData:
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
