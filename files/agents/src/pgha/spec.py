"""The cluster specification: what the operator asks for, validated and with defaults filled in.

The spec is JSON with snake_case keys. Durations are numbers of seconds or strings such as
``"500ms"``, ``"5s"``, ``"2m"``. ``normalize()`` turns a user document into a ``Spec`` (every key
present, durations as float seconds) or raises ``SpecError`` naming the bad key. The spec is parsed
once, where it is read (the spec key, the cluster data's copy of it); agents use the ``Spec`` and
never merge defaults themselves. ``Spec.to_dict()`` is the canonical JSON form that is stored.
"""

from __future__ import annotations

import copy
import datetime
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pgha.backup import parse_schedule

# Defaults are chosen for fast, safe failover on a LAN: a keeper whose lease is not renewed for
# fail_interval is failed; the sentinel and keepers react to store changes at once (watch) and
# otherwise poll every sleep_interval.
DEFAULTS: dict[str, Any] = {
    "sleep_interval": 0.5,
    "fail_interval": 3.0,
    "proxy_check_interval": 0.5,
    "proxy_timeout": 3.0,
    "synchronous_replication": False,
    "min_synchronous_standbys": 1,
    "max_synchronous_standbys": 1,
    "max_standby_lag": 1024 * 1024,
    "use_pg_rewind": True,
    # keep the store's (etcd's) leader off the primary's host: a partition or crash of that host then
    # costs no etcd election on top of the failover (the leading sentinel moves the etcd leadership)
    "store_leader_off_primary": True,
    "pg_parameters": {},
    "pg_hba": [],
    "init_mode": "new",
    "existing_keeper": None,
    # init_mode pitr: what to restore from the backup repository (see _pitr)
    "pitr": None,
    "convergence_timeout": 60.0,
    "switchover_timeout": 30.0,
    "dead_keeper_removal_interval": 48 * 3600.0,
    # with a backup repository (pgha-keeper --backup-repo-path): a WAL segment is archived at least
    # this often when there are writes (what a total loss costs at most), and full backups kept
    "archive_timeout": 10.0,
    "backup_retention_full": 2,
    # how a new or re-cloned replica gets its data: "backup" restores the latest backup of the
    # cluster's current timeline from the repository, replays the archive, then streams (the
    # primary serves only the WAL since); "basebackup" (and "backup" without a usable backup) copies
    # everything from the primary with pg_basebackup
    "replica_create_method": "backup",
    # when the primary's keeper backs up by itself (cron expressions in UTC, "" = never): a run
    # missed is made up at once, so a schedule gives a new cluster its first backup
    "backup_schedule_full": "",
    "backup_schedule_diff": "",
}

DURATION_KEYS = {
    "sleep_interval",
    "fail_interval",
    "proxy_check_interval",
    "proxy_timeout",
    "convergence_timeout",
    "switchover_timeout",
    "dead_keeper_removal_interval",
    "archive_timeout",
}

# Parameters the keeper owns: setting them in pg_parameters would break replication or fencing.
MANAGED_PG_PARAMETERS = frozenset(
    {
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "unix_socket_permissions",
        "hot_standby",
        "primary_conninfo",
        "primary_slot_name",
        "synchronous_standby_names",
        "recovery_target_timeline",
        "recovery_target",
        "recovery_target_time",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_xid",
        "recovery_target_action",
        "recovery_target_inclusive",
        "max_wal_senders",
        "max_replication_slots",
        "wal_log_hints",
        "restore_command",
        "promote_trigger_file",
        "hba_file",
        "ident_file",
        "config_file",
        "data_directory",
        "include",
        "include_if_exists",
        "include_dir",
    }
)

