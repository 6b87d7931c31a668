"""The cluster model: the desired cluster data written by the leading sentinel, and the status
documents each agent writes under its own lease.

Store layout under ``/<prefix>/<cluster>/``:

* ``spec``            the operator's spec (written by ``pghactl init``/``update``, CAS)
* ``clusterdata``     the desired cluster (written only by the leading sentinel, CAS)
* ``sentinel-leader`` the election key, bound to the leader's lease
* ``keepers/<uid>``, ``sentinels/<uid>``, ``proxies/<uid>``  status, each under its agent's lease
* ``commands/<name>`` requests from ``pghactl`` (``switchover``, ``failkeeper/<uid>``,
  ``removekeeper/<uid>``, ``drain/<uid>``; ``Command``) that the leading sentinel consumes

Every document carries ``format_version``; a reader that does not know the version refuses it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pgha.spec import Spec, SpecError, normalize, valid_uid

FORMAT_VERSION = 1

ROLE_PRIMARY = "primary"
ROLE_REPLICA = "replica"
ROLE_NONE = "none"

PHASE_INITIALIZING = "initializing"
PHASE_NORMAL = "normal"


class FormatError(ValueError):
    """A stored document that does not parse or has an unknown format version."""


def keys(prefix: str, cluster: str) -> "Keys":
    return Keys(f"/{prefix.strip('/')}/{cluster}/")


# key name -> what follows the cluster's base (see the module doc)
_KEYS = {"spec": "spec", "clusterdata": "clusterdata", "leader": "sentinel-leader", "keepers": "keepers/",
         "sentinels": "sentinels/", "proxies": "proxies/", "commands": "commands/",
         "backup_request": "backup/request"}


@dataclass(frozen=True)
class Keys:
    """The store keys of one cluster: ``keys.spec``, ``keys.keeper(uid)``, ..."""

    base: str
    spec: str = field(init=False)
    clusterdata: str = field(init=False)
    leader: str = field(init=False)
    keepers: str = field(init=False)
    sentinels: str = field(init=False)
    proxies: str = field(init=False)
    commands: str = field(init=False)
    backup_request: str = field(init=False)  # pghactl backup: {id, type, keeper}; carried out by that keeper

    def __post_init__(self) -> None:
        for name, suffix in _KEYS.items():
            object.__setattr__(self, name, self.base + suffix)

    def keeper(self, uid: str) -> str:
        return self.keepers + uid

    def sentinel(self, uid: str) -> str:
        return self.sentinels + uid

    def proxy(self, uid: str) -> str:
        return self.proxies + uid

    def command(self, name: str) -> str:
        return self.commands + name


def _check_version(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise FormatError(f"{what}: expected a JSON object")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatError(f"{what}: unsupported format_version {version!r} (this agent knows {FORMAT_VERSION})")
    return doc


def loads(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what}: not valid JSON ({exc})") from None
    return _check_version(doc, what)


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


class Document:
    """A stored document: its fields as JSON, with the format version."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["format_version"] = FORMAT_VERSION
        return d

    def dumps(self) -> str:
        return dumps(self.to_dict())


# --------------------------------------------------------------------------------------------
# Desired state (clusterdata)


@dataclass(frozen=True)
class KeeperSpec:
    """What the sentinel wants one keeper to do."""

    role: str = ROLE_NONE  # primary | replica | none
    follow: str | None = None  # uid of the keeper to replicate from (replicas)
    init: str | None = None  # "new" | "existing" for the keeper that creates the cluster
    address: str = ""  # host:port of its PostgreSQL, copied from the keeper's status
    synchronous_standbys: tuple[str, ...] = ()  # on the primary: synchronous_standby_names members
    # pghactl drain: kept out of the synchronous standbys and read-only targets (maintenance)
    drained: bool = False

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "KeeperSpec":
        return KeeperSpec(
            role=str(d.get("role", ROLE_NONE)),
            follow=d.get("follow"),
            init=d.get("init"),
            address=str(d.get("address", "")),
            synchronous_standbys=tuple(d.get("synchronous_standbys", ())),
            drained=bool(d.get("drained", False)),
        )


@dataclass(frozen=True)
class ProxySpec:
    """Where proxies route. ``generation`` increases on every change; proxies acknowledge it."""

    target: str | None = None
    generation: int = 0
    ro_targets: tuple[str, ...] = ()

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ProxySpec":
        return ProxySpec(
            target=d.get("target"),
            generation=int(d.get("generation", 0)),
            ro_targets=tuple(d.get("ro_targets", ())),
        )


