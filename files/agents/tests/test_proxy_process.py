"""pgha-proxy as a real process against a real etcd, relaying to echo servers standing in for PostgreSQL.

Faults are injected the way an operator would meet them: etcd killed and restarted, the proxy
SIGSTOPped and resumed. Each test fails on a traceback in the proxy log and prints the log on failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_proxy_agent import Echo, ask, closed_by_peer, free_port, refuses, wait_for

from pgha.model import ClusterData, KeeperSpec, ProxySpec, ProxyStatus, keys
from pgha.spec import normalize
from pgha.store.etcd import EtcdStore

KEYS = keys("pgha", "ptest")
SPEC = normalize({"proxy_check_interval": 0.2, "proxy_timeout": 1.5})
TIMEOUT = 1.5

# needs only etcd: the conftest skips the module, saying why, when etcd is missing
pytestmark = [pytest.mark.integration, pytest.mark.needs("etcd")]


class ProxyProcess:
    def __init__(self, workdir: Path, etcd_url: str, event_loop: str = "auto", *, uid: str = "p1",
                 port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.api_port = free_port()
        self.log = workdir / f"proxy-{uid}.log"
        env = dict(os.environ, PGHA_STORE_ENDPOINTS=etcd_url,  # flags may come from the environment too
                   PGHA_STORE_INSECURE="true")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pgha.proxy.main", "--cluster-name", "ptest", "--uid", uid,
                 "--port", str(self.port), "--api-port", str(self.api_port), "--store-timeout", "1",
                 "--event-loop", event_loop, *extra],
                stdout=out, stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                return -9
        return self.proc.returncode


@pytest.fixture
def etcd(etcd_factory):
    return etcd_factory(1)


@pytest.fixture
def echoes():
    servers = {name: Echo(name) for name in ("k1", "k2")}
    yield servers
    for e in servers.values():
        e.stop()


@pytest.fixture
def store(etcd):
    s = EtcdStore(etcd.endpoints, timeout=1)
    yield s
    s.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def proxy(tmp_path, etcd, request):
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop not installed: the proxy falls back to asyncio")
    p = ProxyProcess(tmp_path, etcd.endpoints, request.param)
    yield p
    code = p.stop()
    log = p.text()
    failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else False
    if failed or code != 0 or "Traceback" in log:
        print(f"--- proxy log ({p.log}) ---\n{log}")
    assert "Traceback" not in log
    assert code == 0, f"pgha-proxy exited with {code}"


def put_cd(store: EtcdStore, target: str | None, generation: int, echoes: dict[str, Echo]) -> None:
    cd = ClusterData(uid="c1", name="ptest", spec=SPEC,
                     keepers={n: KeeperSpec(address=e.address) for n, e in echoes.items()},
                     proxy=ProxySpec(target=target, generation=generation))
    store.put(KEYS.clusterdata, cd.dumps())


def acked(store: EtcdStore, generation: int, uid: str = "p1"):
    def check() -> bool:
        kv = store.get(KEYS.proxy(uid))
        return kv is not None and ProxyStatus.loads(kv.value).generation == generation
    return check


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_relay_and_switch_target(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1), timeout=10, what="ack of generation 1")
    old = connect(proxy.port)
    assert ask(old, b"hi") == b"k1:hi"
    put_cd(store, "k2", 2, echoes)
    wait_for(acked(store, 2), timeout=10, what="ack of generation 2")
    assert closed_by_peer(old, timeout=0.5)  # already closed when the ack was written
    old.close()
    with connect(proxy.port) as new:
        assert ask(new, b"again") == b"k2:again"
    assert "routing rw to k2" in proxy.text()


def test_store_loss_stops_listening_and_recovery_resumes(store, etcd, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1), timeout=10)
    c = connect(proxy.port)
    assert ask(c, b"a") == b"k1:a"
    etcd.kill_member(0)
    assert closed_by_peer(c, timeout=TIMEOUT + 5)
    c.close()
    wait_for(lambda: refuses(proxy.port), timeout=TIMEOUT + 5, what="the port refusing connections")
    assert "stopped listening" in proxy.text()
    etcd.start_member(0)
    wait_for(lambda: not refuses(proxy.port), timeout=15, what="the port listening again")
    with connect(proxy.port) as c2:
        assert ask(c2, b"b") == b"k1:b"


def test_resumed_after_sigstop_does_not_forward_stale_data(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1), timeout=10)
    c = connect(proxy.port)
    assert ask(c, b"a") == b"k1:a"
    os.kill(proxy.proc.pid, signal.SIGSTOP)
    try:
        c.sendall(b"stale")  # sits in the proxy's socket buffer while it is stopped
        time.sleep(TIMEOUT + 1)
    finally:
        os.kill(proxy.proc.pid, signal.SIGCONT)
    assert closed_by_peer(c, timeout=5)
    assert echoes["k1"].received == b"a"  # the stale chunk never reached "PostgreSQL"
    c.close()
    wait_for(lambda: not refuses(proxy.port), timeout=10, what="listening again after resume")


def test_health_endpoint_and_sigterm(store, echoes, proxy):
    put_cd(store, "k1", 1, echoes)
    wait_for(acked(store, 1), timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.api_port}/health", timeout=3) as r:
        assert r.read() == b"ok\n"
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.api_port}/metrics", timeout=3) as r:
        assert b'pgha_proxy_target_info{target="k1"} 1' in r.read()
    assert proxy.stop() == 0
    assert store.get(KEYS.proxy("p1")) is None  # lease revoked on SIGTERM
    assert refuses(proxy.port)


def _connections_total(p: ProxyProcess) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{p.api_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("pgha_proxy_connections_total"))


def test_two_proxies_share_their_port_with_reuse_port(tmp_path, store, etcd, echoes):
    """--reuse-port: a second proxy on the same port starts, both relay, the kernel spreads clients."""
    a = ProxyProcess(tmp_path, etcd.endpoints, uid="p1", extra=("--reuse-port", "true"))
    b = ProxyProcess(tmp_path, etcd.endpoints, uid="p2", port=a.port, extra=("--reuse-port", "true"))
    try:
        put_cd(store, "k1", 1, echoes)
        for uid in ("p1", "p2"):
            wait_for(acked(store, 1, uid), timeout=10, what=f"ack of generation 1 by {uid}")
        for i in range(40):
            with connect(a.port) as s:
                assert ask(s, b"x%d" % i) == b"k1:x%d" % i
        counts = [_connections_total(p) for p in (a, b)]
        assert sum(counts) >= 40 and min(counts) > 0, f"connections per proxy: {counts}"
    finally:
        codes = [p.stop() for p in (a, b)]
        logs = [p.text() for p in (a, b)]
    assert codes == [0, 0] and not any("Traceback" in log for log in logs), logs


def test_second_proxy_on_a_taken_port_without_reuse_port_fails_clearly(tmp_path, store, etcd, echoes):
    a = ProxyProcess(tmp_path, etcd.endpoints, uid="p1")
    try:
        put_cd(store, "k1", 1, echoes)
        wait_for(acked(store, 1, "p1"), timeout=10, what="ack of generation 1 by p1")
        b = ProxyProcess(tmp_path, etcd.endpoints, uid="p2", port=a.port)
        assert b.proc.wait(30) != 0
        assert "cannot listen on" in b.text(), b.text()
    finally:
        a.stop()

