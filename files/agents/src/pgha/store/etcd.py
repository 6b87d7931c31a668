"""A thin etcd v3 client over etcd's JSON gateway (``/v3/...``), standard library only.

Why not a client library: etcd3 (grpc) fails to import with current protobuf, and etcd3gw pulls in
a stack of dependencies for the dozen calls we make. This client keeps one HTTP/1.1 keep-alive
connection per thread, fails over between endpoints in order, and supports TLS with a CA file and
a client certificate.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from pgha.store.base import KV, Store, StoreError, WatchEvent


def _b64(value: bytes | str) -> str:
    if isinstance(value, str):
        value = value.encode()
    return base64.b64encode(value).decode()


def _unb64(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


class _Unreachable(StoreError):
    """An endpoint that did not answer (the next one may)."""


def _error_text(data: bytes) -> str:
    """etcd's error message from a JSON error answer, else the start of the answer."""
    try:
        doc = json.loads(data)
        if isinstance(doc, dict) and (doc.get("error") or doc.get("message")):
            return str(doc.get("error") or doc.get("message"))[:300]
    except ValueError:
        pass
    return data.decode(errors="replace")[:300]


def _tls_hint(exc: BaseException, client_cert: bool = True) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{text} (is --store-ca-file the CA that signed etcd's certificate?)"
    if isinstance(exc, ssl.SSLError) and ("CERTIFICATE_REQUIRED" in text.upper() or not client_cert):
        # with TLS 1.3 a refused client certificate may show as an EOF right after the handshake
        return f"{text} (etcd wants a client certificate signed by its CA: --store-cert-file, --store-key-file)"
    return text


def _prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return _b64(bytes(raw[: i + 1]))
    return _b64(b"\0")


class Endpoint:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"invalid store endpoint {url!r}: expected http(s)://host:port")
        self.url = url.strip()
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or 2379


