"""The proxy agent in-process, on the in-memory store, relaying to small echo servers."""

from __future__ import annotations

import asyncio
import json
import socket
import socketserver
import struct
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Callable

import pytest

from pgha.model import ClusterData, KeeperSpec, ProxySpec, ProxyStatus, keys
from pgha.proxy.agent import ProxyAgent, advertised_host
from pgha.proxy.protocol import (
    SSL_REQUEST,
    StartupError,
    error_response,
    first_message,
    first_server_message,
    read_only_startup,
    startup_message,
    startup_parameters,
    without_channel_binding,
)
from pgha.proxy.relay import RO, RW, Limits
from pgha.spec import normalize
from pgha.store.memory import MemoryStore

KEYS = keys("pgha", "test")
SPEC = normalize({"proxy_check_interval": 0.1, "proxy_timeout": 1})
TIMEOUT = 1.0


def serve(handler: type[socketserver.BaseRequestHandler]) -> tuple[socketserver.ThreadingTCPServer, str]:
    """A threaded TCP server on a free loopback port running ``handler``; (server, "host:port")."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


def stop_serving(server: socketserver.ThreadingTCPServer) -> None:
    server.shutdown()
    server.server_close()


class Echo:
    """A stand-in for PostgreSQL: answers every chunk with '<name>:<chunk>' and records what it got.
    A connection's first chunk, when it is a StartupMessage made by ``hello(text)``, counts as ``text``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.received = bytearray()
        self.open = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.open += 1
                first = True
                try:
                    while True:
                        data = self.request.recv(65536)
                        if not data:
                            return
                        if first:
                            first = False
                            data = unwrap(data)
                        outer.received += data
                        self.request.sendall(outer.name.encode() + b":" + data)
                except OSError:
                    return
                finally:
                    outer.open -= 1

        self.server, self.address = serve(Handler)

    def stop(self) -> None:
        stop_serving(self.server)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def loop_factory(name: str):
    """Event loop factory for asyncio.Runner: None (the standard loop) or uvloop's (skipped when absent)."""
    if name == "asyncio":
        return None
    uvloop = pytest.importorskip("uvloop", reason="uvloop not installed: the proxy falls back to asyncio")
    return uvloop.new_event_loop


class Running:
    def __init__(self, store: MemoryStore, ro: bool = True, api: bool = False, loop: str = "asyncio",
                 **kw: Any) -> None:
        self.loop_factory = loop_factory(loop)
        self.api_port = free_port() if api else 0
        self.agent = ProxyAgent(store, KEYS, "p1", port=0, ro_port=(free_port() if ro else 0),
                                api_port=self.api_port, **kw)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.loop is not None, what="event loop")

    def _run(self) -> None:
        async def main() -> None:
            self.stop_event = asyncio.Event()
            self.loop = asyncio.get_running_loop()
            await self.agent.run(self.stop_event)

        try:
            with asyncio.Runner(loop_factory=self.loop_factory) as runner:
                runner.run(main())
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def stop(self) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(15)
        assert not self.thread.is_alive()

    @property
    def port(self) -> int:
        return self.agent.ports[RW]

    @property
    def ro_port(self) -> int:
        return self.agent.ports[RO]


def put_cd(store: MemoryStore, target: str | None, generation: int, echoes: dict[str, Echo],
           ro: tuple[str, ...] = ()) -> None:
    cd = ClusterData(uid="c1", name="test", spec=SPEC,
                     keepers={name: KeeperSpec(address=e.address) for name, e in echoes.items()},
                     proxy=ProxySpec(target=target, generation=generation, ro_targets=ro))
    store.put(KEYS.clusterdata, cd.dumps())


def status(store: MemoryStore) -> ProxyStatus | None:
    was_down, store.down = store.down, False
    try:
        kv = store.get(KEYS.proxy("p1"))
    finally:
        store.down = was_down
    return ProxyStatus.loads(kv.value) if kv else None


def acked(store: MemoryStore, generation: int) -> Callable[[], bool]:
    return lambda: (s := status(store)) is not None and s.generation == generation


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


_SPOKEN: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()


def hello(text: bytes) -> bytes:
    """A StartupMessage carrying ``text``: the first message the proxy waits for."""
    return startup_message({"user": text.decode()})


