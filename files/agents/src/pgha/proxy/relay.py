"""The L4 relay: asyncio protocols that pair each client connection with an upstream connection.

Hot path: ``data_received`` checks the fence deadline (one monotonic clock read), writes the chunk
to the other side and counts it. Flow control is the transports' own: when one side's write buffer
goes over its high-water mark, reading from the other side pauses until it drains.

``Pool`` owns every relay, keyed by port ("rw" or "ro") and target keeper uid, so that fencing a
target closes exactly its connections.

Before any upstream connection, the proxy reads the client's first message (``protocol``): a socket
that never speaks costs a file descriptor, not a PostgreSQL backend, and is closed after
``Limits.startup_timeout``. A client over a connection limit, or one that waited ``hold_timeout``
seconds without a route (during a failover), is answered with an ErrorResponse saying why. When
the read-only port stands in the primary for missing replicas, the session is made read-only in
its StartupMessage; that needs the client's StartupMessage in clear, so the proxy declines the
client's TLS there and, given the cluster's CA (``Pool.upstream_tls``), speaks TLS to the primary
itself, checking its certificate (the keepers take logins over TCP only with TLS).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import cast

from pgha.proxy import protocol

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

    __slots__ = ("open_rw", "open_ro", "total", "bytes_in", "bytes_out", "fenced", "failed_connects", "refused",
                 "silent_closed")

    def __init__(self) -> None:
        self.open_rw = 0
        self.open_ro = 0
        self.total = 0
        self.bytes_in = 0  # client -> PostgreSQL
        self.bytes_out = 0  # PostgreSQL -> client
        self.fenced = 0
        self.failed_connects = 0
        self.refused = 0  # turned away with an ErrorResponse
        self.silent_closed = 0  # closed for not sending a first message in time


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
        if peer is None or relay.client_side.eof and relay.upstream_side.eof or not peer.can_write_eof() \
                or relay.upstream_tls:  # a TLS transport cannot stay half-open
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
        tune_socket(transport)
        self.relay.pool.accepted(self.relay)

    def data_received(self, data: bytes) -> None:
        if _now() > self.fence.deadline:
            self.relay.fence_close()
            return
        peer = self.peer
        if peer is None:  # the client's first message: read whole before anything goes upstream
            self.relay.starting(data)
            return
        self.stats.bytes_in += len(data)  # counted first: the API thread may read it once the peer has it
        peer.write(data)


class UpstreamSide(_Side):
    __slots__ = ()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:  # lost before it was handed over (the proxy's own TLS handshake
            return                  # failed): Pool._connect turns the client away with the reason
        self.relay.close()

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
        if self.relay.first_reply is not None:  # the proxy's own TLS: its first messages are rewritten
            data = self.relay.server_speaking(data)
            if not data:
                return
        self.stats.bytes_out += len(data)  # counted first: the client may ask /metrics as soon as it has it
        self.peer.write(data)  # type: ignore[union-attr]


class _Negotiation(asyncio.Protocol):
    """The upstream connection until PostgreSQL has answered an SSLRequest ('S' or 'N')."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_result(b"")