# Parameters that make PostgreSQL run a command or load code as the agents' user, or write files
# where it is told: whoever may write the spec (the store) must not get a shell through them.
UNSAFE_PG_PARAMETERS = frozenset(
    {
        "archive_command",
        "archive_library",
        "archive_cleanup_command",
        "recovery_end_command",
        "ssl_passphrase_command",
        "shared_preload_libraries",
        "session_preload_libraries",
        "local_preload_libraries",
        "dynamic_library_path",
        "jit_provider",
        "log_directory",
        "log_filename",
        "external_pid_file",
        "krb_server_keyfile",
        "ssl_cert_file",
        "ssl_key_file",
        "ssl_ca_file",
        "ssl_crl_file",
        "ssl_crl_dir",
        "stats_temp_directory",
    }
)
# Settings that would write passwords into the server log (ALTER ROLE ... PASSWORD is DDL), or weaken
# how passwords are stored: only these values are accepted.
RESTRICTED_PG_PARAMETERS = {
    "log_statement": ("none",),
    "password_encryption": ("scram-sha-256",),
}
# Statement logging by duration logs every statement (passwords too) when set to 0.
NO_ZERO_PG_PARAMETERS = frozenset({"log_min_duration_statement", "log_min_duration_sample"})
# pg_hba.conf methods that let a client in without a password, or with one sent in clear text
REFUSED_HBA_METHODS = frozenset({"trust", "password", "ident"})
HBA_TYPES = frozenset({"local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"})
# Upper bounds: beyond them a failure would go unnoticed for minutes.
MAX_FAIL_INTERVAL = 120.0
MAX_PROXY_TIMEOUT = 120.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_IDENT = re.compile(r"^[a-z0-9_]{1,63}$")
PITR_TARGETS = ("target_time", "target_lsn", "target_name")
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
_RESTORE_POINT = re.compile(r"^[A-Za-z0-9_.:-]{1,63}$")
_BACKUP_LABEL = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")
_STANZA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class SpecError(ValueError):
    """A spec that cannot be accepted; the message names the offending key."""


