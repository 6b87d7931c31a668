"""End-to-end HA behaviour with real etcd, real PostgreSQL 15 and the agents as processes on loopback."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import psycopg2
import pytest

from pgha.drill import close_quietly, missing

pytestmark = pytest.mark.integration


def primary_of(st: dict[str, Any]) -> str | None:
    return st["cluster"]["primary"]


def healthy_cluster(n: int = 3):
    def pred(st: dict[str, Any]) -> bool:
        c = st["cluster"]
        if c["phase"] != "normal" or not c["primary"] or c["transition"]:
            return False
        ks = {k["uid"]: k for k in st["keepers"]}
        if len(ks) < n or not all(k["healthy"] for k in ks.values()):
            return False
        if ks[c["primary"]]["role"] != "primary":
            return False
        replicas = [k for u, k in ks.items() if u != c["primary"]]
        return all(k["role"] == "replica" and k["streaming"] for k in replicas) and \
            all(p["target"] == c["primary"] for p in st["proxies"])
    return pred


def write_row(cluster, value: str, table: str = "t") -> None:
    conn = cluster.connect_rw()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (id serial primary key, v text)")
            cur.execute(f"INSERT INTO {table} (v) VALUES (%s)", (value,))
    finally:
        conn.close()


def write_row_retrying(cluster, value: str, timeout: float = 60) -> None:
    """Write like a client that retries: right after a keeper restart the status in the store can
    still be the previous process's while PostgreSQL is starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            write_row(cluster, value)
            return
        except psycopg2.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def read_values(conn, table: str = "t") -> list[str]:
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {table} ORDER BY id")
            return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


def wait_value_on(cluster, uid: str, value: str, timeout: float = 30, table: str = "t") -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if value in read_values(cluster.connect_keeper(uid), table):
                return
        except psycopg2.Error as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{value!r} never appeared on {uid}: {last}\n{cluster.logs_tail()}")


def test_init_write_read_and_crash_failover(cluster_factory) -> None:
    c = cluster_factory()
    st = c.wait_for(healthy_cluster(), timeout=120, what="a healthy 3-keeper cluster")
    old = primary_of(st)
    write_row(c, "before")
    for uid in c.keepers:
        if uid != old:
            wait_value_on(c, uid, "before")
    # read-only port reaches a replica, once the sentinel has seen them stream (the primary's report)
    # and every proxy follows the read-only targets
    c.wait_for(lambda s: s["cluster"]["ro_targets"]
               and all(p["generation"] >= s["cluster"]["proxy_generation"] for p in s["proxies"]),
               timeout=60, what="read-only targets that every proxy follows")
    ro = c.connect_ro()
    with ro.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone()[0] is True
    ro.close()

    # SIGKILL the primary's keeper and its postgres: both ports refuse, which the leading sentinel
    # takes for a crash (pgha.sentinel.crash) and fails over without waiting for the lease's TTL
    c.keepers[old].signal_tree(signal.SIGKILL)
    st = c.wait_for(lambda s: primary_of(s) not in (None, old) and s["cluster"]["transition"] is None
                    and any(p["target"] == primary_of(s) for p in s["proxies"]),
                    timeout=60, what="a new primary after the crash")
    new = primary_of(st)
    logs = sentinel_logs(c)
    assert f"keeper {old} (the primary) crashed: PostgreSQL at" in logs and "revoking its lease" in logs
    assert f"primary {old} failed (crashed: PostgreSQL at" in logs, logs[-3000:]
    conn = c.connect_rw()
    assert "before" in read_values(conn)
    write_row(c, "after")

    # the old primary comes back as a replica and receives new rows
    c.keepers[old].start()
    c.wait_for(healthy_cluster(), timeout=120, what="old primary rejoined as replica")
    st = c.status()
    assert primary_of(st) == new
    wait_value_on(c, old, "after")


def sentinel_logs(c) -> str:
    return "\n".join(s.log_text() for s in c.sentinels.values())


