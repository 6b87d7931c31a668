"""What every rule of the leading sentinel reads: the snapshot of the store, the sentinel's memory
(timers), the decision it returns, and whether a keeper has failed. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgha.model import (
    ROLE_PRIMARY,
    ClusterData,
    Command,
    KeeperStatus,
    ProxyStatus,
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
    # keeper -> the crash this sentinel's prober confirmed before revoking its lease (pgha.sentinel.crash)
    revoked: dict[str, Revocation] = field(default_factory=dict)


@dataclass(frozen=True)
class Revocation:
    why: str
    suspected: float  # wall time of the first refused connection
    confirmed: float  # wall time the lease was revoked
    lease: int = 0  # the lease revoked


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


class Ctx:
    """Scratch state of one decide() call."""

    def __init__(self, snap: Snapshot, memory: Memory) -> None:
        self.snap = snap
        self.mem = memory
        self.events: list[str] = []
        self.consumed: list[str] = []

    def log(self, text: str) -> None:
        self.events.append(text)


def track_health(ctx: Ctx, cd: ClusterData) -> None:
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


def failure_reason(ctx: Ctx, cd: ClusterData, uid: str) -> str | None:
    snap = ctx.snap
    if f"failkeeper/{uid}" in snap.commands:
        return "failed on request (pghactl failkeeper)"
    st = snap.keepers.get(uid)
    if st is None:
        if uid in snap.revoked:
            return f"crashed: {snap.revoked[uid].why} (its lease revoked)"
        return "its lease expired (no status in the store)"
    since = ctx.mem.unhealthy_since.get(uid)
    if since is not None and snap.mono - since > cd.spec.fail_interval:
        return f"PostgreSQL unhealthy for {snap.mono - since:.1f}s (> fail_interval {cd.spec.fail_interval}s)"
    if uid == cd.primary and cd.transition is None and st.role != ROLE_PRIMARY and since is not None \
            and snap.mono - since > cd.spec.fail_interval:
        return "not running as primary"
    return None


def failed(ctx: Ctx, cd: ClusterData, uid: str) -> bool:
    return failure_reason(ctx, cd, uid) is not None