class EtcdStore(Store):
    """With ``user`` and ``password``, requests carry an etcd auth token: one per endpoint (etcd's
    simple tokens are known only to the member that issued them), asked for when first needed and
    again when a member no longer knows it."""

    def __init__(self, endpoints: str, *, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, timeout: float = 2.0, user: str | None = None,
                 password: str | None = None) -> None:
        self.endpoints = [Endpoint(e) for e in endpoints.split(",") if e.strip()]
        if not self.endpoints:
            raise StoreError("no store endpoints given (--store-endpoints)")
        if bool(user) != bool(password):
            raise StoreError("a store user needs a password and a password a user (--store-user, "
                             "--store-password-file)")
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        self._client_cert = bool(cert_file)
        if any(e.tls for e in self.endpoints):
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
                if cert_file:
                    self._ssl.load_cert_chain(cert_file, key_file)
            except (OSError, ssl.SSLError) as exc:
                raise StoreError(f"cannot load the store's TLS files (--store-ca-file, --store-cert-file, "
                                 f"--store-key-file): {exc}") from None
        self._local = threading.local()
        self._preferred = 0
        self._user = user
        self._password = password
        self._tokens: dict[int, str] = {}
        self._token_lock = threading.Lock()

    # ------------------------------------------------------------------ transport
    def _connect(self, ep: Endpoint, timeout: float) -> http.client.HTTPConnection:
        if ep.tls:
            return http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(ep.host, ep.port, timeout=timeout)

    def _conn(self, idx: int) -> http.client.HTTPConnection:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(idx)
        if conn is None:
            conn = conns[idx] = self._connect(self.endpoints[idx], self.timeout)
        return conn

    def _drop(self, idx: int) -> None:
        conns = getattr(self._local, "conns", {})
        conn = conns.pop(idx, None)
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ authentication
    def _headers(self, idx: int, timeout: float) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._user:
            headers["Authorization"] = self._token(idx, timeout)
        return headers

    def _token(self, idx: int, timeout: float) -> str:
        """This endpoint's auth token, asked for when there is none yet. Raises StoreError."""
        with self._token_lock:
            token = self._tokens.get(idx)
        if token:
            return token
        ep = self.endpoints[idx]
        try:
            status, data = self._post_once(ep, "/v3/auth/authenticate", {"name": self._user, "password": self._password},
                                           {"Content-Type": "application/json"}, timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise _Unreachable(f"{ep.url}: {exc or type(exc).__name__}") from None
        if status != 200:
            raise StoreError(f"etcd authentication of user {self._user!r} at {ep.url}: HTTP {status}: "
                             f"{_error_text(data)}")
        try:
            token = str(json.loads(data)["token"])
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"etcd authentication at {ep.url}: unexpected answer") from None
        with self._token_lock:
            self._tokens[idx] = token
        return token

    def _post_once(self, ep: Endpoint, path: str, body: dict[str, Any], headers: dict[str, str],
                   timeout: float) -> tuple[int, bytes]:
        """One POST on a connection of its own to ``ep``: (HTTP status, body). Transport errors
        (OSError, HTTPException) are the caller's to word."""
        conn = self._connect(ep, timeout)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _forget_token(self, idx: int) -> None:
        with self._token_lock:
            self._tokens.pop(idx, None)

    def request(self, path: str, body: dict[str, Any] | None = None, method: str = "POST",
                budget: float | None = None) -> dict[str, Any]:
        """One JSON request, trying each endpoint once starting with the last one that worked.

        Each endpoint gets at most ``timeout`` seconds; with a ``budget`` the whole request, over
        every endpoint, also ends after ``budget`` seconds (each endpoint then gets an equal share,
        so that one that does not answer cannot use up the time of the others): lease renewals use
        it so that a renewal attempt always ends well inside the lease's TTL."""
        payload = json.dumps(body or {}).encode()
        errors = []
        n = len(self.endpoints)
        started = time.monotonic()
        share = self.timeout if budget is None else max(0.05, min(self.timeout, budget / n))
        for step in range(n):
            idx = (self._preferred + step) % n
            retried_token = False
            for attempt in range(3):  # a kept-alive connection may have been closed by the server
                timeout = share
                if budget is not None:
                    timeout = min(share, budget - (time.monotonic() - started))
                    if timeout <= 0.01:
                        errors.append(f"{self.endpoints[idx].url}: no time left of the {budget:.2f}s budget")
                        raise StoreError("store unreachable: " + "; ".join(errors))
                try:
                    headers = self._headers(idx, timeout)
                except _Unreachable as exc:
                    errors.append(str(exc))
                    break
                conn = self._conn(idx)
                try:
                    conn.timeout = timeout
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout)
                    conn.request(method, path, body=payload if method == "POST" else None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    self._drop(idx)
                    if attempt == 0 and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                                         ConnectionResetError)):
                        continue
                    errors.append(f"{self.endpoints[idx].url}: {_tls_hint(exc, self._client_cert)}")
                    break
                if resp.status == 401 and self._user and not retried_token:
                    self._forget_token(idx)  # this member does not know the token (restarted, or expired)
                    retried_token = True
                    continue
                if resp.status != 200:
                    text = _error_text(data)
                    if resp.status >= 500 or resp.status == 404:
                        errors.append(f"{self.endpoints[idx].url}: HTTP {resp.status} {text}")
                        break
                    raise StoreError(f"etcd {path}: HTTP {resp.status}: {text}")
                self._preferred = idx
                try:
                    return json.loads(data) if data else {}
                except ValueError:
                    raise StoreError(f"etcd {path}: invalid JSON answer") from None
        raise StoreError("store unreachable: " + "; ".join(errors))

    # ------------------------------------------------------------------ KV
    @staticmethod
    def _kv(d: dict[str, Any]) -> KV:
        return KV(
            key=_unb64(d.get("key")).decode(),
            value=_unb64(d.get("value")),
            mod_revision=int(d.get("mod_revision", 0)),
            create_revision=int(d.get("create_revision", 0)),
            lease=int(d.get("lease", 0)),
        )

    def get(self, key: str) -> KV | None:
        resp = self.request("/v3/kv/range", {"key": _b64(key)})
        kvs = resp.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        resp = self.request("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        rev = int(resp.get("header", {}).get("revision", 0))
        return [self._kv(d) for d in resp.get("kvs") or []], rev

    def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        resp = self.request("/v3/kv/put", body)
        return int(resp.get("header", {}).get("revision", 0))

    def cas(self, key: str, value: bytes | str, mod_revision: int, *, lease: int = 0,
            guard: tuple[str, bytes | str] | None = None) -> bool:
        compare: list[dict[str, Any]] = [
            {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}
        ]
        if guard is not None:
            compare.append({"key": _b64(guard[0]), "target": "VALUE", "result": "EQUAL",
                            "value": _b64(guard[1])})
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        resp = self.request("/v3/kv/txn", {"compare": compare, "success": [{"request_put": put}]})
        return bool(resp.get("succeeded", False))

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        if mod_revision is None:
            resp = self.request("/v3/kv/deleterange", {"key": _b64(key)})
            return int(resp.get("deleted", 0)) > 0
        resp = self.request("/v3/kv/txn", {
            "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        })
        return bool(resp.get("succeeded", False))

    def delete_prefix(self, prefix: str) -> None:
        self.request("/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})

    # ------------------------------------------------------------------ leases
    def grant(self, ttl: int, budget: float | None = None) -> int:
        return self.grant_lease(ttl, budget)[0]

    def grant_lease(self, ttl: int, budget: float | None = None) -> tuple[int, int]:
        resp = self.request("/v3/lease/grant", {"TTL": str(int(ttl))}, budget=budget)
        if resp.get("error"):
            raise StoreError(f"lease grant failed: {resp['error']}")
        try:
            return int(resp["ID"]), int(resp.get("TTL") or ttl)
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"lease grant: unexpected answer {str(resp)[:200]}") from None

    def keepalive(self, lease: int, budget: float | None = None) -> int:
        """The lease's TTL after renewing it; 0 when the server no longer knows it (expired or
        revoked: etcd answers with the ID and no TTL). Any other answer is a StoreError, never 0: a
        keeper kills its primary when its lease is gone (``Lease.on_lost``)."""
        resp = self.request("/v3/lease/keepalive", {"ID": str(lease)}, budget=budget)
        if resp.get("error"):
            text = str(resp["error"].get("message", resp["error"]) if isinstance(resp["error"], dict) else resp["error"])
            if "lease not found" in text:
                return 0
            raise StoreError(f"lease keepalive failed: {text[:200]}")
        result = resp.get("result")
        if not isinstance(result, dict) or "header" not in result:
            raise StoreError(f"lease keepalive: unexpected answer {str(resp)[:200]}")
        try:
            return int(result.get("TTL", 0) or 0)
        except (TypeError, ValueError):
            raise StoreError(f"lease keepalive: unexpected answer {str(resp)[:200]}") from None

    def lease_alive(self, lease: int) -> bool:
        """Asks without renewing: etcd answers TTL -1 for a lease that expired or was revoked (and
        0 for one with less than a second left, which is still alive)."""
        resp = self.request("/v3/lease/timetolive", {"ID": str(lease)})
        try:
            return int(resp.get("TTL", -1)) >= 0
        except (TypeError, ValueError):
            raise StoreError(f"lease timetolive: unexpected answer {str(resp)[:200]}") from None

    def revoke(self, lease: int) -> None:
        try:
            self.request("/v3/lease/revoke", {"ID": str(lease)})
        except StoreError as exc:
            if "not found" not in str(exc):
                raise

    # ------------------------------------------------------------------ watch
    def wait(self, prefix: str, after_revision: int, timeout: float) -> bool:
        """Long-poll one watch on ``prefix``: True as soon as an event after ``after_revision``
        arrives, False on timeout. Uses its own connection so it never blocks other requests."""
        return bool(self.wait_events(prefix, after_revision, timeout))

    def wait_events(self, prefix: str, after_revision: int, timeout: float) -> list[WatchEvent]:
        """The events of the first watch response after ``after_revision`` (empty on timeout)."""
        body = json.dumps({"create_request": {"key": _b64(prefix), "range_end": _prefix_end(prefix),
                                              "start_revision": str(after_revision + 1)}}).encode()
        n = len(self.endpoints)
        for step in range(n):
            idx = (self._preferred + step) % n
            ep = self.endpoints[idx]
            conn = self._connect(ep, timeout)
            try:
                # an endpoint that cannot be reached is no answer at all, not "nothing changed"
                conn.connect()
            except OSError:
                conn.close()
                continue
            try:
                conn.request("POST", "/v3/watch", body=body, headers=self._headers(idx, timeout))
                resp = conn.getresponse()
                if resp.status == 401:
                    self._forget_token(idx)
                    continue
                if resp.status != 200:
                    continue
                while True:
                    line = resp.readline()
                    if not line:
                        return []
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if msg.get("error"):  # e.g. a token the member no longer knows, or permission denied
                        self._forget_token(idx)
                        raise StoreError(f"watch at {ep.url}: {_error_text(line)}")
                    result = msg.get("result", {})
                    if result.get("events"):
                        out = []
                        for ev in result["events"]:
                            kv = ev.get("kv", {})
                            out.append(WatchEvent("delete" if ev.get("type") == "DELETE" else "put",
                                                  _unb64(kv.get("key", "")).decode(errors="replace"),
                                                  int(kv.get("mod_revision", 0))))
                        return out
                    if result.get("compact_revision") or result.get("canceled"):
                        rev = int(result.get("header", {}).get("revision", after_revision + 1))
                        return [WatchEvent("resync", prefix, rev)]
            except (socket.timeout, TimeoutError):
                return []
            except (OSError, http.client.HTTPException, _Unreachable):
                continue
            finally:
                conn.close()
        raise StoreError("store unreachable for watch")

    # ------------------------------------------------------------------ cluster health
    def member_health(self) -> list[dict[str, Any]]:
        """For each endpoint: reachable, healthy, member id, leader id (used by the etcd module)."""
        out = []
        for ep in self.endpoints:
            item: dict[str, Any] = {"endpoint": ep.url, "healthy": False, "leader": None, "member_id": None,
                                    "error": ""}
            conn = self._connect(ep, self.timeout)
            try:
                conn.request("GET", "/health")
                r = conn.getresponse()
                health = json.loads(r.read() or b"{}")
                item["healthy"] = str(health.get("health")) == "true"
                conn.request("POST", "/v3/maintenance/status", body=b"{}",
                             headers=self._headers(self.endpoints.index(ep), self.timeout))
                r = conn.getresponse()
                status = json.loads(r.read() or b"{}")
                item["member_id"] = status.get("header", {}).get("member_id")
                item["leader"] = status.get("leader")
                item["version"] = status.get("version")
            except (OSError, http.client.HTTPException, ValueError, StoreError) as exc:
                item["error"] = _tls_hint(exc)
            finally:
                conn.close()
            out.append(item)
        return out

    def members(self) -> list[dict[str, Any]]:
        return self.member_health()

    def move_leader(self, member_id: str) -> None:
        """etcd's MoveLeader: sent to the current leader, which hands its leadership over."""
        leader = next((m for m in self.member_health() if m["healthy"] and m["member_id"]
                       and m["member_id"] == m["leader"]), None)
        if leader is None:
            raise StoreError("no healthy etcd leader to move the leadership from")
        ep = next(e for e in self.endpoints if e.url == leader["endpoint"])
        try:
            status, data = self._post_once(ep, "/v3/maintenance/transfer-leadership", {"targetID": str(member_id)},
                                           self._headers(self.endpoints.index(ep), self.timeout), self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise StoreError(f"{ep.url}: {_tls_hint(exc)}") from None
        if status != 200:
            raise StoreError(f"moving the etcd leadership to {member_id}: HTTP {status} "
                             f"{data.decode(errors='replace')[:200]}")

    def close(self) -> None:
        for idx in list(getattr(self._local, "conns", {})):
            self._drop(idx)