def parse_duration(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SpecError(f"{key}: expected a duration (seconds or a string like '500ms'), got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise SpecError(
                f"{key}: cannot parse duration {value!r} (use seconds or a string like '500ms', '5s', '1m')"
            )
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise SpecError(f"{key}: expected a duration, got {type(value).__name__}")
    if seconds < 0:
        raise SpecError(f"{key}: must not be negative")
    return seconds


def _int(key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{key}: expected an integer, got {value!r}")
    if value < minimum:
        raise SpecError(f"{key}: must be at least {minimum}, got {value}")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{key}: expected true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Spec:
    """A validated spec, every key present (see DEFAULTS for what each means)."""

    sleep_interval: float
    fail_interval: float
    proxy_check_interval: float
    proxy_timeout: float
    synchronous_replication: bool
    min_synchronous_standbys: int
    max_synchronous_standbys: int
    max_standby_lag: int
    use_pg_rewind: bool
    store_leader_off_primary: bool
    pg_parameters: dict[str, str] = field(hash=False)
    pg_hba: tuple[str, ...]
    init_mode: str
    existing_keeper: str | None
    convergence_timeout: float
    switchover_timeout: float
    dead_keeper_removal_interval: float
    archive_timeout: float = 10.0
    backup_retention_full: int = 2
    pitr: dict[str, Any] | None = field(default=None, hash=False)
    replica_create_method: str = "backup"
    backup_schedule_full: str = ""
    backup_schedule_diff: str = ""

    @property
    def replaced_clusters(self) -> tuple[str, ...]:
        """The uids of the clusters this one restores in place (``pitr.replaces``): their keepers'
        data is discarded."""
        return tuple((self.pitr or {}).get("replaces") or ())

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form (what is stored and printed)."""
        d = asdict(self)
        d["pg_hba"] = list(self.pg_hba)
        return d


def default() -> Spec:
    """The spec of a cluster initialized with ``{}``."""
    return normalize({})


def _pg_parameters(params: Any) -> dict[str, str]:
    if not isinstance(params, dict):
        raise SpecError("pg_parameters: expected an object of parameter names to values")
    clean: dict[str, str] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not re.match(r"^[a-z_][a-z0-9_.]*$", name):
            raise SpecError(f"pg_parameters: invalid parameter name {name!r}")
        if name in MANAGED_PG_PARAMETERS:
            raise SpecError(f"pg_parameters.{name}: managed by the keeper and cannot be set")
        if name in UNSAFE_PG_PARAMETERS:
            raise SpecError(f"pg_parameters.{name}: refused: it makes PostgreSQL run a command, load code or "
                            "write files where it is told, as the agents' user")
        if value is None:
            continue
        if isinstance(value, bool):
            value = "on" if value else "off"
        if not isinstance(value, (str, int, float)):
            raise SpecError(f"pg_parameters.{name}: expected a string or number, got {value!r}")
        text = str(value)
        allowed = RESTRICTED_PG_PARAMETERS.get(name)
        if allowed is not None and text.strip().strip("'").lower() not in allowed:
            raise SpecError(f"pg_parameters.{name}: only {', '.join(allowed)} is accepted (other values write "
                            "passwords to the log or store them weakly)")
        if name in NO_ZERO_PG_PARAMETERS and text.strip().strip("'") in ("0", "0ms", "0s"):
            raise SpecError(f"pg_parameters.{name}: 0 logs every statement, passwords included; use a threshold")
        clean[name] = text
    return clean


def _pg_hba(hba: Any) -> tuple[str, ...]:
    if not isinstance(hba, (list, tuple)) or not all(isinstance(line, str) for line in hba):
        raise SpecError("pg_hba: expected a list of pg_hba.conf lines")
    for line in hba:
        if "\n" in line or "\r" in line:
            raise SpecError("pg_hba: a line must not contain a newline")
        method = _hba_method(line)
        if method in REFUSED_HBA_METHODS:
            raise SpecError(f"pg_hba: {line!r}: method {method} is refused (it admits clients without a password, "
                            "or with one in clear text); use scram-sha-256")
    return tuple(hba)


def _hba_method(line: str) -> str | None:
    """The authentication method of a pg_hba.conf line (None for a comment or a blank line)."""
    fields = line.split("#", 1)[0].split()
    if not fields:
        return None
    kind = fields[0].lower()
    if kind not in HBA_TYPES:
        raise SpecError(f"pg_hba: {line!r}: unknown connection type {fields[0]!r} (one of {', '.join(sorted(HBA_TYPES))})")
    # local DATABASE USER METHOD; host* DATABASE USER ADDRESS [MASK] METHOD
    rest = fields[3:] if kind == "local" else fields[4:]
    if kind != "local" and rest and re.match(r"^\d+\.\d+\.\d+\.\d+$", rest[0]):
        rest = rest[1:]  # an address followed by a separate netmask
    if not rest:
        raise SpecError(f"pg_hba: {line!r}: no authentication method")
    return rest[0].lower()


def normalize(doc: Any) -> Spec:
    """Validate a user spec (a JSON object, or a Spec) and return it with every default filled in."""
    if isinstance(doc, Spec):
        return doc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SpecError(f"spec: expected a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - set(DEFAULTS))
    if unknown:
        raise SpecError(f"unknown spec key(s): {', '.join(unknown)} (known: {', '.join(sorted(DEFAULTS))})")
    spec = copy.deepcopy(DEFAULTS)
    for key, value in doc.items():
        if value is None and key != "existing_keeper":
            continue  # null means "use the default" (merge-patch deletion)
        spec[key] = copy.deepcopy(value)

    for key in DURATION_KEYS:
        spec[key] = parse_duration(key, spec[key])
    for key in ("synchronous_replication", "use_pg_rewind", "store_leader_off_primary"):
        spec[key] = _bool(key, spec[key])
    spec["min_synchronous_standbys"] = _int("min_synchronous_standbys", spec["min_synchronous_standbys"], 0)
    spec["max_synchronous_standbys"] = _int("max_synchronous_standbys", spec["max_synchronous_standbys"], 1)
    spec["max_standby_lag"] = _int("max_standby_lag", spec["max_standby_lag"], 0)
    spec["backup_retention_full"] = _int("backup_retention_full", spec["backup_retention_full"], 1)
    if not 1 <= spec["archive_timeout"] <= 3600:
        raise SpecError("archive_timeout: between 1s and 1h (longer risks that much data on a total loss)")

    if spec["min_synchronous_standbys"] > spec["max_synchronous_standbys"]:
        raise SpecError("min_synchronous_standbys must not exceed max_synchronous_standbys")
    if spec["sleep_interval"] <= 0:
        raise SpecError("sleep_interval: must be greater than zero")
    if spec["fail_interval"] < 1:
        raise SpecError("fail_interval: must be at least 1s (etcd leases have whole-second TTLs)")
    if spec["fail_interval"] > MAX_FAIL_INTERVAL:
        raise SpecError(f"fail_interval: at most {MAX_FAIL_INTERVAL:g}s (a failed primary would go unnoticed)")
    if spec["proxy_timeout"] > MAX_PROXY_TIMEOUT:
        raise SpecError(f"proxy_timeout: at most {MAX_PROXY_TIMEOUT:g}s (a proxy cut off would relay that long)")
    if spec["fail_interval"] <= spec["sleep_interval"]:
        raise SpecError("fail_interval must be greater than sleep_interval")
    if spec["proxy_check_interval"] <= 0:
        raise SpecError("proxy_check_interval: must be greater than zero")
    if spec["proxy_check_interval"] >= spec["proxy_timeout"]:
        raise SpecError("proxy_check_interval must be less than proxy_timeout")

    spec["pg_parameters"] = _pg_parameters(spec["pg_parameters"])
    spec["pg_hba"] = _pg_hba(spec["pg_hba"])
    for key in ("backup_schedule_full", "backup_schedule_diff"):
        if not isinstance(spec[key], str):
            raise SpecError(f"{key}: a cron expression (string), e.g. '0 1 * * 0'")
        spec[key] = spec[key].strip()
        if spec[key]:
            try:
                parse_schedule(spec[key])
            except ValueError as exc:
                raise SpecError(f"{key}: {exc}") from None
    if spec["replica_create_method"] not in ("backup", "basebackup"):
        raise SpecError(f"replica_create_method: 'backup' or 'basebackup', got {spec['replica_create_method']!r}")
    if spec["init_mode"] not in ("new", "existing", "pitr"):
        raise SpecError(f"init_mode: expected 'new', 'existing' or 'pitr', got {spec['init_mode']!r}")
    if spec["init_mode"] == "pitr":
        spec["pitr"] = _pitr(spec["pitr"] if spec["pitr"] is not None else {})
    elif spec["pitr"] is not None:
        raise SpecError("pitr: only with init_mode 'pitr'")
    if spec["init_mode"] == "existing":
        uid = spec["existing_keeper"]
        if not isinstance(uid, str) or not _IDENT.match(uid):
            raise SpecError("existing_keeper: init_mode 'existing' needs the uid of the keeper whose data to adopt")
    return Spec(**spec)


def _pitr(doc: Any) -> dict[str, str]:
    """What a point-in-time recovery restores: at most one of ``target_time`` (a timestamp with its
    time zone), ``target_lsn`` or ``target_name`` (a restore point), none for the end of the
    archive; ``backup`` (a pgBackRest label; by default the latest that ended before the target);
    ``stanza`` (the cluster whose backups to restore; by default this cluster's name). ``replaces``
    (the uids of the cluster restored in place, and of the restores of it that did not finish: their
    keepers' data is discarded) is written by ``pghactl init --yes``."""
    if not isinstance(doc, dict):
        raise SpecError("pitr: expected an object such as {\"target_time\": \"2026-12-01 10:00:00+00\"}")
    known = (*PITR_TARGETS, "backup", "stanza", "replaces")
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise SpecError(f"pitr: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
    out = {k: v for k, v in doc.items() if v is not None}
    for key, value in out.items():
        if key != "replaces" and not isinstance(value, str):
            raise SpecError(f"pitr.{key}: expected a string, got {value!r}")
    targets = [k for k in PITR_TARGETS if k in out]
    if len(targets) > 1:
        raise SpecError(f"pitr: give one target, not {' and '.join(targets)}")
    if "target_time" in out:
        out["target_time"] = parse_timestamp(out["target_time"])
    if "target_lsn" in out and not _LSN.match(out["target_lsn"]):
        raise SpecError(f"pitr.target_lsn: {out['target_lsn']!r} is not an LSN such as 0/3000028")
    if "target_name" in out and not _RESTORE_POINT.match(out["target_name"]):
        raise SpecError("pitr.target_name: a restore point name of 1-63 letters, digits or _.:-")
    if "backup" in out and not _BACKUP_LABEL.match(out["backup"]):
        raise SpecError(f"pitr.backup: {out['backup']!r} is not a pgBackRest backup label "
                        "(such as 20261201-100000F or 20261201-100000F_20261201-120000I; pghactl backups lists them)")
    if "stanza" in out and not _STANZA.match(out["stanza"]):
        raise SpecError("pitr.stanza: the name of the cluster whose backups to restore (letters, digits, _.-)")
    replaces = out.get("replaces")
    if replaces is not None and (not isinstance(replaces, list) or not 1 <= len(replaces) <= 8 or not all(
            isinstance(u, str) and re.match(r"^[0-9a-f]{1,32}$", u) for u in replaces)):
        raise SpecError("pitr.replaces: a list of up to 8 cluster uids")
    return out


def parse_timestamp(text: str) -> str:
    """A timestamp with its time zone, in the form PostgreSQL and pgBackRest read
    (``2026-12-01 10:00:00.25+00:00``); SpecError without a time zone."""
    raw = text.strip()
    try:
        ts = datetime.datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        raise SpecError(f"pitr.target_time: cannot read {text!r} (use a timestamp with its time zone, "
                        "such as 2026-12-01 10:00:00+00)") from None
    if ts.tzinfo is None:
        raise SpecError(f"pitr.target_time: {text!r} has no time zone (add one, such as +00)")
    return ts.isoformat(sep=" ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def update(current: Spec, patch: Any) -> Spec:
    """Apply a merge patch to a spec; refuses changes that cannot be applied live."""
    if not isinstance(patch, dict):
        raise SpecError("patch: expected a JSON object")
    return replace_whole(current, merge_patch(current.to_dict(), patch))


# How the cluster was created: a spec that leaves them all out keeps the stored ones (a restored
# cluster's site.yml spec does not name its init_mode)
INIT_KEYS = ("init_mode", "existing_keeper", "pitr")


def with_init_keys(current: Spec | None, doc: Any) -> Any:
    """``doc`` with ``current``'s init keys when it names none of them."""
    if current is None or not isinstance(doc, dict) or any(k in doc for k in INIT_KEYS):
        return doc
    stored = current.to_dict()
    return {**doc, **{k: stored[k] for k in INIT_KEYS}}


def replace_whole(current: Spec, doc: Any) -> Spec:
    """The spec ``doc`` (keys left out take their default; the init keys all left out: the stored
    ones) as the successor of ``current``; refuses changes that cannot be applied live."""
    new = normalize(with_init_keys(current, doc))
    if new.init_mode != current.init_mode:
        raise SpecError("init_mode cannot be changed after init")
    if new.pitr != current.pitr:
        raise SpecError("pitr cannot be changed after init (pghactl init --yes restores again)")
    return new


def valid_uid(uid: str) -> bool:
    return bool(_IDENT.match(uid))