@dataclass(frozen=True)
class SyncState:
    """Synchronous replication bookkeeping.

    ``standbys`` is the desired synchronous set (every member must acknowledge: ``N (all)``).
    ``candidates`` are the members known to hold every acknowledged commit: only they may be
    promoted when the primary fails in synchronous mode. ``barrier`` is the primary's LSN when it
    was first seen running with ``standbys`` applied; a member joins ``candidates`` once the
    primary reports it synchronous with a flush position at or past the barrier.
    """

    standbys: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()
    barrier: int | None = None
    barrier_time: float | None = None

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "SyncState":
        return SyncState(
            standbys=tuple(d.get("standbys", ())),
            candidates=tuple(d.get("candidates", ())),
            barrier=d.get("barrier"),
            barrier_time=d.get("barrier_time"),
        )


@dataclass(frozen=True)
class Transition:
    """A primary change in progress (failover or switchover).

    Stages: for a switchover first ``prepare`` (the old primary, still serving, checkpoints so
    that its shutdown checkpoint is short; waiting for it to report that, at most
    PREPARE_TIMEOUT), then ``fence`` (proxies told to stop routing, old primary told to stop;
    waiting for every live proxy to acknowledge, and for a switchover also for the target to catch
    up) then ``promote`` (new primary told to promote; waiting for it to report itself primary).
    """

    kind: str  # failover | switchover
    old: str | None
    new: str
    stage: str  # prepare (switchover) | fence | promote
    started: float  # wall-clock time the transition began
    proxy_generation: int
    reason: str = ""
    request_id: str | None = None
    old_final_lsn: int | None = None

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Transition":
        return Transition(
            kind=d["kind"],
            old=d.get("old"),
            new=d["new"],
            stage=d["stage"],
            started=float(d["started"]),
            proxy_generation=int(d["proxy_generation"]),
            reason=d.get("reason", ""),
            request_id=d.get("request_id"),
            old_final_lsn=d.get("old_final_lsn"),
        )


