"""The store interface, on the in-memory backend and on real etcd (plain and TLS)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness
from pgha.store import Store, StoreError, open_store
from pgha.store.etcd import EtcdStore
from pgha.store.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def exercise(store: Store, advance: callable = lambda s: time.sleep(s)) -> None:  # type: ignore[valid-type]
    """The contract every backend honours."""
    assert store.get("/x/a") is None
    rev = store.put("/x/a", "1")
    kv = store.get("/x/a")
    assert kv is not None and kv.value == b"1" and kv.mod_revision == rev
    # compare-and-swap on the mod revision; 0 means "must not exist"
    assert store.cas("/x/a", "2", kv.mod_revision)
    assert not store.cas("/x/a", "3", kv.mod_revision)
    assert store.get("/x/a").value == b"2"  # type: ignore[union-attr]
    assert store.cas("/x/b", "new", 0)
    assert not store.cas("/x/b", "again", 0)
    # the guard key must hold exactly the guard value
    store.put("/x/leader", "me")
    cur = store.get("/x/a").mod_revision  # type: ignore[union-attr]
    assert not store.cas("/x/a", "4", cur, guard=("/x/leader", "you"))
    assert not store.cas("/x/a", "4", cur, guard=("/x/nobody", "me"))
    assert store.cas("/x/a", "4", cur, guard=("/x/leader", "me"))
    # prefix reads are sorted and carry a revision
    kvs, revision = store.get_prefix("/x/")
    assert [k.key for k in kvs] == ["/x/a", "/x/b", "/x/leader"] and revision >= rev
    # conditional delete
    b = store.get("/x/b")
    assert not store.delete("/x/b", mod_revision=b.mod_revision + 100)  # type: ignore[union-attr]
    assert store.delete("/x/b", mod_revision=b.mod_revision)  # type: ignore[union-attr]
    # leases: keys vanish with them; lease_alive asks without renewing
    lease, granted = store.grant_lease(2)
    assert granted == 2
    store.put("/x/leased", "v", lease=lease)
    assert store.keepalive(lease) == 2
    assert store.lease_alive(lease)
    advance(3.6)
    assert store.get("/x/leased") is None
    assert not store.lease_alive(lease)
    assert store.keepalive(lease) == 0
    lease = store.grant(5)
    store.put("/x/leased", "v", lease=lease)
    store.revoke(lease)
    assert store.get("/x/leased") is None
    assert not store.lease_alive(lease)
    store.delete_prefix("/x/")
    assert store.get_prefix("/x/")[0] == []


def test_memory_store_contract() -> None:
    clock = Clock()

    def advance(s: float) -> None:
        clock.t += s

    exercise(MemoryStore(clock=clock), advance)


def test_memory_store_wait_and_down() -> None:
    s = MemoryStore()
    _, rev = s.get_prefix("/p/")
    threading.Timer(0.1, lambda: s.put("/p/k", "v")).start()
    assert s.wait("/p/", rev, 5)
    _, rev = s.get_prefix("/p/")
    assert not s.wait("/p/", rev, 0.1)
    s.down = True
    with pytest.raises(StoreError):
        s.get("/p/k")


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


@pytest.fixture()
def etcd(tmp_path: Path) -> Iterator[harness.EtcdCluster]:
    e = harness.EtcdCluster(tmp_path / "etcd", 1)
    e.start()
    try:
        yield e
    finally:
        e.stop()


@pytest.mark.integration
@pytest.mark.needs("etcd")
def test_etcd_contract_and_endpoint_failover(etcd: harness.EtcdCluster) -> None:
    dead = f"http://127.0.0.1:{harness.free_port()}"
    store = EtcdStore(f"{dead},{etcd.endpoints}", timeout=2)  # the first endpoint is down
    exercise(store)
    health = store.member_health()
    assert [h["healthy"] for h in health] == [False, True]
    assert health[1]["leader"] and health[0]["error"]


@pytest.mark.integration
@pytest.mark.needs("etcd")
def test_etcd_watch_wakes_on_change(etcd: harness.EtcdCluster) -> None:
    store = EtcdStore(etcd.endpoints)
    _, rev = store.get_prefix("/w/")
    other = EtcdStore(etcd.endpoints)
    threading.Timer(0.2, lambda: other.put("/w/k", "v")).start()
    t0 = time.monotonic()
    assert store.wait("/w/", rev, 5)
    assert time.monotonic() - t0 < 4
    _, rev = store.get_prefix("/w/")
    assert not store.wait("/w/", rev, 0.3)


@pytest.mark.integration
@pytest.mark.needs("etcd")
def test_etcd_wait_events_says_what_changed(etcd: harness.EtcdCluster) -> None:
    store = EtcdStore(etcd.endpoints)
    lease = store.grant(2)
    store.put("/e/keepers/k1", "v", lease=lease)
    _, rev = store.get_prefix("/e/")
    store.put("/e/keepers/k1", "v2", lease=lease)
    [ev] = store.wait_events("/e/", rev, 5)
    assert (ev.kind, ev.key) == ("put", "/e/keepers/k1") and ev.revision > rev
    store.revoke(lease)  # what an expired lease does: the key is deleted
    [ev2] = store.wait_events("/e/", ev.revision, 5)
    assert (ev2.kind, ev2.key) == ("delete", "/e/keepers/k1") and ev2.revision > ev.revision
    assert store.wait_events("/e/", ev2.revision, 0.3) == []


def test_sentinel_wakes_at_once_for_anything_but_status_refreshes() -> None:
    from pgha.sentinel.main import urgent
    from pgha.store import WatchEvent

    base = "/pgha/c/"
    refresh = [WatchEvent("put", base + "keepers/k1", 5), WatchEvent("put", base + "proxies/p1", 6)]
    assert not urgent(refresh, base)
    assert urgent(refresh + [WatchEvent("delete", base + "keepers/k2", 7)], base)  # a lease expired
    for key in ("clusterdata", "spec", "commands/switchover", "sentinel-leader"):
        assert urgent([WatchEvent("put", base + key, 8)], base), key
    assert urgent([WatchEvent("resync", base, 9)], base)


@pytest.mark.integration
@pytest.mark.needs("etcd")
def test_etcd_down_raises_store_error() -> None:
    store = EtcdStore(f"http://127.0.0.1:{harness.free_port()}", timeout=1)
    with pytest.raises(StoreError, match="unreachable"):
        store.get("/k")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.integration
@pytest.mark.needs("etcd")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make test certificates")
def test_etcd_over_tls_with_client_certificates(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=pgha-test-ca", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", "san.cnf", cwd=d)
    port, peer = harness.free_port(), harness.free_port()
    log = open(tmp_path / "etcd.log", "w")
    proc = subprocess.Popen([
        "etcd", "--name", "tls0", "--data-dir", str(tmp_path / "data"),
        "--listen-client-urls", f"https://127.0.0.1:{port}", "--advertise-client-urls", f"https://127.0.0.1:{port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"tls0=http://127.0.0.1:{peer}",
        "--cert-file", str(d / "server.crt"), "--key-file", str(d / "server.key"),
        "--trusted-ca-file", str(d / "ca.crt"), "--client-cert-auth"], stdout=log, stderr=log)
    try:
        ep = f"https://127.0.0.1:{port}"
        store = EtcdStore(ep, ca_file=str(d / "ca.crt"), cert_file=str(d / "client.crt"),
                          key_file=str(d / "client.key"))
        deadline = time.monotonic() + 20
        while True:
            try:
                store.put("/tls/k", "v")
                break
            except StoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert store.get("/tls/k").value == b"v"  # type: ignore[union-attr]
        # without the client certificate the server refuses us
        with pytest.raises(StoreError):
            EtcdStore(ep, ca_file=str(d / "ca.crt"), timeout=2).get("/tls/k")
        # without the CA we refuse the server
        with pytest.raises(StoreError):
            EtcdStore(ep, timeout=2).get("/tls/k")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