def unwrap(data: bytes) -> bytes:
    """``data`` with a leading hello(text) replaced by text (read-only marks dropped, see Echo)."""
    try:
        first = first_message(data)
    except StartupError:
        return data
    if first is None or first[1] >> 16 != 3:
        return data
    params = dict(startup_parameters(data[:first[0]]))
    mark = b"(ro)" if params.get(b"default_transaction_read_only") == b"on" else b""
    return params.get(b"user", b"") + mark + data[first[0]:]


def ask(sock: socket.socket, text: bytes) -> bytes:
    """Send ``text`` and return the answer; the first time on ``sock`` as hello(text), the message
    the proxy reads before it connects upstream."""
    if sock not in _SPOKEN:
        _SPOKEN.add(sock)
        text = hello(text)
    sock.sendall(text)
    return sock.recv(65536)


def closed_by_peer(sock: socket.socket, timeout: float = 3.0) -> bool:
    """Whether the proxy closed ``sock`` (after an ErrorResponse, for a client it never relayed)."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
        while data[:1] == b"E":
            data = sock.recv(65536)
        return data == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def refuses(port: int) -> bool:
    """Whether nothing listens on ``port``: refused, or reset (a connection that reached the backlog
    just as the listener closed)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


@pytest.fixture
def echoes():
    servers = {name: Echo(name) for name in ("k1", "k2", "k3")}
    yield servers
    for e in servers.values():
        e.stop()


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture(params=["asyncio", "uvloop"])
def proxy(store, request):
    running = Running(store, loop=request.param)
    yield running
    running.stop()
    assert running.error is None, running.error


def test_relays_to_the_target_and_acknowledges(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1), what="ack of generation 1")
    st = status(store)
    assert st.listening and st.target == "k1"
    assert st.address == f"127.0.0.1:{proxy.port}"
    kv = store.get(KEYS.proxy("p1"))
    assert kv.lease != 0  # written under the proxy's lease
    with connect(proxy.port) as c:
        assert ask(c, b"hello") == b"k1:hello"
        big = b"x" * 3_000_000  # exercises flow control both ways
        c.sendall(big)
        got = 0
        while got < len(big) + 3:
            got += len(c.recv(1 << 20))


def test_target_change_closes_old_connections_before_the_ack(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1))
    old = connect(proxy.port)
    assert ask(old, b"a") == b"k1:a"
    put_cd(store, "k2", 2, echoes)
    wait_for(acked(store, 2), what="ack of generation 2")
    # the ack is written only after the connection was closed: it must already be dead
    old.settimeout(0.5)
    try:
        assert old.recv(100) == b""
    except ConnectionResetError:
        pass
    old.close()
    with connect(proxy.port) as new:
        assert ask(new, b"b") == b"k2:b"
    wait_for(lambda: echoes["k1"].open == 0, what="old upstream connection closed")


def test_target_none_closes_and_holds_new_clients_until_a_target_appears(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1))
    old = connect(proxy.port)
    assert ask(old, b"a") == b"k1:a"
    put_cd(store, None, 2, echoes)
    wait_for(acked(store, 2))
    assert closed_by_peer(old)
    held = connect(proxy.port)
    held.sendall(hello(b"early"))
    time.sleep(0.3)
    assert echoes["k1"].received == b"a" and echoes["k2"].received == b""  # nothing forwarded while held
    put_cd(store, "k2", 3, echoes)
    held.settimeout(3)
    assert held.recv(100) == b"k2:early"
    held.close()


