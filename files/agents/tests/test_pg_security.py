"""PostgreSQL as the keepers set it up: TLS with certificates from the cluster's CA, logins over TCP
only with TLS, no superuser over TCP, an application role with its own database, and pg_rewind
through the replication role instead of the superuser."""

from __future__ import annotations

import signal

import psycopg2
import pytest
from test_integration_ha import healthy_cluster, primary_of, read_values, wait_value_on, write_row

from harness import PghaCluster, running_as_root

pytestmark = [pytest.mark.integration, pytest.mark.needs("etcd")]


def refused(connect) -> str:
    with pytest.raises(psycopg2.OperationalError) as info:
        connect().close()
    return str(info.value)


def test_tls_logins_roles_and_a_rewind_without_the_superuser(cluster_factory) -> None:
    c: PghaCluster = cluster_factory()
    st = c.wait_for(healthy_cluster(), timeout=120, what="a healthy 3-keeper cluster")
    old = primary_of(st)
    replica = next(u for u in c.keepers if u != old)
    assert all(k["pg_tls"] for k in st["keepers"])  # what upgrade.yml checks before it rolls

    # the application role writes through the proxy, TLS end to end (the proxy passes it through)
    write_row(c, "before")
    conn = c.connect_rw()
    with conn.cursor() as cur:
        cur.execute("SELECT ssl, current_user, current_database(), (SELECT rolsuper FROM pg_roles "
                    "WHERE rolname = current_user) FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert cur.fetchone() == (True, "app", "app", False)
    conn.close()

    # without TLS, as the superuser (right password), or as the replication role outside its
    # database: refused by pg_hba, on the primary and on a replica
    for uid in (old, replica):
        assert "no encryption" in refused(lambda u=uid: c.connect_keeper(u, sslmode="disable"))
        msg = refused(lambda u=uid: c.connect_keeper(u, user="postgres", password=c.su_password, dbname="postgres"))
        assert "rejects connection" in msg and '"postgres"' in msg
        msg = refused(lambda u=uid: c.connect_keeper(u, user="repluser", password=c.repl_password, dbname="app"))
        assert "rejects connection" in msg
    # a client that checks the certificate against another CA gets nowhere
    from pgha import pki

    stranger = c.tmp / "stranger-ca.crt"
    stranger.write_bytes(pki.make_ca("someone else").cert_pem)
    assert "certificate verify failed" in refused(lambda: c.connect_rw(sslrootcert=str(stranger)))

    # the replicas stream over TLS, as the replication role
    su = c.connect_superuser(old)
    with su.cursor() as cur:
        cur.execute("SELECT r.application_name, s.ssl, r.usename FROM pg_stat_replication r "
                    "JOIN pg_stat_ssl s USING (pid) ORDER BY 1")
        rows = cur.fetchall()
        cur.execute("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = 'repluser'")
        assert cur.fetchone() == (False, True)
    su.close()
    assert sorted(r[0] for r in rows) == sorted(u for u in c.keepers if u != old)
    assert all(r[1] is True and r[2] == "repluser" for r in rows), rows

    # a crashed primary comes back through pg_rewind as the replication role
    c.keepers[old].signal_tree(signal.SIGKILL)
    st = c.wait_for(lambda s: primary_of(s) not in (None, old) and s["cluster"]["transition"] is None,
                    timeout=60, what="a new primary after the crash")
    write_row(c, "after")
    c.keepers[old].start()
    c.wait_for(healthy_cluster(), timeout=120, what="the old primary rejoined as a replica")
    wait_value_on(c, old, "after")
    log = c.keepers[old].log_text()
    assert "pg_rewind from" in log and "pg_rewind failed" not in log, log[-3000:]
    assert read_values(c.connect_rw()) == ["before", "after"]
    c.check_logs()


def test_without_tls_the_keepers_say_so_and_still_keep_the_superuser_off_tcp(cluster_factory) -> None:
    c: PghaCluster = cluster_factory(keepers=1, sentinels=1, pg_tls=False)
    st = c.wait_for(healthy_cluster(1), timeout=120, what="a one-keeper cluster")
    uid = primary_of(st)
    assert st["keepers"][0]["pg_tls"] is False
    write_row(c, "plain")
    assert "PostgreSQL without TLS" in c.keepers[uid].log_text()
    msg = refused(lambda: c.connect_keeper(uid, user="postgres", password=c.su_password, dbname="postgres"))
    assert "rejects connection" in msg


def served_certificate(port: int, ca_file: str) -> bytes:
    """The certificate PostgreSQL on 127.0.0.1:``port`` serves (after an SSLRequest), checked against the CA."""
    import socket
    import ssl
    import struct

    ctx = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert(binary_form=True)


def test_a_renewed_certificate_is_served_without_a_restart(cluster_factory) -> None:
    import os
    import time

    from pgha import pki

    c: PghaCluster = cluster_factory(keepers=1, sentinels=1, proxies=0)
    st = c.wait_for(healthy_cluster(1), timeout=120, what="a one-keeper cluster")
    uid = primary_of(st)
    port = c.keeper_pg_port[uid]
    before = served_certificate(port, c.pg_ca_file)
    pid = c.keepers[uid].proc.pid
    key_pem, cert_pem = pki.make_certificate(c._pg_ca, dns=("localhost",), ips=("127.0.0.1",), server=True)
    for name, data in ((f"{uid}.key", key_pem), (f"{uid}.crt", cert_pem)):  # as the roles' copy does
        tmp = c.pg_pki / (name + ".new")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o600)
        if running_as_root():
            os.chown(tmp, c.uid, c.gid)
        os.replace(tmp, c.pg_pki / name)
    deadline = time.monotonic() + 30
    while served_certificate(port, c.pg_ca_file) == before:
        assert time.monotonic() < deadline, "PostgreSQL still serves the old certificate\n" + c.logs_tail()
        time.sleep(0.2)
    assert "TLS certificate files changed: PostgreSQL reloaded them" in c.keepers[uid].log_text()
    assert c.keepers[uid].proc.pid == pid and primary_of(c.status()) == uid  # no restart, no failover