class Relay:
    __slots__ = ("pool", "port", "uid", "client_side", "upstream_side", "done", "hold_until", "early",
                 "source", "spoke", "code", "refusal", "timer", "upstream_tls", "first_reply")

    def __init__(self, pool: "Pool", port: str) -> None:
        self.pool = pool
        self.port = port
        self.uid: str | None = None  # target keeper, once routed
        self.client_side = ClientSide(self)
        self.upstream_side = UpstreamSide(self)
        self.done = False
        self.hold_until = 0.0
        self.early = bytearray()  # what the client sent before the upstream was connected
        self.source = ""  # the client's address
        self.spoke = False  # its first message is complete
        self.code = 0  # that message's code (protocol.SSL_REQUEST, ...)
        self.refusal: tuple[str, str] | None = None  # (SQLSTATE, message) it will be answered with
        self.timer: asyncio.TimerHandle | None = None  # closes it if it does not speak in time
        self.upstream_tls = False  # the proxy speaks TLS to the upstream itself (the read-only fallback)
        # over the proxy's own TLS, the upstream's first messages until the authentication request is
        # whole (Relay.server_speaking); None otherwise, and once it has gone on
        self.first_reply: bytearray | None = None

    def starting(self, data: bytes) -> None:
        """Bytes from a client whose upstream is not connected yet."""
        self.early += data
        if self.spoke:  # routed or held: keep them for the upstream
            self.client_side.transport.pause_reading()  # type: ignore[union-attr]
            return
        try:
            first = protocol.first_message(self.early)
        except protocol.StartupError as exc:
            self.refuse(protocol.PROTOCOL_VIOLATION, str(exc))
            return
        if first is None:
            return
        self.spoke = True
        self.code = first[1]
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.client_side.transport.pause_reading()  # type: ignore[union-attr]
        self.pool.spoke(self)

    def first_message(self) -> bytes:
        return bytes(self.early[:protocol.first_message(self.early)[0]])  # type: ignore[index]

    def decline_encryption(self) -> None:
        """Answer the client's SSLRequest or GSSENCRequest with 'N' ourselves and read its next message."""
        del self.early[:8]
        self.spoke = False
        self.code = 0
        self.client_side.transport.write(b"N")  # type: ignore[union-attr]
        self.pool.listen_for_first_message(self)
        self.client_side.transport.resume_reading()  # type: ignore[union-attr]
        if self.early:
            self.starting(b"")

    def read_only(self) -> None:
        """Rewrite the client's StartupMessage so that its session starts every transaction read-only."""
        length = protocol.first_message(self.early)[0]  # type: ignore[index]
        try:
            self.early[:length] = protocol.read_only_startup(bytes(self.early[:length]))
        except protocol.StartupError as exc:
            self.refuse(protocol.PROTOCOL_VIOLATION, str(exc))

    def server_speaking(self, data: bytes) -> bytes:
        """The upstream's first bytes on the proxy's own TLS: its first message held until whole and
        relayed without channel binding (see protocol.without_channel_binding), then as they come."""
        buf = self.first_reply
        assert buf is not None
        buf += data
        out = b""
        while True:
            try:
                length = protocol.first_server_message(buf)
            except protocol.StartupError:
                length = len(buf)  # not PostgreSQL speaking: pass it on as it is
            if length is None:
                return out
            if buf[:1] == protocol.NEGOTIATE_PROTOCOL_VERSION:  # comes before the authentication request
                out += bytes(buf[:length])
                del buf[:length]
                continue
            self.first_reply = None
            return out + protocol.without_channel_binding(bytes(buf[:length])) + bytes(buf[length:])

    def silent_too_long(self) -> None:
        self.timer = None
        if not self.done and not self.spoke:
            self.pool.stats.silent_closed += 1
            self.close()

    def attach(self, upstream: asyncio.Transport) -> None:
        client = self.client_side.transport
        assert client is not None
        self.client_side.peer = upstream
        self.upstream_side.peer = client
        if self.early:
            self.pool.stats.bytes_in += len(self.early)
            upstream.write(bytes(self.early))
        self.early.clear()
        client.resume_reading()

    def refuse(self, code: str, message: str, decline: bool = True) -> None:
        """Answer a client that has no upstream with an ErrorResponse, then close it. A client that
        asked for encryption first is told 'N' and answered after its StartupMessage (``decline``):
        libpq does not show an error sent in answer to its SSLRequest."""
        if self.done:
            return
        if decline and self.spoke and self.code in protocol.ENCRYPTION_REQUESTS:
            self.refusal = (code, message)
            self.decline_encryption()
            return
        transport = self.client_side.transport
        self.pool.refused(self, message)
        if transport is not None and self.client_side.peer is None:
            transport.write(protocol.error_response(code, f"pgha-proxy: {message}"))
        self.close()

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
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


@dataclass
class Limits:
    """Client connection limits of one proxy (both ports together); 0 means no limit."""

    max_connections: int = 4000
    max_per_source: int = 1000
    startup_timeout: float = 10.0  # seconds a client may stay silent before the proxy closes it