class Writer:
    """A client writing one row every ``interval`` through the proxy, recording each acknowledgement."""

    def __init__(self, cluster, interval: float = 0.02, table: str = "w") -> None:
        self.cluster = cluster
        self.interval = interval
        self.table = table
        self.acked: list[int] = []
        self.ack_times: list[float] = []
        self.errors = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> "Writer":
        conn = self.cluster.connect_rw()
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id bigint primary key, at timestamptz default now())")
        conn.close()
        self.thread.start()
        return self

    def run(self) -> None:
        conn = None
        n = 0
        while not self.stop_event.is_set():
            try:
                if conn is None:
                    conn = self.cluster.connect_rw(connect_timeout=2)
                    conn.autocommit = True
                n += 1
                with conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (n,))
                self.acked.append(n)
                self.ack_times.append(time.monotonic())
            except psycopg2.Error:
                self.errors += 1
                close_quietly(conn)
                conn = None
                time.sleep(0.05)
                continue
            time.sleep(self.interval)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)

    def max_gap(self) -> float:
        gaps = [b - a for a, b in zip(self.ack_times, self.ack_times[1:])]
        return max(gaps) if gaps else 0.0

    def missing_on(self, conn) -> list[int]:
        return missing(conn, self.table, self.acked)


def test_freeze_primary_fails_over_and_rejoins(cluster_factory) -> None:
    c = cluster_factory()
    st = c.wait_for(healthy_cluster(), timeout=120, what="a healthy cluster")
    old = primary_of(st)
    frozen_port = c.keeper_pg_port[old]
    c.keepers[old].signal_tree(signal.SIGSTOP)
    try:
        st = c.wait_for(lambda s: primary_of(s) not in (None, old) and s["cluster"]["transition"] is None
                        and all(p["target"] == primary_of(s) for p in s["proxies"]),
                        timeout=60, what="failover away from the frozen primary")
        new = primary_of(st)
        # the proxy routes to the new primary, never to the frozen one
        for _ in range(5):
            conn = c.connect_rw()
            with conn.cursor() as cur:
                cur.execute("SELECT inet_server_port(), pg_is_in_recovery()")
                port, in_recovery = cur.fetchone()
            conn.close()
            assert port != frozen_port and port == c.keeper_pg_port[new] and in_recovery is False
        write_row(c, "while-frozen")
    finally:
        c.keepers[old].signal_tree(signal.SIGCONT)
    # a frozen machine answers no connection with a refusal: the lease path, not the prober's
    assert "crashed:" not in sentinel_logs(c) and "its lease expired" in sentinel_logs(c)
    # it fences itself on resume (its lease is gone) and rejoins as a replica
    c.wait_for(healthy_cluster(), timeout=120, what="frozen primary rejoined as a replica")
    assert primary_of(c.status()) == new
    wait_value_on(c, old, "while-frozen")
    assert "FENCING" in c.keepers[old].log_text() or "stopped" in c.keepers[old].log_text()


def test_switchover_with_continuous_writer(cluster_factory) -> None:
    c = cluster_factory()
    st = c.wait_for(healthy_cluster(), timeout=120, what="a healthy cluster")
    old = primary_of(st)
    target = sorted(u for u in c.keepers if u != old)[0]
    w = Writer(c).start()
    time.sleep(1.0)
    out = c.ctl("switchover", "--to", target, timeout=90)
    assert "switchover done" in out.stdout
    time.sleep(1.0)
    w.stop()
    st = c.wait_for(healthy_cluster(), timeout=120, what="old primary rejoined after the switchover")
    assert primary_of(st) == target
    assert w.acked, "the writer never succeeded"
    assert w.missing_on(c.connect_rw()) == []
    # refused switchovers say why and change nothing
    bad = c.ctl("switchover", "--to", target, check=False)
    assert bad.returncode != 0 and "already the primary" in bad.stderr
    bad = c.ctl("switchover", "--to", "nosuchkeeper", check=False)
    assert bad.returncode != 0 and "no keeper nosuchkeeper" in bad.stderr


def test_synchronous_crash_failover_loses_no_acknowledged_write(cluster_factory) -> None:
    c = cluster_factory(spec={"synchronous_replication": True})
    st = c.wait_for(lambda s: healthy_cluster()(s) and len(s["cluster"]["synchronous_standbys"]) == 1
                    and any(k["sync_candidate"] for k in s["keepers"]),
                    timeout=120, what="a healthy synchronous cluster with a failover candidate")
    old = primary_of(st)
    w = Writer(c).start()
    time.sleep(2.0)
    c.keepers[old].signal_tree(signal.SIGKILL)
    st = c.wait_for(lambda s: primary_of(s) not in (None, old) and s["cluster"]["transition"] is None
                    and all(p["target"] == primary_of(s) for p in s["proxies"]),
                    timeout=60, what="a new primary after the crash")
    time.sleep(3.0)
    w.stop()
    assert len(w.acked) > 50
    missing = w.missing_on(c.connect_rw())
    assert missing == [], f"acknowledged writes lost: {missing[:20]}"
    c.keepers[old].start()
    c.wait_for(healthy_cluster(), timeout=120, what="old primary rejoined")


