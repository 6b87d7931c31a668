"""The L4 relay: asyncio protocols that pair each client connection with an upstream connection.

Hot path: ``data_received`` checks the fence deadline (one monotonic clock read), writes the chunk
to the other side and counts it. Flow control is the transports' own: when one side's write buffer
goes over its high-water mark, reading from the other side pauses until it drains.

``Pool`` owns every relay, keyed by port ("rw" or "ro") and target keeper uid, so that fencing a
target closes exactly its connections. A client that arrives while there is no route is held
(not read from) for up to ``hold_timeout`` seconds, then connected or closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import cast

log = logging.getLogger("pgha.proxy")

_now = time.monotonic

RW = "rw"
RO = "ro"
CONNECT_TIMEOUT = 2.0
_FAILURE_LOG_INTERVAL = 5.0


def split_address(address: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"invalid address {address!r}: expected host:port")
    return host.strip("[]"), int(port)


def tune_socket(transport: asyncio.BaseTransport) -> None:
    """TCP_NODELAY and keepalive (detects dead peers in about a minute)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    except OSError:
        pass


class Fence:
    """Shared by every relay: nothing is forwarded after ``deadline`` (monotonic seconds)."""

    __slots__ = ("deadline",)

    def __init__(self) -> None:
        self.deadline = float("-inf")


class Stats:
    """Counters read by the metrics endpoint (plain ints: safe to read from another thread)."""

    __slots__ = ("open_rw", "open_ro", "total", "bytes_in", "bytes_out", "fenced", "failed_connects")

    def __init__(self) -> None:
        self.open_rw = 0
        self.open_ro = 0
        self.total = 0
        self.bytes_in = 0  # client -> PostgreSQL
        self.bytes_out = 0  # PostgreSQL -> client
        self.fenced = 0
        self.failed_connects = 0


class _Side(asyncio.Protocol):
    """One end of a relay. ``peer`` is the other end's transport once both are connected."""

    __slots__ = ("relay", "fence", "stats", "transport", "peer", "eof")

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        self.fence = relay.pool.fence
        self.stats = relay.pool.stats
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.eof = False

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        relay = self.relay
        peer = self.peer
        if peer is None or relay.client_side.eof and relay.upstream_side.eof or not peer.can_write_eof():
            relay.close()
            return False
        peer.write_eof()  # half-close: keep relaying the other direction
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()


class ClientSide(_Side):
    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        # Nothing is read until the upstream is connected. Python 3.11 registers the reader after
        # connection_made even when paused there, hence the second pause on the next iteration.
        transport.pause_reading()
        asyncio.get_running_loop().call_soon(self._hold)
        tune_socket(transport)
        self.relay.pool.accepted(self.relay)

    def _hold(self) -> None:
        if self.peer is None and self.transport is not None:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if _now() > self.fence.deadline:
            self.relay.fence_close()
            return
        peer = self.peer
        if peer is None:  # only if the hold above lost a race: keep the chunk for the upstream
            self.relay.early.append(data)
            self.transport.pause_reading()  # type: ignore[union-attr]
            return
        self.stats.bytes_in += len(data)  # counted first: the API thread may read it once the peer has it
        peer.write(data)


class UpstreamSide(_Side):
    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        relay = self.relay
        if relay.done or _now() > self.fence.deadline:
            transport.abort()
            relay.fence_close()
            return
        tune_socket(transport)
        relay.attach(transport)  # before any data can arrive from the upstream

    def data_received(self, data: bytes) -> None:
        if _now() > self.fence.deadline:
            self.relay.fence_close()
            return
        self.stats.bytes_out += len(data)  # counted first: the client may ask /metrics as soon as it has it
        self.peer.write(data)  # type: ignore[union-attr]


class Relay:
    __slots__ = ("pool", "port", "uid", "client_side", "upstream_side", "done", "hold_until", "early")

    def __init__(self, pool: "Pool", port: str) -> None:
        self.pool = pool
        self.port = port
        self.uid: str | None = None  # target keeper, once routed
        self.client_side = ClientSide(self)
        self.upstream_side = UpstreamSide(self)
        self.done = False
        self.hold_until = 0.0
        self.early: list[bytes] = []

    def attach(self, upstream: asyncio.Transport) -> None:
        client = self.client_side.transport
        assert client is not None
        self.client_side.peer = upstream
        self.upstream_side.peer = client
        for data in self.early:
            upstream.write(data)
            self.pool.stats.bytes_in += len(data)
        self.early.clear()
        client.resume_reading()

    def _finish(self) -> None:
        self.done = True
        self.pool.forget(self)

    def close(self) -> None:
        """Graceful close of both ends (buffered data is flushed first)."""
        if self.done:
            return
        self._finish()
        for side in (self.client_side, self.upstream_side):
            if side.transport is not None:
                side.transport.close()

    def fence_close(self) -> None:
        """Immediate close of both ends: buffered data is discarded, nothing more reaches the target."""
        if self.done:
            return
        self._finish()
        self.pool.stats.fenced += 1
        for side in (self.client_side, self.upstream_side):
            if side.transport is not None:
                side.transport.abort()


