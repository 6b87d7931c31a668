"""The store with TLS and etcd authentication: a real etcd on HTTPS that wants client certificates,
and a user per component allowed only what the component writes (pgha.store.auth)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

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

    from test_integration_ha import healthy_cluster, primary_of, read_values, wait_value_on, write_row

    c = cluster_factory(keepers=2, sentinels=2, proxies=1, secure_store=True)
    assert c.etcd.endpoints.startswith("https://")
    st = c.wait_for(healthy_cluster(2), timeout=120, what="a healthy cluster on a secure store")
    old = primary_of(st)
    write_row(c, "before")
    # asynchronous replication: a commit the primary acknowledged but had not sent when it was
    # killed is lost by design, so the row must be on the replica before the crash
    wait_value_on(c, next(u for u in c.keepers if u != old), "before")
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


# ------------------------------------------------------------------ pghactl store-auth


def pghactl(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """pghactl next to this Python, with no PGHA_* variables of ours but ``env``."""
    path = os.path.join(os.path.dirname(sys.executable), "pghactl")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PGHA_")}
    full_env.update(env or {})
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          stdin=subprocess.DEVNULL)


def password_dir(tmp_path: Path, passwords: dict[str, str]) -> Path:
    d = tmp_path / "store-passwords"
    d.mkdir(exist_ok=True)
    for name, password in passwords.items():
        (d / name).write_text(password + "\n")
        (d / name).chmod(0o600)
    return d


def store_auth_args(etcd: EtcdCluster, directory: Path, *extra: str) -> list[str]:
    tls = etcd.client_tls("operator")
    return ["--cluster-name", "sec", "--store-endpoints", etcd.endpoints, "--store-ca-file", tls["ca_file"],
            "--store-cert-file", tls["cert_file"], "--store-key-file", tls["key_file"],
            "store-auth", "--password-dir", str(directory), *extra]


# a store user of the environment must not be used: store-auth logs in as root itself
NOT_THIS_USER = {"PGHA_STORE_USER": "sec-operator", "PGHA_STORE_PASSWORD_FILE": "/nonexistent/password"}


def assert_no_password(out: subprocess.CompletedProcess[str], *passwords: str) -> None:
    assert "Traceback" not in out.stderr
    for password in passwords:
        assert password not in out.stdout + out.stderr, "a password in pghactl's output"


def test_store_auth_command_turns_authentication_on_once(secure_etcd, passwords, tmp_path):
    d = password_dir(tmp_path, passwords)
    first = pghactl(*store_auth_args(secure_etcd, d), env=NOT_THIS_USER)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    for component in COMPONENTS:
        assert f"added user sec-{component}" in lines and f"added role sec-{component}" in lines
    assert "added user root" in lines and lines[-1] == "authentication enabled"
    assert_no_password(first, *passwords.values())
    keeper = store_as(secure_etcd, "keeper", passwords)
    keeper.put(KEYS.keeper("k1"), "{}")  # each user logs in with its password file's
    with pytest.raises(StoreError, match="permission denied"):
        keeper.put(KEYS.clusterdata, "{}")

    again = pghactl(*store_auth_args(secure_etcd, d), env=NOT_THIS_USER)
    assert (again.returncode, again.stdout, again.stderr) == (0, "nothing to change\n", "")

    (d / "proxy").write_text("a new proxy password\n")  # a changed password is set, the others left alone
    changed = pghactl(*store_auth_args(secure_etcd, d))
    assert (changed.returncode, changed.stdout) == (0, "changed the password of sec-proxy\n"), changed.stderr
    assert_no_password(changed, "a new proxy password", *passwords.values())


def test_store_auth_command_with_a_wrong_root_password_is_a_clear_error(secure_etcd, passwords, tmp_path):
    d = password_dir(tmp_path, passwords)
    assert pghactl(*store_auth_args(secure_etcd, d)).returncode == 0
    (d / "root").write_text("guessed-root-password\n")
    out = pghactl(*store_auth_args(secure_etcd, d))
    assert out.returncode == 1 and out.stdout == ""
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "root password" in out.stderr and str(d / "root") in out.stderr
    assert_no_password(out, "guessed-root-password", *passwords.values())


def test_store_auth_command_names_a_missing_password_file(secure_etcd, passwords, tmp_path):
    d = password_dir(tmp_path, {c: p for c, p in passwords.items() if c != "root"})
    out = pghactl(*store_auth_args(secure_etcd, d))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.splitlines() == [f"error: root password file {d / 'root'}: No such file or directory"]
    assert_no_password(out, *passwords.values())
    # without a component's password file there is nothing to turn authentication on for
    (d / "root").write_text(passwords["root"])
    for component in COMPONENTS:
        (d / component).unlink()
    out = pghactl(*store_auth_args(secure_etcd, d))
    assert out.returncode == 1 and "no password file of a component" in out.stderr
    assert store_as(secure_etcd, None, passwords).get(KEYS.clusterdata) is None  # authentication still off


def test_store_auth_command_needs_https_or_store_insecure(tmp_path, passwords):
    d = password_dir(tmp_path, passwords)
    out = pghactl("--cluster-name", "sec", "--store-endpoints", "http://127.0.0.1:1", "store-auth",
                  "--password-dir", str(d))
    assert out.returncode == 1 and "plain HTTP" in out.stderr and "--store-insecure" in out.stderr
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
    down = pghactl("--cluster-name", "sec", "--store-endpoints", "http://127.0.0.1:1", "--store-insecure", "true",
                   "store-auth", "--password-dir", str(d))
    assert down.returncode == 1 and down.stderr.startswith("error: store: store unreachable")
    assert len(down.stderr.splitlines()) == 1
    assert_no_password(down, *passwords.values())


def test_store_auth_command_waits_for_a_store_that_starts_later(tmp_path, passwords):
    etcd = EtcdCluster(tmp_path / "etcd", 1, tls=True)  # its ports and certificates, not started yet
    d = password_dir(tmp_path, passwords)
    path = os.path.join(os.path.dirname(sys.executable), "pghactl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGHA_")}
    proc = subprocess.Popen([path, *store_auth_args(etcd, d, "--wait", "60")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL)
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()
        etcd.start()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        etcd.stop()
    assert proc.returncode == 0, stderr
    assert stderr.count("does not answer yet") == 1 and "waiting up to 60s" in stderr
    assert stdout.splitlines()[-1] == "authentication enabled"
    assert not [p for p in passwords.values() if p in stdout + stderr]
