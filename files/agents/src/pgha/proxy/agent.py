"""The proxy agent: the store thread, the event loop that relays, and the glue between them.

The store client blocks, so a thread owns it: it reads the cluster data, hands the result to the
event loop (which runs ``decide()`` and closes connections), waits for the loop to finish, then
writes the proxy status (the acknowledgement) under the proxy's lease, and waits for the next
change or check. The event loop also runs ``decide()`` on a short timer so that self-fencing does
not depend on the store thread coming back.

The lease (``pgha.store.lease.Lease``, TTL ``ceil(proxy_timeout)``) bounds relaying too: nothing is
forwarded past ``PROXY_FENCE_MARGIN`` before the server could expire it, so by the time the
sentinel sees this proxy's status vanish (and stops waiting for its acknowledgement) the proxy has
already stopped relaying, however the store or this process stalled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import replace
from typing import Any

from pgha import http
from pgha.model import ClusterData, FormatError, Keys, ProxyStatus
from pgha.proxy.decide import Observation, ProxyState, decide
from pgha.proxy.relay import RO, RW, Limits, Pool
from pgha.store.base import Store, StoreError
from pgha.store.lease import Lease

# Relaying stops this long before the proxy's lease can expire on the server. The relay checks the
# deadline on every chunk it forwards, so the margin only has to cover clock differences.
PROXY_FENCE_MARGIN = 0.5


def proxy_fence_margin(ttl: float) -> float:
    return min(PROXY_FENCE_MARGIN, ttl / 4)

log = logging.getLogger("pgha.proxy")

TICK = 0.1  # seconds between staleness checks on the event loop
BACKLOG = 1024


WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def advertised_host(listen_address: str, endpoints: list[str]) -> str:
    """The host to advertise for ``listen_address``: itself, or for a wildcard the local address a
    connection to the first store endpoint would leave from (UDP connect: no packet is sent),
    falling back to the host name."""
    if listen_address not in WILDCARDS:
        return listen_address
    host = urllib.parse.urlsplit(endpoints[0]).hostname if endpoints else None
    if host:
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((host, 9))
                return str(s.getsockname()[0])
        except OSError:
            pass
    return socket.gethostname()


class ProxyAgent:
    def __init__(self, store: Store, keys: Keys, uid: str, *, listen_address: str = "127.0.0.1",
                 port: int = 25432, ro_port: int = 0, api_address: str | None = None, api_port: int = 0,
                 reuse_port: bool = False, advertise_address: str | None = None, limits: Limits | None = None,
                 upstream_tls: ssl.SSLContext | None = None) -> None:
        self.store = store
        self.keys = keys
        self.uid = uid
        self.listen_address = listen_address
        # the host clients are told to use (in the proxy status): see advertised_host()
        self.advertise_address = advertise_address or listen_address
        self.ports = {RW: port, RO: ro_port}
        self.enabled = {RW: True, RO: bool(ro_port)}
        self.api_address = api_address if api_address is not None else listen_address
        self.api_port = api_port
        self.reuse_port = reuse_port
        self.limits = limits or Limits()
        self.upstream_tls = upstream_tls  # for the sessions the read-only fallback makes read-only
        self.state = ProxyState(ro_enabled=bool(ro_port))
        self.api: http.ApiServer | None = None
        self.pool: Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: dict[str, asyncio.AbstractServer] = {}
        self._listen_lock: asyncio.Lock | None = None
        self._listen_error: dict[str, str] = {}
        self._ever_listened = False
        self._fatal: asyncio.Future[None] | None = None
        self._stopping = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.lease = Lease(store, margin=proxy_fence_margin)
        self._store_error = ""
        self.applied_at = 0.0  # wall time the current generation was applied (ProxyStatus.applied_at)

    # ------------------------------------------------------------------ addresses
    def _host_port(self, host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def address(self) -> str:
        return self._host_port(self.advertise_address, self.ports[RW])

    @property
    def ro_address(self) -> str:
        return self._host_port(self.advertise_address, self.ports[RO]) if self.enabled[RO] else ""

    @property
    def api_bound_address(self) -> str:
        if not self.api_port and self.api is None:
            return ""
        port = self.api.bound_port if self.api is not None else self.api_port
        return self._host_port(self.api_address, port)

    @property
    def listening(self) -> bool:
        return bool(self._servers) and all(p in self._servers for p in (RW, RO) if self.enabled[p])

    # ------------------------------------------------------------------ main
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; raises OSError when a port cannot be bound at start."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.pool = Pool(loop, self.limits)
        self.pool.upstream_tls = self.upstream_tls
        self._listen_lock = asyncio.Lock()
        self._fatal = loop.create_future()
        if self.api_port:
            self.api = http.ApiServer(self.api_address, self.api_port,
                                      {"/health": self._health, "/metrics": self._metrics})
            self.api.start()
        log.info("proxy %s starting: rw %s, ro %s, api %s; waiting for the store before listening", self.uid,
                 self.address, self.ro_address or "off", self.api_bound_address or "off")
        self._thread = threading.Thread(target=self._store_loop, name="store", daemon=True)
        self._thread.start()
        ticker = loop.create_task(self._tick())
        stopper = loop.create_task(stop.wait())
        try:
            await asyncio.wait([stopper, self._fatal], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ticker.cancel()
            stopper.cancel()
            await self._shutdown()
        if self._fatal.done():
            self._fatal.result()

    async def _shutdown(self) -> None:
        self._closing = True
        self._stop_listening()
        closed = self.pool.close_all() if self.pool is not None else 0
        self._stopping.set()
        loop = asyncio.get_running_loop()
        if self._thread is not None:
            await loop.run_in_executor(None, self._thread.join, 10.0)
        if self.lease.id:
            try:
                await loop.run_in_executor(None, self.lease.revoke)
            except StoreError as exc:
                log.warning("could not revoke lease %x (it will expire): %s", self.lease.id, exc)
                self.lease.forget()
        log.info("proxy %s stopped: stopped listening, closed %d connection(s), revoked its lease", self.uid, closed)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._apply(None)
            await self._sync_listeners()

    # ------------------------------------------------------------------ decisions
    def _apply(self, obs: Observation | None) -> None:
        pool = self.pool
        assert pool is not None
        actions = decide(self.state, obs, time.monotonic())
        st = actions.state
        new_generation = st.generation != self.state.generation
        self.state = st
        closed: dict[str, int] = {}
        if actions.close_all:
            pool.fence.deadline = st.deadline
            self._stop_listening()
            n = pool.fence_all()
            if n:
                closed["all"] = n
        for uid in sorted(actions.close_rw):
            n = pool.fence_target(RW, uid)
            if n:
                closed[uid] = closed.get(uid, 0) + n
        for uid in sorted(actions.close_ro):
            n = pool.fence_target(RO, uid)
            if n:
                closed[f"{uid} (ro)"] = n
        if new_generation:
            self.applied_at = time.time()  # what the sentinel waits for is done: report when
        pool.fence.deadline = st.deadline
        pool.rw = st.rw
        pool.ro = st.ro
        pool.ro_fallback = st.ro_fallback
        pool.hold_timeout = st.timeout
        expired = pool.release_held()
        if actions.messages or closed:
            text = "; ".join(actions.messages)
            if closed:
                text += ("; " if text else "") + "closed " + ", ".join(
                    f"{n} connection(s) to {what}" if what != "all" else f"{n} connection(s)"
                    for what, n in closed.items())
            log.info("%s", text)
        if expired:
            log.info("closed %d client(s) that waited %.1fs without a target", expired, st.timeout)

    async def _observe(self, obs: Observation) -> tuple[ProxyStatus, ProxyState]:
        self._apply(obs)
        await self._sync_listeners()
        return self._status(), self.state

    def _status(self) -> ProxyStatus:
        st = self.state
        return ProxyStatus(uid=self.uid, address=self.address, ro_address=self.ro_address,
                           api_address=self.api_bound_address, generation=st.generation,
                           target=st.rw[0] if st.rw else None, listening=self.listening, reported_at=time.time(),
                           applied_at=self.applied_at)

    # ------------------------------------------------------------------ listeners
    def _stop_listening(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

    async def _sync_listeners(self) -> None:
        assert self._listen_lock is not None and self.pool is not None
        async with self._listen_lock:
            if not self.state.listening or self._closing:
                if self._servers:
                    self._stop_listening()
                return
            loop = asyncio.get_running_loop()
            for port in (RW, RO):
                if not self.enabled[port] or port in self._servers:
                    continue
                try:
                    sock = socket.create_server((self.listen_address, self.ports[port]),
                                                family=socket.AF_INET6 if ":" in self.listen_address
                                                else socket.AF_INET, backlog=BACKLOG,
                                                reuse_port=self.reuse_port)
                    sock.setblocking(False)
                    server = await loop.create_server(lambda p=port: self.pool.factory(p), sock=sock,
                                                      backlog=BACKLOG)
                except OSError as exc:
                    text = f"cannot listen on {self._host_port(self.listen_address, self.ports[port])} " \
                           f"({port}): {exc.strerror or exc}"
                    if not self._ever_listened and self._fatal is not None and not self._fatal.done():
                        self._fatal.set_exception(OSError(exc.errno, text))
                        return
                    if self._listen_error.get(port) != text:
                        log.error("%s; retrying", text)
                    self._listen_error[port] = text
                    continue
                self._listen_error.pop(port, None)
                if not self.ports[port]:
                    self.ports[port] = sock.getsockname()[1]  # port 0: keep the port we got
                if not self.state.listening or self._closing:  # fenced while binding
                    server.close()
                    return
                self._servers[port] = server
            if self.listening:
                self._ever_listened = True

    # ------------------------------------------------------------------ store thread
    def _read(self, started: float) -> tuple[Observation, int, bool]:
        """(observation, store revision, store reachable)."""
        try:
            kvs, revision = self.store.get_prefix(self.keys.clusterdata)
        except StoreError as exc:
            return Observation(started, error=f"store unreadable: {exc}"), 0, False
        kv = next((kv for kv in kvs if kv.key == self.keys.clusterdata), None)
        if kv is None:
            return Observation(started, absent=True), revision, True
        try:
            return Observation(started, cd=ClusterData.loads(kv.value)), revision, True
        except FormatError as exc:
            return Observation(started, error=str(exc)), revision, True

    def _store_loop(self) -> None:
        last_sent: ProxyStatus | None = None
        last_renew = float("-inf")
        left_live_set = False  # lease revoked on untrusted data: none until a trusted read
        while not self._stopping.is_set():
            started = time.monotonic()
            if not self.lease.id and not left_live_set:
                try:  # hold a lease before the first read, so that the proxy may listen at once
                    self.lease.renew(math.ceil(self.state.timeout))
                    self._lease_renewed()
                except StoreError:
                    pass
            try:
                obs, revision, reachable = self._read(started)
            except Exception as exc:  # a bug must not silently stop the proxy from fencing: it is logged
                log.exception("unexpected error reading the store")
                obs, revision, reachable = Observation(started, error=f"unexpected error: {exc!r}"), 0, False
            loop = self._loop
            if loop is None or self._stopping.is_set():
                break
            try:
                future = asyncio.run_coroutine_threadsafe(self._observe(obs), loop)
                status, st = self._result(future)
            except (RuntimeError, concurrent.futures.CancelledError):
                break  # the loop is shutting down
            except Exception:  # a bug in applying must not end the store thread: the proxy would never recover
                log.exception("unexpected error applying the cluster data")
                self._stopping.wait(self.state.check_interval)
                continue
            if st is None:
                break
            now = time.monotonic()
            if obs.error is None and not self._stopping.is_set():
                left_live_set = False
                content = replace(status, reported_at=0.0)
                due = now - last_renew >= st.check_interval
                if due or last_sent is None or content != replace(last_sent, reported_at=0.0):
                    if self._report(status, st, renew=due):
                        last_sent = status
                        if due:
                            last_renew = now
                    else:
                        last_sent = None
            elif reachable and not st.listening and self.lease.id:
                # fenced on data we cannot trust while the store answers: leave the live set now
                lid = self.lease.id
                left_live_set = True
                self._lease_renewed(reset=True)
                try:
                    self.lease.revoke()
                    log.info("fenced on untrusted cluster data: revoked lease %x so the sentinel does not wait for "
                             "this proxy", lid)
                except StoreError as exc:
                    log.warning("could not revoke lease %x: %s", lid, exc)
                    self.lease.forget()
                last_sent = None
            left = st.check_interval - (time.monotonic() - started)
            if left <= 0:
                continue
            if revision and reachable:
                try:
                    self.store.wait(self.keys.clusterdata, revision, left)
                    continue
                except StoreError:
                    pass
                left = st.check_interval - (time.monotonic() - started)
            if left > 0:
                self._stopping.wait(left)

    def _result(self, future: concurrent.futures.Future[Any]) -> tuple[Any, Any]:
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if self._stopping.is_set():
                    future.cancel()
                    return None, None

    def _report(self, status: ProxyStatus, st: ProxyState, renew: bool) -> bool:
        """Keep the lease alive and write the status. Returns whether the status was written."""
        ttl = math.ceil(st.timeout)
        store = self.store
        try:
            if renew or not self.lease.id or self.lease.asked != ttl:
                previous = self.lease.id
                if self.lease.renew(ttl) and previous and not self.lease.superseded:
                    log.info("lease %x expired: granted a new one", previous)
                self._lease_renewed()
            store.put(self.keys.proxy(self.uid), status.dumps(), lease=self.lease.id)
            self.lease.release_superseded()
        except StoreError as exc:
            if str(exc) != self._store_error:
                log.warning("cannot write proxy status: %s", exc)
            self._store_error = str(exc)
            return False
        if self._store_error:
            log.info("proxy status written again (generation %d)", status.generation)
            self._store_error = ""
        return True

    def _lease_renewed(self, reset: bool = False) -> None:
        """Hand the lease's new deadline to the event loop at once (the relay's fence follows it);
        ``reset``: the lease is being revoked, relaying must stop now."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._apply_lease_deadline, float("-inf") if reset else self.lease.deadline(),
                                      reset)

    def _apply_lease_deadline(self, deadline: float, reset: bool = False) -> None:
        self.state = replace(self.state, lease_deadline=deadline if reset else max(deadline, self.state.lease_deadline))
        if self.pool is not None:
            self.pool.fence.deadline = self.state.deadline

    # ------------------------------------------------------------------ HTTP API (runs in its thread)
    def _health(self, query: dict[str, list[str]]) -> tuple[int, str, str]:
        st = self.state
        if not st.trusted:
            return 503, http.TEXT_CONTENT_TYPE, f"store not trusted: {st.distrust}\n"
        if not self.listening:
            if st.listening:
                why = "; ".join(list(self._listen_error.values())) or "starting"
                return 503, http.TEXT_CONTENT_TYPE, f"not listening: {why}\n"
            return 503, http.TEXT_CONTENT_TYPE, "not listening: store unreadable for longer than proxy_timeout\n"
        return 200, http.TEXT_CONTENT_TYPE, "ok\n"

    def _metrics(self, query: dict[str, list[str]]) -> tuple[int, str, str]:
        st = self.state
        pool = self.pool
        stats = pool.stats if pool is not None else None
        age = time.monotonic() - st.last_good if st.last_good is not None else float("inf")
        samples: list[tuple[str, str, str, dict[str, str], float]] = [
            ("pgha_proxy_connections", "gauge", "Client connections open (including those waiting for a target).",
             {"port": RW}, stats.open_rw if stats else 0),
            ("pgha_proxy_connections", "gauge", "", {"port": RO}, stats.open_ro if stats else 0),
            ("pgha_proxy_connections_total", "counter", "Client connections accepted.", {},
             stats.total if stats else 0),
            ("pgha_proxy_bytes_total", "counter", "Bytes relayed: in = client to PostgreSQL, out = back.",
             {"direction": "in"}, stats.bytes_in if stats else 0),
            ("pgha_proxy_bytes_total", "counter", "", {"direction": "out"}, stats.bytes_out if stats else 0),
            ("pgha_proxy_fenced_connections_total", "counter",
             "Connections closed because their target changed or the store went stale.", {},
             stats.fenced if stats else 0),
            ("pgha_proxy_failed_connects_total", "counter", "Upstream connects that failed.", {},
             stats.failed_connects if stats else 0),
            ("pgha_proxy_refused_connections_total", "counter",
             "Clients turned away with an ErrorResponse (limits, no target, upstream down, not a PostgreSQL "
             "client).", {}, stats.refused if stats else 0),
            ("pgha_proxy_silent_closed_connections_total", "counter",
             "Clients closed for sending no startup message within the startup timeout.", {},
             stats.silent_closed if stats else 0),
            ("pgha_proxy_target_info", "gauge", "The keeper read-write traffic goes to.",
             {"target": st.rw[0] if st.rw else "none"}, 1),
            ("pgha_proxy_generation", "gauge", "The proxy generation applied.", {}, st.generation),
            ("pgha_proxy_listening", "gauge", "1 when the proxy accepts connections.", {}, int(self.listening)),
            ("pgha_proxy_store_age_seconds", "gauge", "Seconds since the last trusted store read.", {}, age),
        ]
        return 200, http.PROMETHEUS_CONTENT_TYPE, http.prometheus(samples)