def test_proxy_stops_listening_without_store_and_resumes(cluster_factory) -> None:
    import socket

    c = cluster_factory(keepers=1, sentinels=1)
    c.wait_for(healthy_cluster(1), timeout=120, what="a one-keeper cluster")
    port = next(iter(c.proxy_port.values()))
    write_row(c, "x")
    c.etcd.stop()

    def listening() -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", port)) == 0

    deadline = time.monotonic() + 30
    while listening() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not listening(), "the proxy kept listening with the store down"
    c.etcd.start()
    c.wait_for(healthy_cluster(1), timeout=90, what="the cluster back after the store returned")
    deadline = time.monotonic() + 30
    while not listening() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert listening()
    # the keeper fenced itself while the store was away and restarts PostgreSQL now
    write_row_retrying(c, "y")
    assert "FENCING" in c.keepers["keeper0"].log_text()


def test_leading_sentinel_dies_with_the_primary(cluster_factory) -> None:
    c = cluster_factory()
    st = c.wait_for(healthy_cluster(), timeout=120, what="a healthy cluster")
    old = primary_of(st)
    leader = next(s["uid"] for s in st["sentinels"] if s["leader"])
    c.sentinels[leader].kill(signal.SIGKILL)
    c.keepers[old].signal_tree(signal.SIGKILL)
    st = c.wait_for(lambda s: primary_of(s) not in (None, old) and s["cluster"]["transition"] is None
                    and all(p["target"] == primary_of(s) for p in s["proxies"])
                    and any(x["leader"] and x["uid"] != leader for x in s["sentinels"]),
                    timeout=90, what="the other sentinel took over and failed over")
    write_row(c, "after-both-died")
    c.sentinels[leader].start()
    c.keepers[old].start()
    c.wait_for(healthy_cluster(), timeout=120, what="everything back")
    wait_value_on(c, old, "after-both-died")


def test_postgres_never_outlives_its_keeper(cluster_factory) -> None:
    import os

    c = cluster_factory(keepers=1, sentinels=1, proxies=1)
    c.wait_for(healthy_cluster(1), timeout=120, what="a one-keeper cluster")
    agent = c.keepers["keeper0"]
    pidfile = c.tmp / "keeper0" / "data" / "postgres" / "postmaster.pid"
    postmaster = int(pidfile.read_text().splitlines()[0])
    assert postmaster != agent.proc.pid
    os.kill(agent.proc.pid, signal.SIGKILL)  # only the keeper, not its PostgreSQL
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{postmaster}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{postmaster}"), "PostgreSQL kept running without its keeper (unfenced)"
    agent.start()
    c.wait_for(healthy_cluster(1), timeout=120, what="keeper and PostgreSQL back")
    write_row_retrying(c, "back")


def test_promoted_primary_needs_no_restart(cluster_factory) -> None:
    c = cluster_factory(keepers=2, sentinels=1)
    st = c.wait_for(healthy_cluster(2), timeout=120, what="a two-keeper cluster")
    old = primary_of(st)
    target = next(u for u in c.keepers if u != old)
    c.ctl("switchover", "--to", target, timeout=90)
    st = c.wait_for(healthy_cluster(2), timeout=120, what="the old primary back as a replica")
    assert not any(k["pending_restart"] for k in st["keepers"]), st["keepers"]