@dataclass(frozen=True)
class ClusterData(Document):
    uid: str
    name: str
    spec: Spec  # the spec key's, copied by the leading sentinel
    phase: str = PHASE_INITIALIZING
    generation: int = 0
    primary: str | None = None
    keepers: dict[str, KeeperSpec] = field(default_factory=dict)
    proxy: ProxySpec = ProxySpec()
    sync: SyncState = SyncState()
    transition: Transition | None = None
    system_id: str | None = None
    timeline: int | None = None
    message: str = ""  # why the cluster is in its current state (e.g. no eligible primary)
    last_switchover: dict[str, Any] | None = None  # {id, state: done|failed, reason, from, to}
    # the timeline of the last primary change: {kind, old, new, reason, detected, promoted, completed}
    # (wall-clock seconds; drills read it to report detection, election and promotion times)
    last_transition: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["spec"] = self.spec.to_dict()
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ClusterData":
        _check_version(d, "clusterdata")
        try:
            spec = normalize(d["spec"])
        except SpecError as exc:
            raise FormatError(f"clusterdata: its spec does not validate ({exc})") from None
        except KeyError:
            raise FormatError("clusterdata: malformed (no spec)") from None
        try:
            return ClusterData(
                uid=str(d["uid"]),
                name=str(d["name"]),
                spec=spec,
                phase=str(d.get("phase", PHASE_INITIALIZING)),
                generation=int(d.get("generation", 0)),
                primary=d.get("primary"),
                keepers={k: KeeperSpec.from_dict(v) for k, v in d.get("keepers", {}).items()},
                proxy=ProxySpec.from_dict(d.get("proxy", {})),
                sync=SyncState.from_dict(d.get("sync", {})),
                transition=Transition.from_dict(d["transition"]) if d.get("transition") else None,
                system_id=d.get("system_id"),
                timeline=d.get("timeline"),
                message=str(d.get("message", "")),
                last_switchover=d.get("last_switchover"),
                last_transition=d.get("last_transition"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"clusterdata: malformed ({exc!r})") from None

    @staticmethod
    def loads(raw: bytes | str) -> "ClusterData":
        return ClusterData.from_dict(loads(raw, "clusterdata"))

    def with_keeper(self, uid: str, **changes: Any) -> "ClusterData":
        keepers = dict(self.keepers)
        keepers[uid] = replace(keepers.get(uid, KeeperSpec()), **changes)
        return replace(self, keepers=keepers)

    def without_keeper(self, uid: str) -> "ClusterData":
        keepers = dict(self.keepers)
        keepers.pop(uid, None)
        return replace(self, keepers=keepers)


# --------------------------------------------------------------------------------------------
# Status documents (each agent writes its own, under its own lease)


class _Fields:
    """Typed reads of a document's fields; TypeError naming the field when one has the wrong type
    (no coercion: "yes" is not a boolean, "a lot" not an LSN). Anyone who can write the store can
    write a status document."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d

    @staticmethod
    def _typed(typ: type, name: str, value: Any) -> Any:
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{name}: not a finite number")
            return float(value)
        if typ is int and isinstance(value, bool) or not isinstance(value, typ):
            raise TypeError(f"{name}: expected {typ.__name__}, got {type(value).__name__}")
        if typ is str and len(value) > MAX_STATUS_STRING:
            raise ValueError(f"{name}: longer than {MAX_STATUS_STRING} characters")
        return value

    def req(self, typ: type, name: str) -> Any:
        if name not in self.d:
            raise KeyError(name)
        return self._typed(typ, name, self.d[name])

    def get(self, typ: type, name: str, default: Any) -> Any:
        value = self.d.get(name)
        return default if value is None else self._typed(typ, name, value)

    def opt(self, typ: type, name: str) -> Any:
        return self.get(typ, name, None)


MAX_STATUS_STRING = 4096  # an error message, a data directory: nothing an agent writes is longer


def _replication(r: Any) -> "Replication":
    if not isinstance(r, dict):
        raise TypeError("replication: expected a list of objects")
    f = _Fields(r)
    return Replication(name=f.req(str, "name"), state=f.get(str, "state", ""), sync_state=f.get(str, "sync_state", ""),
                       flush_lsn=f.opt(int, "flush_lsn"))


STATUS_PREFIXES = ("keepers/", "proxies/", "sentinels/")  # the status documents' keys below the cluster's


def load_status(cls: Any, name: str, raw: bytes | str, lease: int) -> Any:
    """The status document ``raw`` of type ``cls`` (KeeperStatus, ProxyStatus, SentinelStatus) found
    under ``name``, as every reader believes it: parsed, and checked by check_status_key. Raises
    FormatError."""
    doc = cls.loads(raw)
    check_status_key(name, doc.uid, lease)
    return doc


def load_statuses(cls: Any, kvs: list[Any], base: str) -> dict[str, Any]:
    """The status documents of type ``cls`` among ``kvs`` (a listing below ``base``, the cluster's
    key prefix), by uid, each believed as load_status believes it; the others are left out."""
    out: dict[str, Any] = {}
    for kv in kvs:
        try:
            st = load_status(cls, kv.key[len(base):], kv.value, kv.lease)
        except FormatError:
            continue
        out[st.uid] = st
    return out


def check_status_key(name: str, uid: str, lease: int) -> None:
    """A status document counts only under the key of the uid it names (``name``: its key below the
    cluster's, ``keepers/<uid>``) and attached to a lease: each agent writes its own under its own
    lease, so anything else was written by hand (or forged), and believing it could hold up a
    failover for ever. Raises FormatError."""
    if name.split("/", 1)[1] != uid:
        raise FormatError(f"the document names {uid!r}, not the uid of its key")
    if not lease:
        raise FormatError("not attached to a lease (every agent writes its status under its own lease)")


@dataclass(frozen=True)
class Replication:
    """One row of the primary's pg_stat_replication, as the keeper reports it."""

    name: str
    state: str
    sync_state: str
    flush_lsn: int | None


@dataclass(frozen=True)
class KeeperStatus(Document):
    uid: str
    cluster_uid: str | None = None
    boot_id: str = ""
    address: str = ""  # advertised host:port of PostgreSQL
    api_address: str = ""
    host: str = ""  # the machine (node name) the keeper runs on
    data_dir: str = ""  # the keeper's --data-dir on that machine
    pid: int = 0  # the keeper's process id
    can_be_master: bool = True
    pg_running: bool = False
    healthy: bool = False  # PostgreSQL accepts connections and answered the status queries
    role: str = ROLE_NONE  # what PostgreSQL actually is: primary | replica | none (stopped)
    system_id: str | None = None
    timeline: int | None = None
    lsn: int | None = None  # current WAL position (primary) or max(receive, replay) (replica)
    replay_lsn: int | None = None
    streaming_from: str | None = None  # host:port the WAL receiver streams from
    synchronous_standbys: tuple[str, ...] | None = None  # applied synchronous_standby_names members
    replication: tuple[Replication, ...] = ()
    final_lsn: int | None = None  # checkpoint LSN of a cleanly stopped instance
    pending_restart: bool = False
    pg_version: str = ""
    phase: str = ""  # what the keeper is doing: initdb, basebackup, rewind, running, fenced...
    error: str = ""
    reported_at: float = 0.0
    desired_role: str = ""  # the role the keeper last read in the cluster data ("" before any)
    lease_ttl: int = 0  # the TTL the store granted to the keeper's lease
    pg_tls: bool = False  # its PostgreSQL serves TLS and takes TCP logins only with it
    roles_ready: bool = False  # as primary, it has created its roles and the application database
    checkpointed_for: float | None = None  # the ``started`` of the switchover it checkpointed for (prepare)
    promote_called_at: float | None = None  # wall time of its last promotion: pg_promote() called ...
    promoted_at: float | None = None  # ... and out of recovery
    # with a backup repository: {"stanza": bool, "last": {id, state, type, label, error, finished_at},
    # "backups": [{label, type, start, stop, wal_start, wal_stop, lsn_start, lsn_stop, size_bytes}], "archived_count",
    # "failed_count", "last_archived_at", "last_failed_at"} (pgha.keeper.backups); {} without
    backup: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "KeeperStatus":
        _check_version(d, "keeper status")
        try:
            f = _Fields(d)
            ss = f.opt(list, "synchronous_standbys")
            if ss is not None and not all(isinstance(m, str) for m in ss):
                raise TypeError("synchronous_standbys: expected a list of strings")
            return KeeperStatus(
                uid=f.req(str, "uid"),
                cluster_uid=f.opt(str, "cluster_uid"),
                boot_id=f.get(str, "boot_id", ""),
                address=f.get(str, "address", ""),
                api_address=f.get(str, "api_address", ""),
                host=f.get(str, "host", ""),
                data_dir=f.get(str, "data_dir", ""),
                pid=f.get(int, "pid", 0),
                can_be_master=f.get(bool, "can_be_master", True),
                pg_running=f.get(bool, "pg_running", False),
                healthy=f.get(bool, "healthy", False),
                role=f.get(str, "role", ROLE_NONE),
                system_id=f.opt(str, "system_id"),
                timeline=f.opt(int, "timeline"),
                lsn=f.opt(int, "lsn"),
                replay_lsn=f.opt(int, "replay_lsn"),
                streaming_from=f.opt(str, "streaming_from"),
                synchronous_standbys=tuple(ss) if ss is not None else None,
                replication=tuple(_replication(r) for r in f.get(list, "replication", [])),
                final_lsn=f.opt(int, "final_lsn"),
                pending_restart=f.get(bool, "pending_restart", False),
                pg_version=f.get(str, "pg_version", ""),
                phase=f.get(str, "phase", ""),
                error=f.get(str, "error", ""),
                reported_at=f.get(float, "reported_at", 0.0),
                desired_role=f.get(str, "desired_role", ""),
                lease_ttl=f.get(int, "lease_ttl", 0),
                pg_tls=f.get(bool, "pg_tls", False),
                roles_ready=f.get(bool, "roles_ready", False),
                checkpointed_for=f.opt(float, "checkpointed_for"),
                promote_called_at=f.opt(float, "promote_called_at"),
                promoted_at=f.opt(float, "promoted_at"),
                backup=f.get(dict, "backup", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"keeper status: malformed ({exc})") from None

    @staticmethod
    def loads(raw: bytes | str) -> "KeeperStatus":
        return KeeperStatus.from_dict(loads(raw, "keeper status"))


@dataclass(frozen=True)
class ProxyStatus(Document):
    uid: str
    address: str = ""  # host:port of the read-write listener
    ro_address: str = ""
    api_address: str = ""
    generation: int = -1  # the clusterdata proxy generation it has applied
    target: str | None = None
    listening: bool = False
    reported_at: float = 0.0
    applied_at: float = 0.0  # wall time it applied ``generation`` (its connections to old targets closed)

    @staticmethod
    def loads(raw: bytes | str) -> "ProxyStatus":
        d = loads(raw, "proxy status")
        try:
            f = _Fields(d)
            return ProxyStatus(
                uid=f.req(str, "uid"),
                address=f.get(str, "address", ""),
                ro_address=f.get(str, "ro_address", ""),
                api_address=f.get(str, "api_address", ""),
                generation=f.get(int, "generation", -1),
                target=f.opt(str, "target"),
                listening=f.get(bool, "listening", False),
                reported_at=f.get(float, "reported_at", 0.0),
                applied_at=f.get(float, "applied_at", 0.0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"proxy status: malformed ({exc})") from None


@dataclass(frozen=True)
class SentinelStatus:
    uid: str
    reported_at: float = 0.0
    host: str = ""  # the machine (node name) the sentinel runs on

    def dumps(self) -> str:
        return dumps({"format_version": FORMAT_VERSION, "uid": self.uid, "reported_at": self.reported_at,
                      "host": self.host})

    @staticmethod
    def loads(raw: bytes | str) -> "SentinelStatus":
        d = loads(raw, "sentinel status")
        try:
            f = _Fields(d)
            return SentinelStatus(uid=f.req(str, "uid"), reported_at=f.get(float, "reported_at", 0.0),
                                  host=f.get(str, "host", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"sentinel status: malformed ({exc})") from None


# --------------------------------------------------------------------------------------------
# Commands (pghactl's requests; the leading sentinel consumes them)

COMMAND_SWITCHOVER = "switchover"
KEEPER_COMMANDS = ("failkeeper", "removekeeper", "drain")  # commands/<kind>/<keeper uid>


@dataclass(frozen=True)
class Command:
    """A request under ``commands/<name>``: ``switchover``, or ``<kind>/<keeper uid>`` for the
    keeper commands. One key per request kind and keeper: a newer request replaces an older one."""

    kind: str  # switchover | failkeeper | removekeeper | drain
    keeper: str | None = None  # the keeper a keeper command is about (from the key name)
    id: str = ""  # switchover: the request id pghactl waits for in last_switchover
    to: str | None = None  # switchover: the wanted new primary (None: the sentinel chooses)
    drained: bool = True  # drain: take the keeper out (True) or put it back (False)
    requested_at: float = 0.0

    @property
    def name(self) -> str:
        return self.kind if self.keeper is None else f"{self.kind}/{self.keeper}"

    def dumps(self) -> str:
        doc: dict[str, Any] = {"format_version": FORMAT_VERSION, "requested_at": self.requested_at}
        if self.kind == COMMAND_SWITCHOVER:
            doc.update(id=self.id, to=self.to)
        elif self.kind == "drain":
            doc["drained"] = self.drained
        return dumps(doc)

    @staticmethod
    def loads(name: str, raw: bytes | str) -> "Command":
        """The command stored under ``commands/<name>``; FormatError for an unknown name or a
        malformed document."""
        what = f"command {name!r}"
        kind, _, keeper = name.partition("/")
        if kind == COMMAND_SWITCHOVER and not keeper:
            keeper_uid = None
        elif kind in KEEPER_COMMANDS and valid_uid(keeper):
            keeper_uid = keeper
        else:
            raise FormatError(f"{what}: unknown command (known: switchover, "
                              f"{', '.join(k + '/<keeper uid>' for k in KEEPER_COMMANDS)})")
        d = loads(raw, what)
        requested_at = d.get("requested_at", 0.0)
        if isinstance(requested_at, bool) or not isinstance(requested_at, (int, float)):
            raise FormatError(f"{what}: requested_at: expected a number, got {requested_at!r}")
        cmd = Command(kind=kind, keeper=keeper_uid, requested_at=float(requested_at))
        if kind == COMMAND_SWITCHOVER:
            rid, to = d.get("id", ""), d.get("to")
            if not isinstance(rid, str) or len(rid) > 64:
                raise FormatError(f"{what}: id: expected a short string, got {rid!r}")
            if to is not None and not (isinstance(to, str) and valid_uid(to)):
                raise FormatError(f"{what}: to: expected a keeper uid or null, got {to!r}")
            return replace(cmd, id=rid, to=to)
        if kind == "drain":
            drained = d.get("drained", True)
            if not isinstance(drained, bool):
                raise FormatError(f"{what}: drained: expected true or false, got {drained!r}")
            return replace(cmd, drained=drained)
        return cmd


def lsn_to_int(text: str | None) -> int | None:
    """'0/3000060' -> 50331744."""
    if not text:
        return None
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def int_to_lsn(value: int | None) -> str | None:
    if value is None:
        return None
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