def error_of(sock: socket.socket, timeout: float = 5.0) -> tuple[str, str]:
    """(SQLSTATE, message) of the ErrorResponse the proxy answered with, once it closed ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert data[:1] == b"E", data
    fields = {f[:1]: f[1:].decode() for f in data[5:].split(b"\0") if f}
    return fields[b"C"], fields[b"M"]


def test_held_client_is_answered_no_primary_when_no_target_appears(store, echoes, proxy):
    put_cd(store, None, 1, echoes)
    wait_for(acked(store, 1))
    start = time.monotonic()
    with connect(proxy.port) as c:
        c.sendall(hello(b"x"))
        code, message = error_of(c, timeout=TIMEOUT + 2)
    assert time.monotonic() - start >= TIMEOUT * 0.8
    assert code == "57P03" and "no primary elected" in message, message


def test_store_down_stops_listening_and_recovery_listens_again(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1))
    c = connect(proxy.port)
    assert ask(c, b"a") == b"k1:a"
    store.down = True
    assert closed_by_peer(c, timeout=TIMEOUT + 2)
    wait_for(lambda: refuses(proxy.port), what="port refusing")
    assert refuses(proxy.ro_port)
    store.down = False
    wait_for(lambda: not refuses(proxy.port), what="listening again")
    with connect(proxy.port) as c2:
        assert ask(c2, b"b") == b"k1:b"
    assert status(store).listening


def test_frozen_loop_does_not_forward_stale_data(store, echoes, proxy):
    """A process resumed after SIGSTOP may run socket callbacks before timers: the relay checks itself."""
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1))
    c = connect(proxy.port)
    assert ask(c, b"a") == b"k1:a"
    store.down = True  # like a stopped process, the store thread learns nothing new
    proxy.loop.call_soon_threadsafe(time.sleep, TIMEOUT + 0.5)
    time.sleep(0.2)
    c.sendall(b"stale")
    assert closed_by_peer(c, timeout=TIMEOUT + 3)
    assert echoes["k1"].received == b"a"
    store.down = False


def test_unknown_format_is_not_trusted(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1))
    doc = json.loads(store.get(KEYS.clusterdata).value)
    doc["format_version"] = 99
    doc["proxy"]["target"] = "k2"
    doc["proxy"]["generation"] = 2
    store.put(KEYS.clusterdata, json.dumps(doc))
    time.sleep(0.3)
    assert status(store).generation == 1  # not acknowledged
    with connect(proxy.port) as c:
        assert ask(c, b"a") == b"k1:a"  # not acted on
    # after proxy_timeout without trusted data: fenced, and its lease revoked so nobody waits for it
    wait_for(lambda: refuses(proxy.port), what="fenced on untrusted data")
    wait_for(lambda: status(store) is None, what="status removed")
    put_cd(store, "k2", 3, echoes)
    wait_for(acked(store, 3))
    with connect(proxy.port) as c:
        assert ask(c, b"b") == b"k2:b"


def test_read_only_round_robin_fallback_and_fencing(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes, ro=("k2", "k3"))
    wait_for(acked(store, 1))
    seen = set()
    conns = []
    for _ in range(4):
        c = connect(proxy.ro_port)
        seen.add(ask(c, b"r")[:2])
        conns.append(c)
    assert seen == {b"k2", b"k3"}
    put_cd(store, "k1", 2, echoes, ro=("k3",))
    wait_for(acked(store, 2))
    survivors = 0
    for c in conns:
        c.settimeout(0.3)
        try:
            survivors += ask(c, b"s") == b"k3:s"
        except OSError:
            pass
        c.close()
    assert survivors == 2  # the two k3 connections live on, the k2 ones were closed
    put_cd(store, "k1", 3, echoes, ro=())
    wait_for(acked(store, 3))
    with connect(proxy.ro_port) as c:
        assert ask(c, b"f") == b"k1:f(ro)"  # no replica: read-only traffic goes to the primary, read-only


def test_upstream_down_answers_the_client_with_the_reason(store, echoes, proxy):
    dead = {"k1": echoes["k1"], "gone": type("E", (), {"address": f"127.0.0.1:{free_port()}"})()}
    put_cd(store, "gone", 1, dead)
    wait_for(acked(store, 1))
    with connect(proxy.port) as c:
        c.sendall(hello(b"x"))
        code, message = error_of(c)
    assert code == "08006" and "cannot connect to the primary (gone)" in message, message


def test_health_and_metrics(store, echoes):
    store.down = True
    running = Running(store, api=True)
    try:
        base = f"http://127.0.0.1:{running.api_port}"

        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(base + path, timeout=3) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
            except OSError:
                return 0, ""

        wait_for(lambda: get("/health")[0] == 503, what="unhealthy before the first read")
        assert "store not trusted" in get("/health")[1]
        store.down = False
        put_cd(store, "k1", 4, echoes)
        wait_for(acked(store, 4))
        assert get("/health") == (200, "ok\n")
        with connect(running.port) as c:
            assert ask(c, b"12345") == b"k1:12345"
            code, text = get("/metrics")
            assert code == 200
            assert 'pgha_proxy_connections{port="rw"} 1' in text
            assert 'pgha_proxy_connections{port="ro"} 0' in text
            assert "pgha_proxy_connections_total 1" in text
            assert f'pgha_proxy_bytes_total{{direction="in"}} {len(hello(b"12345"))}' in text
            assert "pgha_proxy_refused_connections_total 0" in text
            assert 'pgha_proxy_bytes_total{direction="out"} 8' in text
            assert 'pgha_proxy_target_info{target="k1"} 1' in text
            assert "pgha_proxy_listening 1" in text
            assert "pgha_proxy_store_age_seconds " in text
        assert status(store).api_address == f"127.0.0.1:{running.api_port}"
        store.down = True
        wait_for(lambda: get("/health")[0] == 503, what="unhealthy when the store is down")
        assert "store" in get("/health")[1]
        wait_for(lambda: "pgha_proxy_listening 0" in get("/metrics")[1], what="metrics showing the fence")
        store.down = False
    finally:
        running.stop()


def test_shutdown_revokes_the_lease(store, echoes):
    running = Running(store, ro=False)
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1))
    c = connect(running.port)
    running.stop()
    assert running.error is None
    assert status(store) is None
    assert closed_by_peer(c)
    assert refuses(running.port)


@pytest.mark.parametrize("listen,endpoints,want", [
    ("10.0.0.5", ["http://10.9.9.9:2379"], "10.0.0.5"),  # a specific address is advertised as is
    ("0.0.0.0", ["http://127.0.0.1:2379", "http://10.9.9.9:2379"], "127.0.0.1"),  # the route to the store
    ("::", ["http://[::1]:2379"], "::1"),
    ("", ["https://127.0.0.1:2379"], "127.0.0.1"),
])
def test_advertised_host(listen, endpoints, want):
    assert advertised_host(listen, endpoints) == want


def test_advertised_host_without_a_usable_store_endpoint_is_the_host_name():
    assert advertised_host("0.0.0.0", ["memory://"]) == socket.gethostname()


def test_wildcard_listener_reports_its_advertise_address(store, echoes):
    proxy = Running(store, ro=True, listen_address="0.0.0.0", advertise_address="db1.example.net")
    try:
        put_cd(store, "k1", 1, echoes)
        wait_for(acked(store, 1), what="ack of generation 1")
        st = status(store)
        assert st.address == f"db1.example.net:{proxy.port}"
        assert st.ro_address == f"db1.example.net:{proxy.ro_port}"
        with connect(proxy.port) as c:  # listening on every address, loopback included
            assert ask(c, b"hi") == b"k1:hi"
    finally:
        proxy.stop()


def test_port_taken_at_start_is_an_error(store):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        agent = ProxyAgent(store, KEYS, "p1", port=busy.getsockname()[1])
        store.put(KEYS.clusterdata, ClusterData(uid="c", name="test", spec=SPEC).dumps())

        async def main() -> None:
            await asyncio.wait_for(agent.run(asyncio.Event()), 10)

        with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
            asyncio.run(main())


# -- starvation: what a client must send before the proxy spends anything upstream, and the limits
def test_silent_sockets_open_no_upstream_and_are_closed_after_the_startup_timeout(store, echoes):
    running = Running(store, limits=Limits(startup_timeout=0.5))
    try:
        put_cd(store, "k1", 1, echoes)
        wait_for(acked(store, 1))
        silent = [connect(running.port) for _ in range(50)]
        partial = connect(running.port)
        partial.sendall(hello(b"p")[:6])  # half a startup packet is not a first message yet
        time.sleep(0.2)
        assert echoes["k1"].open == 0  # not one upstream connection for them
        with connect(running.port) as c:
            assert ask(c, b"a") == b"k1:a"  # a client that speaks is relayed at once
        for s in silent + [partial]:
            assert closed_by_peer(s, timeout=3)
            s.close()
        assert running.agent.pool.stats.silent_closed == 51
        assert echoes["k1"].received == b"a"
    finally:
        running.stop()


def test_connection_limits_answer_with_the_reason(store, echoes, caplog):
    psycopg2 = pytest.importorskip("psycopg2")
    running = Running(store, limits=Limits(max_connections=6, max_per_source=3))
    try:
        put_cd(store, "k1", 1, echoes)
        wait_for(acked(store, 1))
        held = [connect(running.port) for _ in range(3)]
        time.sleep(0.1)
        with pytest.raises(psycopg2.OperationalError, match="connection limit reached \\(3 connections from "
                                                            "127.0.0.1\\)"):
            psycopg2.connect(host="127.0.0.1", port=running.port, user="x", connect_timeout=3)
        with connect(running.port) as over:  # a raw client is told the same, in an ErrorResponse
            over.sendall(hello(b"x"))
            assert error_of(over) == ("53300", "pgha-proxy: connection limit reached (3 connections from 127.0.0.1)")
        for s in held:
            s.close()
        wait_for(lambda: running.agent.pool.count() == 0, what="closed connections forgotten")
        with connect(running.port) as c:
            assert ask(c, b"a") == b"k1:a"  # the limit counts open connections only
        # the total limit, from other source addresses (127.0.0.2 and .3 are loopback too)
        others = []
        for src in ("127.0.0.2", "127.0.0.3"):
            for _ in range(3):
                s = socket.socket()
                s.bind((src, 0))
                s.connect(("127.0.0.1", running.port))
                others.append(s)
        time.sleep(0.1)
        with connect(running.port) as over:
            over.sendall(hello(b"x"))
            assert error_of(over) == ("53300", "pgha-proxy: connection limit reached (6 client connections)")
        for s in others:
            s.close()
        assert "turned away a rw client from 127.0.0.1: connection limit reached" in caplog.text
    finally:
        running.stop()


def test_a_client_that_is_not_postgresql_is_answered_and_closed(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1))
    with connect(proxy.port) as c:
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        code, message = error_of(c)
    assert code == "08P01" and "invalid length of startup packet" in message, message
    assert echoes["k1"].open == 0 and echoes["k1"].received == b""


def test_read_only_fallback_declines_tls_and_marks_the_session_read_only(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes, ro=())
    wait_for(acked(store, 1))
    with connect(proxy.ro_port) as c:
        c.sendall(struct.pack("!ii", 8, SSL_REQUEST))
        assert c.recv(1) == b"N"  # the proxy answers itself: the session to the primary must stay in clear
        _SPOKEN.add(c)
        c.sendall(hello(b"q"))
        assert c.recv(100) == b"k1:q(ro)"
    with connect(proxy.port) as c:  # the read-write port passes everything through
        c.sendall(struct.pack("!ii", 8, SSL_REQUEST))
        assert c.recv(100).startswith(b"k1:")
    put_cd(store, "k1", 2, echoes, ro=("k2",))
    wait_for(acked(store, 2))
    with connect(proxy.ro_port) as c:  # a replica gets the client's own messages
        c.sendall(struct.pack("!ii", 8, SSL_REQUEST))
        assert c.recv(100).startswith(b"k2:")


def test_protocol_first_message_and_error_response():
    assert first_message(b"\0\0\0") is None
    packet = startup_message({"user": "u", "database": "d"})
    assert first_message(packet[:-1]) is None
    assert first_message(packet + b"more") == (len(packet), 3 << 16)
    assert first_message(struct.pack("!ii", 8, SSL_REQUEST)) == (8, SSL_REQUEST)
    for bad, why in ((struct.pack("!ii", 4, 0), "invalid length"), (struct.pack("!ii", 10001, 3 << 16), "invalid length"),
                     (struct.pack("!ii", 12, 2 << 16), "unsupported frontend protocol 2.0"),
                     (struct.pack("!ii", 12, SSL_REQUEST), "invalid length 12 of request")):
        with pytest.raises(StartupError, match=why):
            first_message(bad)
    ro = read_only_startup(startup_message({"user": "u", "default_transaction_read_only": "off"}))
    assert startup_parameters(ro) == [(b"user", b"u"), (b"default_transaction_read_only", b"on")]
    assert first_message(ro) == (len(ro), 3 << 16)
    with pytest.raises(StartupError):
        read_only_startup(struct.pack("!ii", 11, 3 << 16) + b"abc")
    err = error_response("53300", "nope\0")
    assert err[:1] == b"E" and struct.unpack_from("!i", err, 1)[0] == len(err) - 1
    assert b"C53300\0" in err and b"Mnope?\0" in err and err.endswith(b"\0\0")


def sasl_request(*mechanisms: bytes) -> bytes:
    body = struct.pack("!i", 10) + b"".join(m + b"\0" for m in mechanisms) + b"\0"
    return b"R" + struct.pack("!i", len(body) + 4) + body


@pytest.mark.parametrize(("message", "expected"), [
    (sasl_request(b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"), sasl_request(b"SCRAM-SHA-256")),
    (sasl_request(b"SCRAM-SHA-256"), sasl_request(b"SCRAM-SHA-256")),
    (b"R" + struct.pack("!ii", 8, 0), b"R" + struct.pack("!ii", 8, 0)),  # AuthenticationOk: as it is
    (error_response("28000", "no pg_hba.conf entry"), error_response("28000", "no pg_hba.conf entry")),
])
def test_the_servers_first_message_loses_only_channel_binding(message: bytes, expected: bytes) -> None:
    assert without_channel_binding(message) == expected
    assert first_server_message(message + b"more") == len(message)
    assert first_server_message(message[:-1]) is None
    assert first_server_message(message[:4]) is None


def test_a_first_server_message_with_a_silly_length_is_not_postgresql() -> None:
    with pytest.raises(StartupError):
        first_server_message(b"R" + struct.pack("!i", 2))


class TlsServer:
    """A stand-in for PostgreSQL with TLS: answers an SSLRequest 'S', then a TLS handshake with a
    certificate for 127.0.0.1 from ``ca`` (pgha.pki), then echoes like Echo."""

    def __init__(self, tmp: Path, ca: Any) -> None:
        import ssl

        from pgha import pki

        key, crt, _ = pki.ensure_certificate(tmp, ca, "server", ips=("127.0.0.1",), server=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(crt), str(key))
        self.handshakes = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    if self.request.recv(8) != struct.pack("!ii", 8, SSL_REQUEST):
                        return
                    self.request.sendall(b"S")
                    with ctx.wrap_socket(self.request, server_side=True) as tls:
                        outer.handshakes += 1
                        data = tls.recv(65536)
                        tls.sendall(b"tls:" + unwrap(data))
                except OSError:
                    return

        self.server, self.address = serve(Handler)

    def stop(self) -> None:
        stop_serving(self.server)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_read_only_fallback_speaks_tls_to_the_primary_or_says_why_it_cannot(store, tmp_path, loop):
    import ssl

    from pgha import pki

    cluster_ca, _ = pki.ensure_ca(tmp_path / "ca", "cluster")
    other_ca, _ = pki.ensure_ca(tmp_path / "other", "someone else")
    good = TlsServer(tmp_path / "good", cluster_ca)
    forged = TlsServer(tmp_path / "forged", other_ca)
    plain = Echo("plain")
    running = Running(store, loop=loop, upstream_tls=ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.crt")))
    try:
        for generation, (server, expect) in enumerate(
                [(good, b"tls:q(ro)"), (forged, "cannot connect"), (plain, "cannot connect")], start=1):
            put_cd(store, "k1", generation, {"k1": server})  # type: ignore[dict-item]
            wait_for(acked(store, generation))
            with connect(running.ro_port) as c:
                c.sendall(struct.pack("!ii", 8, SSL_REQUEST))
                assert c.recv(1) == b"N"
                _SPOKEN.add(c)
                c.sendall(hello(b"q"))
                if isinstance(expect, bytes):
                    assert c.recv(100) == expect  # TLS to the primary, the session made read-only
                else:  # a certificate from another CA, a server without TLS: an error that says so
                    code, message = error_of(c)
                    assert code == "08006" and expect in message, message
        assert good.handshakes == 1 and forged.handshakes == 0
    finally:
        running.stop()
        for server in (good, forged, plain):
            server.stop()


def test_the_servers_first_messages_in_pieces_lose_only_channel_binding():
    from types import SimpleNamespace

    from pgha.proxy.relay import Relay

    relay = Relay(SimpleNamespace(fence=None, stats=None), RO)  # type: ignore[arg-type]
    relay.upstream_tls = True
    relay.first_reply = bytearray()  # as Pool._connect_tls sets it before the TLS handshake
    negotiate = b"v" + struct.pack("!iii", 12, 0, 0)  # NegotiateProtocolVersion: minor 0, no options
    stream = negotiate + sasl_request(b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256") + b"R..."
    out = b""
    for i in range(0, len(stream), 3):  # as UpstreamSide.data_received hands them over
        chunk = stream[i:i + 3]
        out += chunk if relay.first_reply is None else relay.server_speaking(chunk)
    assert out == negotiate + sasl_request(b"SCRAM-SHA-256") + b"R..."
    assert relay.first_reply is None  # past the first messages: the rest goes as it comes