def test_drained_synchronous_standby_can_stop_without_stalling_commits(cluster_factory) -> None:
    c = cluster_factory(spec={"synchronous_replication": True})
    st = c.wait_for(lambda s: healthy_cluster()(s) and len(s["cluster"]["synchronous_standbys"]) == 1,
                    timeout=120, what="a healthy synchronous cluster")
    standby = st["cluster"]["synchronous_standbys"][0]
    out = c.ctl("drain", standby, timeout=60)
    assert "is drained: not a synchronous standby" in out.stdout, out.stdout
    st = c.status()
    assert standby not in st["cluster"]["synchronous_standbys"] and st["cluster"]["synchronous_standbys"]
    assert standby not in st["cluster"]["ro_targets"]
    assert next(k for k in st["keepers"] if k["uid"] == standby)["drained"]
    c.keepers[standby].stop()
    # Had the stopped keeper stayed a synchronous standby, this commit would wait until it is back.
    done = threading.Event()
    errors: list[BaseException] = []

    def commit() -> None:
        try:
            write_row(c, "after-drain")
        except BaseException as exc:  # reported below
            errors.append(exc)
        done.set()

    threading.Thread(target=commit, daemon=True).start()
    assert done.wait(30), "a commit stalled with the drained synchronous standby stopped"
    assert not errors, errors
    c.keepers[standby].start()
    c.wait_for(healthy_cluster(), timeout=120, what="the drained keeper back as a streaming replica")
    out = c.ctl("drain", standby, "--undo", timeout=60)
    assert "no longer drained" in out.stdout
    assert not next(k for k in c.status()["keepers"] if k["uid"] == standby)["drained"]
    # the primary cannot be drained
    bad = c.ctl("drain", primary_of(c.status()), check=False)
    assert bad.returncode != 0 and "switch over first" in bad.stderr


def test_a_hanging_store_fences_the_primary_before_its_lease_can_expire(cluster_factory) -> None:
    """A store that hangs (every member SIGSTOPped: connections open, nothing answers, as behind a
    partition) must not delay the keeper's fencing. The last write the primary acknowledges comes
    before the server could let the keeper's lease expire (its TTL after the last renewal it saw),
    which is when a sentinel may promote another primary. Before the fence timer, the renewal
    blocked for 2 s per endpoint and fencing came after it: 6.5 s after the last renewal."""
    c = cluster_factory(keepers=1, sentinels=1, proxies=1, etcd_members=3)
    c.wait_for(healthy_cluster(1), timeout=120, what="a one-keeper cluster on three etcd members")
    ttl = 3  # the lease TTL: fail_interval, 3s by default
    conn = c.connect_keeper("keeper0")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE fence_probe (id serial primary key, at timestamptz default now())")
    for m in c.etcd.members:
        m.signal_tree(signal.SIGSTOP)
    frozen = time.monotonic()  # the store saw no renewal after this
    last_ack = frozen
    try:
        while time.monotonic() - frozen < 3 * ttl:
            try:
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO fence_probe DEFAULT VALUES")
                last_ack = time.monotonic()
            except psycopg2.Error:
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"the primary still acknowledged writes {3 * ttl}s after the store froze")
    finally:
        for m in c.etcd.members:
            m.signal_tree(signal.SIGCONT)
        conn.close()
    assert last_ack - frozen < ttl, (f"the primary acknowledged a write {last_ack - frozen:.2f}s after the store froze, "
                                     f"when its lease (ttl {ttl}s) could already have expired")
    assert "FENCING" in c.keepers["keeper0"].log_text()
    c.wait_for(healthy_cluster(1), timeout=120, what="the cluster back after the store thawed")
    write_row_retrying(c, "after-thaw")


