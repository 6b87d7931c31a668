"""The keeper's decision: what to do with the local PostgreSQL, as a pure function of what the
sentinel wants (``KeeperSpec``) and what is on this host (``Local``)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from pgha.model import ROLE_NONE, ROLE_PRIMARY, KeeperSpec

WAIT = "wait"
REFUSE = "refuse"
STOP = "stop"
INITDB = "initdb"
ADOPT = "adopt"
RESTORE = "restore"
START_PRIMARY = "start_primary"
PROMOTE = "promote"
RECONCILE_PRIMARY = "reconcile_primary"
BASEBACKUP = "basebackup"
REWIND = "rewind"
START_REPLICA = "start_replica"
RECONCILE_REPLICA = "reconcile_replica"


@dataclass(frozen=True)
class Local:
    data_exists: bool = False
    cluster_uid: str | None = None  # from state.json: which cluster this data belongs to
    initializing: bool = False  # an initdb or clone was interrupted: the data is not trustworthy
    running: bool = False
    in_recovery: bool | None = None  # None when PostgreSQL is not running or did not answer
    standby_configured: bool = False  # standby.signal is present (it was a replica when it stopped)
    following: str | None = None  # host:port our primary_conninfo points at
    streaming: bool = False  # the WAL receiver is streaming from ``following``
    not_streaming_for: float = 0.0  # seconds a running replica has not been streaming
    fenced: bool = False  # our lease lapsed: must not run a primary until it is renewed


@dataclass(frozen=True)
class Action:
    kind: str
    reason: str


def decide(want: KeeperSpec | None, cluster_uid: str | None, follow_address: str | None, local: Local,
           rewind_after: float, replaces: Collection[str] = ()) -> Action:
    """``replaces``: the uids of the clusters this one restores in place (init_mode pitr after
    pghactl init --yes); their data is discarded, as an interrupted clone's would be."""
    if cluster_uid is None:
        return Action(WAIT, "no cluster data yet (run pghactl init)")
    if local.cluster_uid is not None and local.cluster_uid in replaces and local.data_exists:
        if want is None or want.role == ROLE_NONE:
            if local.running:
                return Action(STOP, f"cluster {local.cluster_uid} is being restored in place: its PostgreSQL stops")
            return Action(WAIT, f"cluster {local.cluster_uid} is being restored in place: waiting for a role")
        local = replace(local, cluster_uid=None, initializing=True)
    if local.cluster_uid is not None and local.cluster_uid != cluster_uid:
        return Action(REFUSE, f"data directory belongs to cluster {local.cluster_uid}, not {cluster_uid}: "
                              "refusing to touch it (remove it to join this cluster)")
    if local.data_exists and local.cluster_uid is None and not local.initializing \
            and not (want is not None and want.role == ROLE_PRIMARY and want.init == "existing"):
        return Action(REFUSE, "data directory holds PostgreSQL data not created by pgha: refusing to touch it "
                              "(use init_mode existing to adopt it, or remove it)")
    if want is None:
        if local.running:
            return Action(STOP, "not assigned a role in the cluster")
        return Action(WAIT, "waiting for the sentinel to assign a role")
    if want.role == ROLE_NONE:
        if local.running:
            return Action(STOP, "fenced by the sentinel (another keeper is being promoted)")
        return Action(WAIT, "fenced: PostgreSQL stays stopped")

    if want.role == ROLE_PRIMARY:
        if local.fenced:
            if local.running:
                return Action(STOP, "lease lapsed: a primary without a live lease must not accept writes")
            return Action(WAIT, "lease lapsed: waiting to renew it before running as primary")
        if local.initializing or not local.data_exists:
            if want.init == "new":
                return Action(INITDB, "elected to initialize the cluster")
            if want.init == "existing" and local.data_exists:
                return Action(ADOPT, "adopting the existing data directory (init_mode existing)")
            if want.init == "pitr":
                return Action(RESTORE, "elected to restore the cluster from its backups (init_mode pitr)")
            return Action(REFUSE, "elected primary but there is no data to run (data directory empty)")
        if want.init == "existing" and local.cluster_uid is None:
            return Action(ADOPT, "adopting the existing data directory (init_mode existing)")
        if not local.running:
            return Action(START_PRIMARY, "elected primary; starting PostgreSQL"
                          + (" (ends recovery: promotion)" if local.standby_configured else ""))
        if local.in_recovery:
            return Action(PROMOTE, "elected primary; promoting the replica")
        return Action(RECONCILE_PRIMARY, "running as primary")

    # replica
    if not follow_address:
        return Action(WAIT, f"waiting for the address of {want.follow or 'the primary'}")
    if local.initializing or not local.data_exists:
        return Action(BASEBACKUP, f"no usable data: cloning from {want.follow} ({follow_address})")
    if local.running and local.in_recovery is False:
        return Action(REWIND, f"running as primary but {want.follow} was elected: stop and rejoin as its replica")
    if not local.running and not local.standby_configured:
        return Action(REWIND, f"was a primary: rejoining as a replica of {want.follow} (pg_rewind if it forked)")
    if not local.running:
        return Action(START_REPLICA, f"starting as a replica of {want.follow}")
    if local.following != follow_address:
        return Action(RECONCILE_REPLICA, f"now following {want.follow} ({follow_address})")
    if not local.streaming and local.not_streaming_for > rewind_after:
        return Action(REWIND, f"not streaming from {want.follow} for {local.not_streaming_for:.0f}s: "
                              "the timelines may have forked")
    return Action(RECONCILE_REPLICA, f"replica of {want.follow}")