class Pool:
    """Every relay, the current routes, and the clients waiting for a route."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fence = Fence()
        self.stats = Stats()
        self.rw: tuple[str, str] | None = None  # (uid, "host:port")
        self.ro: tuple[tuple[str, str], ...] = ()
        self.hold_timeout = 3.0
        self.closing = False
        self._relays: dict[tuple[str, str], set[Relay]] = {}
        self._held: deque[Relay] = deque()
        self._ro_next = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_failure_log: dict[str, float] = {}

    # -- accept and route
    def factory(self, port: str) -> ClientSide:
        return Relay(self, port).client_side

    def accepted(self, relay: Relay) -> None:
        stats = self.stats
        stats.total += 1
        if relay.port == RW:
            stats.open_rw += 1
        else:
            stats.open_ro += 1
        if self.closing or _now() > self.fence.deadline:
            relay.fence_close()
            return
        if not self._route(relay):
            relay.hold_until = _now() + self.hold_timeout
            self._held.append(relay)

    def _pick(self, port: str) -> tuple[str, str] | None:
        if port == RW:
            return self.rw
        if not self.ro:
            return None
        self._ro_next = (self._ro_next + 1) % len(self.ro)
        return self.ro[self._ro_next]

    def _route(self, relay: Relay) -> bool:
        route = self._pick(relay.port)
        if route is None:
            return False
        uid, address = route
        relay.uid = uid
        self._relays.setdefault((relay.port, uid), set()).add(relay)
        task = self.loop.create_task(self._connect(relay, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _connect(self, relay: Relay, address: str) -> None:
        try:
            host, port = split_address(address)
            transport, _ = await asyncio.wait_for(
                self.loop.create_connection(lambda: relay.upstream_side, host, port), CONNECT_TIMEOUT)
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            self.stats.failed_connects += 1
            now = _now()
            if now - self._last_failure_log.get(address, float("-inf")) >= _FAILURE_LOG_INTERVAL:
                self._last_failure_log[address] = now
                log.warning("cannot connect to %s (%s) for a %s client: %s; closing it", relay.uid, address,
                            relay.port, exc or type(exc).__name__)
            relay.close()
            return
        if relay.done:  # fenced while connecting, after connection_made
            transport.abort()

    def release_held(self) -> int:
        """Route held clients that now have a route; close those that waited too long. Returns how
        many were closed."""
        if not self._held:
            return 0
        now = _now()
        waiting: deque[Relay] = deque()
        closed = 0
        while self._held:
            relay = self._held.popleft()
            if relay.done:
                continue
            if self._route(relay):
                continue
            if now >= relay.hold_until:
                relay.close()
                closed += 1
            else:
                waiting.append(relay)
        self._held = waiting
        return closed

    # -- closing
    def forget(self, relay: Relay) -> None:
        if relay.port == RW:
            self.stats.open_rw -= 1
        else:
            self.stats.open_ro -= 1
        if relay.uid is not None:
            group = self._relays.get((relay.port, relay.uid))
            if group is not None:
                group.discard(relay)
                if not group:
                    del self._relays[(relay.port, relay.uid)]

    def fence_target(self, port: str, uid: str) -> int:
        """Close every ``port`` connection to keeper ``uid`` at once. Returns how many."""
        group = self._relays.pop((port, uid), None)
        if not group:
            return 0
        for relay in list(group):
            relay.uid = None  # already removed from the index
            relay.fence_close()
        return len(group)

    def fence_all(self) -> int:
        n = 0
        for port, uid in list(self._relays):
            n += self.fence_target(port, uid)
        while self._held:
            relay = self._held.popleft()
            if not relay.done:
                relay.fence_close()
                n += 1
        return n

    def close_all(self) -> int:
        """Graceful close of everything (shutdown)."""
        relays = [r for group in self._relays.values() for r in group] + list(self._held)
        self._held.clear()
        for relay in relays:
            relay.close()
        return len(relays)

    def count(self) -> int:
        return sum(len(g) for g in self._relays.values()) + len(self._held)
