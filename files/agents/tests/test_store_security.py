"""The store with TLS and etcd authentication: a real etcd on HTTPS that wants client certificates,
and a user per component allowed only what the component writes (pgha.store.auth)."""

from __future__ import annotations

import secrets
import time

import pytest

from harness import EtcdCluster
from pgha import pki
from pgha.model import keys
from pgha.store.auth import COMPONENTS, ensure_auth, user_name
from pgha.store.base import StoreError
from pgha.store.etcd import EtcdStore

pytestmark = [pytest.mark.integration, pytest.mark.needs("etcd")]

KEYS = keys("pgha", "sec")


@pytest.fixture
def secure_etcd(tmp_path):
    cluster = EtcdCluster(tmp_path / "etcd", 1, tls=True)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def passwords():
    return {c: secrets.token_urlsafe(12) for c in (*COMPONENTS, "root")}


def store_as(etcd: EtcdCluster, component: str | None, passwords: dict[str, str], **kw) -> EtcdStore:
    auth = {"user": user_name("sec", component), "password": passwords[component]} if component else {}
    return EtcdStore(etcd.endpoints, timeout=2, **etcd.client_tls(component or "anonymous"), **auth, **kw)


def test_plain_http_and_https_without_a_client_certificate_are_refused(secure_etcd):
    plain = EtcdStore(secure_etcd.endpoints.replace("https://", "http://"), timeout=2)
    with pytest.raises(StoreError, match="store unreachable"):
        plain.get("/x")
    no_cert = EtcdStore(secure_etcd.endpoints, ca_file=str(secure_etcd.pki / "ca.crt"), timeout=2)
    with pytest.raises(StoreError, match="etcd wants a client certificate signed by its CA"):
        no_cert.get("/x")
    wrong_ca = pki.make_ca("someone else")
    other = secure_etcd.tmp / "other-ca.crt"
    other.write_bytes(wrong_ca.cert_pem)
    stranger = EtcdStore(secure_etcd.endpoints, ca_file=str(other), timeout=2)
    with pytest.raises(StoreError, match="is --store-ca-file the CA that signed etcd's certificate"):
        stranger.get("/x")
    with_cert = EtcdStore(secure_etcd.endpoints, timeout=2, **secure_etcd.client_tls("operator"))
    assert with_cert.get("/x") is None  # the CA's client certificate gets in (no auth yet)


def test_each_component_may_write_only_what_it_writes(secure_etcd, passwords):
    changes = ensure_auth(secure_etcd.endpoints, KEYS, "sec", passwords, **secure_etcd.client_tls("operator"))
    assert "authentication enabled" in changes and "added user sec-proxy" in changes
    assert ensure_auth(secure_etcd.endpoints, KEYS, "sec", passwords, **secure_etcd.client_tls("operator")) == []

    anonymous = store_as(secure_etcd, None, passwords)
    with pytest.raises(StoreError, match="permission denied"):
        anonymous.get(KEYS.clusterdata)

    sentinel = store_as(secure_etcd, "sentinel", passwords)
    sentinel.put(KEYS.clusterdata, "{}")
    proxy = store_as(secure_etcd, "proxy", passwords)
    assert proxy.get(KEYS.clusterdata).value == b"{}"  # reads the cluster data
    with pytest.raises(StoreError, match="permission denied"):
        proxy.put(KEYS.clusterdata, '{"forged": true}')
    with pytest.raises(StoreError, match="permission denied"):
        proxy.request("/v3/auth/enable", {})
    with pytest.raises(StoreError, match="permission denied"):
        proxy.request("/v3/auth/user/add", {"name": "intruder", "password": "x"})
    lease = proxy.grant(5)
    proxy.put(KEYS.proxy("p1"), "{}", lease=lease)  # its own status, under a lease
    keeper = store_as(secure_etcd, "keeper", passwords)
    keeper.put(KEYS.keeper("k1"), "{}")
    for forbidden in (KEYS.clusterdata, KEYS.leader, KEYS.proxy("p1"), "/pgha/other/clusterdata"):
        with pytest.raises(StoreError, match="permission denied"):
            keeper.put(forbidden, "{}")
    operator = store_as(secure_etcd, "operator", passwords)
    operator.put(KEYS.spec, "{}")
    with pytest.raises(StoreError, match="permission denied"):
        operator.put("/pgha/other/spec", "{}")  # another cluster's keys are not its own

    # a watch with a token, and a token the member forgot (restart) is asked for again
    kvs, rev = sentinel.get_prefix(KEYS.base)
    proxy.put(KEYS.proxy("p2"), "{}")
    assert sentinel.wait(KEYS.base, rev, 5)
    secure_etcd.stop()
    secure_etcd.start()
    deadline = time.monotonic() + 15
    while True:
        try:
            assert sentinel.get(KEYS.clusterdata).value == b"{}"
            break
        except StoreError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_a_wrong_password_is_a_clear_error(secure_etcd, passwords):
    ensure_auth(secure_etcd.endpoints, KEYS, "sec", passwords, **secure_etcd.client_tls("operator"))
    wrong = dict(passwords, keeper="not-it")
    with pytest.raises(StoreError, match="etcd authentication of user 'sec-keeper'.*authentication failed"):
        store_as(secure_etcd, "keeper", wrong).get(KEYS.clusterdata)
    with pytest.raises(StoreError, match="root"):
        ensure_auth(secure_etcd.endpoints, KEYS, "sec", dict(passwords, root="guess"),
                    **secure_etcd.client_tls("operator"))


def test_a_cluster_on_a_secure_store_fails_over_with_a_user_per_component(cluster_factory):
    """Keepers, sentinels, the proxy and pghactl each log in as their own etcd user over TLS with a
    client certificate; a crash failover works as on a plain store."""
    import signal

    from test_integration_ha import healthy_cluster, primary_of, read_values, write_row

    c = cluster_factory(keepers=2, sentinels=2, proxies=1, secure_store=True)
    assert c.etcd.endpoints.startswith("https://")
    st = c.wait_for(healthy_cluster(2), timeout=120, what="a healthy cluster on a secure store")
    old = primary_of(st)
    write_row(c, "before")
    c.keepers[old].signal_tree(signal.SIGKILL)
    st = c.wait_for(lambda s: primary_of(s) not in (None, old) and s["cluster"]["transition"] is None
                    and all(p["target"] == primary_of(s) for p in s["proxies"]),
                    timeout=60, what="a new primary after the crash")
    write_row(c, "after")
    assert read_values(c.connect_rw()) == ["before", "after"]
    for name, agent in c.agents.items():
        text = agent.log_text()
        assert "permission denied" not in text, f"{name} was refused something it needs:\n{agent.log_tail()}"
        assert not [p for p in c.store_passwords.values() if p in text], f"a store password in {name}'s log"