def test_a_primary_cut_off_from_the_store_is_fenced_and_rejoins_without_acting_on_old_data(cluster_factory) -> None:
    """The primary's keeper loses the store (its requests hang, as behind a partition) while the
    rest of the cluster fails over; a client keeps writing to that primary directly. It must stop
    acknowledging before the new primary is promoted, and after the heal rejoin as a replica
    without running as primary again. (The multi-host store_minority drill covers the case of a
    keeper whose local etcd member answers but has lost quorum.)"""
    from harness import Blackhole

    c = cluster_factory(keepers=3, sentinels=1, proxies=1, start=False)
    holes = [Blackhole(p) for p in c.etcd.client_ports]
    cut = "keeper0"  # reaches the store only through the holes
    c.keepers[cut].argv += ["--store-endpoints", ",".join(f"http://127.0.0.1:{h.port}" for h in holes)]
    try:
        c.start()
        st = c.wait_for(healthy_cluster(3), timeout=120, what="a healthy cluster")
        if primary_of(st) != cut:
            c.ctl("switchover", "--to", cut, timeout=90)
            c.wait_for(lambda s: healthy_cluster(3)(s) and primary_of(s) == cut, timeout=120,
                       what=f"{cut} primary after a switchover")
        direct = c.connect_keeper(cut)
        direct.autocommit = True
        with direct.cursor() as cur:
            cur.execute("CREATE TABLE cut_probe (id serial primary key, at timestamptz default now())")
        acks: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            conn = direct
            while not stop.is_set():
                try:
                    if conn is None:
                        conn = c.connect_keeper(cut, connect_timeout=1)
                        conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO cut_probe DEFAULT VALUES")
                    acks.append(time.monotonic())
                except psycopg2.Error:
                    conn = None
                    time.sleep(0.05)
                stop.wait(0.02)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        time.sleep(1)
        for h in holes:
            h.cut()
        st = c.wait_for(lambda s: primary_of(s) not in (None, cut) and s["cluster"]["transition"] is None,
                        timeout=90, what="a new primary while the old one is cut off")
        promoted_at = time.monotonic()
        time.sleep(2)
        for h in holes:
            h.heal()
        c.wait_for(lambda s: any(k["uid"] == cut and k["role"] == "replica" and k["streaming"] for k in s["keepers"]),
                   timeout=120, what="the old primary back as a streaming replica")
        time.sleep(1)
        stop.set()
        t.join(timeout=10)
        after = [a for a in acks if a > promoted_at - 0.5]
        assert not after, (f"the old primary {cut} acknowledged {len(after)} direct write(s) around or after the "
                           f"promotion of {primary_of(st)}")
        log = c.keepers[cut].log_text()
        assert "FENCING" in log
        tail = log[log.rindex("FENCING"):]
        assert "start primary" not in tail and "promote:" not in tail, tail[-2000:]
    finally:
        for h in holes:
            h.close()


def test_silent_sockets_cost_no_backend_and_the_read_only_fallback_refuses_writes(cluster_factory) -> None:
    """300 sockets that never speak hold file descriptors, not PostgreSQL backends (max_connections is
    100): a real client still connects and writes. With no replica, the read-only port's sessions on
    the primary are read-only."""
    import socket

    c = cluster_factory(keepers=1, sentinels=1)
    st = c.wait_for(healthy_cluster(1), timeout=120, what="a one-keeper cluster")
    port = c.proxy_port["proxy0"]
    silent = []
    try:
        for _ in range(300):
            silent.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        started = time.monotonic()
        write_row(c, "past-the-flood")
        elapsed = time.monotonic() - started
        print(f"connected and wrote through the proxy in {elapsed:.3f}s with 300 silent sockets open")
        direct = c.connect_keeper(primary_of(st))
        with direct.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            backends = cur.fetchone()[0]
        direct.close()
        assert backends < 10, f"{backends} client backends: the silent sockets opened PostgreSQL connections"
    finally:
        for s in silent:
            s.close()

    # libpq's default sslmode=prefer: the proxy declines the client's TLS on the fallback and speaks
    # TLS to the primary itself (which takes TCP logins only over TLS)
    ro = c.connect_ro(sslmode="prefer")
    try:
        with ro.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'), "
                        "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())")
            assert cur.fetchone() == (False, "on", True)  # the primary, read-only, over the proxy's TLS
        ro.rollback()
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            with ro.cursor() as cur:
                cur.execute("INSERT INTO t (v) VALUES ('through-the-read-only-port')")
    finally:
        ro.close()
    with pytest.raises(psycopg2.OperationalError, match="does not support SSL"):
        c.connect_ro(sslmode="require")
    assert "through-the-read-only-port" not in read_values(c.connect_rw())


def test_idle_connections_to_the_primary_keepers_api_cause_no_failover(cluster_factory) -> None:
    import socket
    import urllib.request

    c = cluster_factory(keepers=2, sentinels=1, proxies=0)
    st = c.wait_for(healthy_cluster(2), timeout=120, what="a two-keeper cluster")
    primary = primary_of(st)
    port = c.keeper_api_port[primary]
    idle = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        slowest = 0.0
        deadline = time.monotonic() + 8  # more than the keeper's lease (3 s) and its expiry
        while time.monotonic() < deadline:
            started = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                assert resp.status == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.5)
        print(f"slowest /health with 2000 idle connections: {slowest:.3f}s")
    finally:
        for s in idle:
            s.close()
    st = c.status()
    assert primary_of(st) == primary and st["cluster"]["transition"] is None, st["cluster"]
    assert "FENCING" not in c.keepers[primary].log_text()
