"""etcd authentication for one pgha cluster: a user and a role per component, each allowed only what
the component writes.

=========  ==========================================  =========================================
user       reads                                       writes
=========  ==========================================  =========================================
keeper     the cluster's keys                          ``keepers/`` (its status)
proxy      the cluster's keys                          ``proxies/`` (its status)
sentinel   the cluster's keys                          the cluster's keys (cluster data, leader
                                                       key, its status, removes commands)
operator   the cluster's keys                          the cluster's keys (pghactl: spec, commands,
                                                       init, destroy)
=========  ==========================================  =========================================

Users are ``<cluster>-<component>`` (``main-keeper``); roles have the same names. ``root`` (etcd's
administrator, needed to turn authentication on) gets its own password and is used only here.
``ensure_auth`` is idempotent: it adds what is missing, sets the passwords it is given, corrects the
permissions and turns authentication on (once on, it has to log in as root).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from pgha.model import Keys
from pgha.store.base import StoreError
from pgha.store.etcd import EtcdStore, _prefix_end

COMPONENTS = ("keeper", "proxy", "sentinel", "operator")
_WRITES = {"keeper": "keepers", "proxy": "proxies", "sentinel": "", "operator": ""}  # "" = the whole prefix


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def user_name(cluster: str, component: str) -> str:
    return f"{cluster}-{component}"


@dataclass(frozen=True)
class Permission:
    kind: str  # READ | WRITE | READWRITE
    prefix: str


def permissions(keys: Keys, component: str) -> list[Permission]:
    """What ``component``'s role is granted (key prefixes)."""
    if component not in _WRITES:
        raise ValueError(f"unknown component {component!r}: one of {', '.join(COMPONENTS)}")
    sub = _WRITES[component]
    if not sub:
        return [Permission("READWRITE", keys.base)]
    return [Permission("READ", keys.base), Permission("WRITE", getattr(keys, sub))]


def _call(store: EtcdStore, path: str, body: dict[str, object], ignore: tuple[str, ...] = ()) -> dict[str, object]:
    try:
        return store.request(path, body)
    except StoreError as exc:
        if any(text in str(exc) for text in ignore):
            return {}
        raise


def auth_enabled(store: EtcdStore, root_password: str) -> bool:
    """Whether etcd's authentication is on (logs in as root: etcd 3.4 has no status call for it).
    Raises StoreError when it is on and the root password is not the one given."""
    try:
        store.request("/v3/auth/authenticate", {"name": "root", "password": root_password})
    except StoreError as exc:
        if "authentication is not enabled" in str(exc):
            return False
        if "authentication failed" in str(exc):
            raise StoreError("etcd authentication is on and the root password given is not etcd's root "
                             "password") from None
        raise
    return True


def ensure_auth(endpoints: str, keys: Keys, cluster: str, passwords: dict[str, str], *,
                ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                timeout: float = 5.0) -> list[str]:
    """Users, roles and permissions of ``cluster`` (``passwords``: component -> password, and "root"),
    then authentication on. Returns what it changed, one line each."""
    if "root" not in passwords:
        raise ValueError("ensure_auth needs the root password too")
    tls = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file, "timeout": timeout}
    plain = EtcdStore(endpoints, **tls)
    try:
        enabled = auth_enabled(plain, passwords["root"])
    finally:
        plain.close()
    store = EtcdStore(endpoints, user="root", password=passwords["root"], **tls) if enabled else EtcdStore(endpoints, **tls)
    try:
        changes = _ensure(store, keys, cluster, passwords, enabled)
        if not enabled:
            store.request("/v3/auth/enable", {})
            changes.append("authentication enabled")
        return changes
    finally:
        store.close()


def _logs_in(store: EtcdStore, user: str, password: str) -> bool:
    try:
        store.request("/v3/auth/authenticate", {"name": user, "password": password})
    except StoreError:
        return False
    return True


def _ensure(store: EtcdStore, keys: Keys, cluster: str, passwords: dict[str, str], enabled: bool) -> list[str]:
    changes: list[str] = []
    users = {str(u) for u in (store.request("/v3/auth/user/list", {}).get("users") or [])}
    roles = {str(r) for r in (store.request("/v3/auth/role/list", {}).get("roles") or [])}
    wanted = [("root", "root", passwords["root"])] + [
        (user_name(cluster, c), user_name(cluster, c), passwords[c]) for c in COMPONENTS if c in passwords]
    for user, role, password in wanted:
        if role not in roles:
            _call(store, "/v3/auth/role/add", {"name": role}, ("role name already exists",))
            changes.append(f"added role {role}")
        if user not in users:
            _call(store, "/v3/auth/user/add", {"name": user, "password": password}, ("user name already exists",))
            changes.append(f"added user {user}")
        elif user != "root" and not (enabled and _logs_in(store, user, password)):
            store.request("/v3/auth/user/changepw", {"name": user, "password": password})
            if enabled:
                changes.append(f"changed the password of {user}")
        _call(store, "/v3/auth/user/grant", {"user": user, "role": role})
        if role == "root":
            continue
        component = role.rsplit("-", 1)[1]
        have = store.request("/v3/auth/role/get", {"role": role}).get("perm") or []
        have_set = {(str(p.get("permType", "READ")), str(p.get("key", "")), str(p.get("range_end", "")))
                    for p in have if isinstance(p, dict)}
        want_set = {(p.kind, _b64(p.prefix), _prefix_end(p.prefix)) for p in permissions(keys, component)}
        for kind, key, end in sorted(have_set - want_set):
            store.request("/v3/auth/role/revoke", {"role": role, "key": key, "range_end": end})
            changes.append(f"revoked {kind} on {base64.b64decode(key).decode()}* from {role}")
        for kind, key, end in sorted(want_set - have_set):
            store.request("/v3/auth/role/grant", {"name": role, "perm": {"permType": kind, "key": key,
                                                                         "range_end": end}})
            changes.append(f"granted {kind} on {base64.b64decode(key).decode()}* to {role}")
    return changes