class Pool:
    """Every relay, the current routes, and the clients waiting for a route."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits | None = None) -> None:
        self.loop = loop
        self.limits = limits or Limits()
        self.fence = Fence()
        self.stats = Stats()
        self.rw: tuple[str, str] | None = None  # (uid, "host:port")
        self.ro: tuple[tuple[str, str], ...] = ()
        self.ro_fallback = False  # the read-only port goes to the primary: sessions are made read-only
        # TLS from the proxy to the primary for the sessions it makes read-only (None: in clear)
        self.upstream_tls: ssl.SSLContext | None = None
        self.hold_timeout = 3.0
        self.closing = False
        self._relays: dict[tuple[str, str], set[Relay]] = {}
        self._starting: set[Relay] = set()  # accepted, first message not complete yet
        self._held: deque[Relay] = deque()  # first message complete, no route yet
        self._per_source: dict[str, int] = {}
        self._ro_next = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_log: dict[str, float] = {}

    # -- accept and route
    def factory(self, port: str) -> ClientSide:
        return Relay(self, port).client_side

    def _log_now(self, what: str) -> bool:
        """Whether a warning about ``what`` may be logged now (at most one per _FAILURE_LOG_INTERVAL)."""
        now = _now()
        if now - self._last_log.get(what, float("-inf")) < _FAILURE_LOG_INTERVAL:
            return False
        if len(self._last_log) > 1024:
            self._last_log.clear()
        self._last_log[what] = now
        return True

    def accepted(self, relay: Relay) -> None:
        stats = self.stats
        stats.total += 1
        if relay.port == RW:
            stats.open_rw += 1
        else:
            stats.open_ro += 1
        peer = relay.client_side.transport.get_extra_info("peername")  # type: ignore[union-attr]
        relay.source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        from_source = self._per_source.get(relay.source, 0) + 1
        self._per_source[relay.source] = from_source
        if self.closing or _now() > self.fence.deadline:
            relay.fence_close()
            return
        limits = self.limits
        open_now = stats.open_rw + stats.open_ro
        if limits.max_connections and open_now > limits.max_connections:
            relay.refusal = (protocol.TOO_MANY_CONNECTIONS,
                             f"connection limit reached ({limits.max_connections} client connections)")
        elif limits.max_per_source and from_source > limits.max_per_source:
            relay.refusal = (protocol.TOO_MANY_CONNECTIONS,
                             f"connection limit reached ({limits.max_per_source} connections from {relay.source})")
        self.listen_for_first_message(relay)

    def listen_for_first_message(self, relay: Relay) -> None:
        """Read the client's first message; close it if none comes within the startup timeout."""
        self._starting.add(relay)
        if self.limits.startup_timeout > 0:
            relay.timer = self.loop.call_later(self.limits.startup_timeout, relay.silent_too_long)

    def spoke(self, relay: Relay) -> None:
        """``relay``'s first message is complete: route it, hold it, or turn it away."""
        self._starting.discard(relay)
        if relay.refusal is not None:
            relay.refuse(*relay.refusal)
        elif not self._route(relay):
            relay.hold_until = _now() + self.hold_timeout
            self._held.append(relay)

    def refused(self, relay: Relay, message: str) -> None:
        self.stats.refused += 1
        if self._log_now(f"refused {relay.source} {message}"):
            log.warning("turned away a %s client from %s: %s", relay.port, relay.source or "?", message)

    def _pick(self, port: str) -> tuple[str, str] | None:
        if port == RW:
            return self.rw
        if not self.ro:
            return None
        self._ro_next = (self._ro_next + 1) % len(self.ro)
        return self.ro[self._ro_next]

    def _route(self, relay: Relay) -> bool:
        """Connect ``relay`` to its port's target. False when there is none (the caller holds it)."""
        route = self._pick(relay.port)
        if route is None:
            return False
        if relay.port == RO and self.ro_fallback:
            # the primary stands in for the replicas: its sessions start read-only, which needs the
            # StartupMessage in clear, so encryption is declined here (libpq's sslmode=prefer goes on
            # without it; sslmode=require gives up, and should use the read-write port)
            if relay.code in protocol.ENCRYPTION_REQUESTS:
                # the client asked for TLS: wherever it goes once its StartupMessage is in, the
                # proxy speaks TLS for it (also to a replica, if one becomes fit meanwhile)
                relay.upstream_tls = self.upstream_tls is not None
                relay.decline_encryption()
                return True
            if relay.code >> 16 == 3:  # a StartupMessage (a CancelRequest goes as it is)
                relay.read_only()
                if relay.done:
                    return True
                relay.upstream_tls = self.upstream_tls is not None
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
            if relay.upstream_tls:
                transport = await asyncio.wait_for(self._connect_tls(relay, host, port), CONNECT_TIMEOUT)
            else:
                transport, _ = await asyncio.wait_for(
                    self.loop.create_connection(lambda: relay.upstream_side, host, port), CONNECT_TIMEOUT)
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            self.stats.failed_connects += 1
            if self._log_now(f"connect {address}"):
                log.warning("cannot connect to %s (%s) for a %s client: %s; turning it away", relay.uid, address,
                            relay.port, exc or type(exc).__name__)
            what = "the primary" if relay.port == RW else "a server for reads"
            relay.refuse(protocol.CONNECTION_FAILURE, f"cannot connect to {what} ({relay.uid})")
            return
        if relay.done:  # fenced while connecting, after connection_made
            transport.abort()

    async def _connect_tls(self, relay: Relay, host: str, port: int) -> asyncio.BaseTransport:
        """Connect to ``host:port``, ask PostgreSQL for TLS and check its certificate against the
        cluster's CA and ``host``; then hand the TLS transport to the relay. Raises OSError (an
        ssl.SSLError is one) or ValueError when that fails."""
        assert self.upstream_tls is not None
        raw, negotiation = await self.loop.create_connection(_Negotiation, host, port)
        try:
            raw.write(struct.pack("!ii", 8, protocol.SSL_REQUEST))
            answer = await negotiation.answer
            if answer != b"S":
                raise ValueError("the server does not offer TLS" if answer[:1] == b"N" else
                                 "the server closed the connection at the TLS request" if not answer else
                                 f"the server answered the TLS request with {answer[:8]!r}")
            relay.first_reply = bytearray()  # before the first byte can arrive over TLS
            transport = await self.loop.start_tls(raw, relay.upstream_side, self.upstream_tls, server_hostname=host)
        except BaseException:
            raw.abort()
            raise
        if transport is None:
            raise ValueError("TLS to the primary could not start")
        relay.upstream_side.connection_made(transport)
        return transport

    def release_held(self) -> int:
        """Route held clients that now have a route; turn away those that waited too long. Returns how
        many were turned away."""
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
                what = "no primary elected" if relay.port == RW else "no server fit for reads"
                relay.refuse(protocol.CANNOT_CONNECT_NOW, f"{what} (waited {self.hold_timeout:.1f}s)")
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
        self._starting.discard(relay)
        left = self._per_source.get(relay.source, 0) - 1
        if left > 0:
            self._per_source[relay.source] = left
        else:
            self._per_source.pop(relay.source, None)
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
        """Close every connection at once; clients without an upstream are told why."""
        n = 0
        for port, uid in list(self._relays):
            n += self.fence_target(port, uid)
        waiting = list(self._held) + list(self._starting)
        self._held.clear()
        for relay in waiting:
            if not relay.done:
                relay.refuse(protocol.CANNOT_CONNECT_NOW, "the proxy cannot trust the store: not routing", decline=False)
                n += 1
        return n

    def close_all(self) -> int:
        """Graceful close of everything (shutdown)."""
        relays = [r for group in self._relays.values() for r in group] + list(self._held) + list(self._starting)
        self._held.clear()
        for relay in relays:
            if relay.client_side.peer is None:
                relay.refuse(protocol.CANNOT_CONNECT_NOW, "the proxy is shutting down", decline=False)
            else:
                relay.close()
        return len(relays)

    def count(self) -> int:
        return sum(len(g) for g in self._relays.values()) + len(self._held) + len(self._starting)
