"""Bad input gets a clear error and loses nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from pgha import spec as specmod
from pgha.model import ClusterData, Command, FormatError, KeeperStatus, ProxyStatus, SentinelStatus

AGENTS = ("pgha-keeper", "pgha-sentinel", "pgha-proxy", "pghactl")


def run(prog: str, *args: str, env: dict[str, str] | None = None, user: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    path = os.path.join(os.path.dirname(sys.executable), prog)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PGHA_")}
    full_env.update(env or {})
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          stdin=subprocess.DEVNULL, user=user)


# ------------------------------------------------------------------------------------ flags


@pytest.mark.parametrize("prog", AGENTS)
def test_help_explains(prog: str) -> None:
    out = run(prog, "--help")
    assert out.returncode == 0
    assert "--cluster-name" in out.stdout and "PGHA_CLUSTER_NAME" in out.stdout


@pytest.mark.parametrize("prog", AGENTS)
def test_unknown_flag_is_named(prog: str) -> None:
    out = run(prog, "--cluster-name", "x", "--no-such-flag", "status" if prog == "pghactl" else "--uid=a")
    assert out.returncode == 2
    assert "--no-such-flag" in out.stderr


@pytest.mark.parametrize("prog", ["pgha-sentinel", "pgha-proxy", "pghactl"])  # the keeper opens it the same way
def test_plain_http_endpoints_need_store_insecure(prog: str) -> None:
    extra = ["status"] if prog == "pghactl" else []
    out = run(prog, "--cluster-name", "x", "--store-endpoints", "http://127.0.0.1:1", *extra)
    assert out.returncode == 1, out.stderr
    assert "plain HTTP" in out.stderr and "--store-insecure" in out.stderr and "Traceback" not in out.stderr


def test_flags_from_environment() -> None:
    out = run("pghactl", "status", env={"PGHA_CLUSTER_NAME": "x", "PGHA_STORE_ENDPOINTS": "http://127.0.0.1:1",
                                        "PGHA_STORE_INSECURE": "true", "PGHA_STORE_TIMEOUT": "0.5"})
    assert out.returncode == 1
    assert "store" in out.stderr and "127.0.0.1:1" in out.stderr  # it used the endpoint from the environment


def test_store_down_is_a_clear_error() -> None:
    out = run("pghactl", "--cluster-name", "x", "--store-endpoints", "http://127.0.0.1:1,http://127.0.0.1:2",
              "--store-insecure", "true", "status")
    assert out.returncode == 1
    assert "store unreachable" in out.stderr and "Traceback" not in out.stderr


def test_malformed_endpoint() -> None:
    out = run("pghactl", "--cluster-name", "x", "--store-endpoints", "etcd:2379", "status")
    assert out.returncode != 0 and "invalid store endpoint" in out.stderr


# ------------------------------------------------------------------------------------ spec


@pytest.mark.parametrize("doc,fragment", [
    ({"sleep_intervall": 1}, "sleep_intervall"),
    ({"fail_interval": "soon"}, "fail_interval"),
    ({"fail_interval": "0.5s"}, "fail_interval"),
    ({"min_synchronous_standbys": 3}, "min_synchronous_standbys"),
    ({"max_synchronous_standbys": 0}, "max_synchronous_standbys"),
    ({"proxy_check_interval": "5s", "proxy_timeout": "2s"}, "proxy_check_interval"),
    ({"pg_parameters": {"port": "1"}}, "pg_parameters.port"),
    ({"pg_parameters": {"work_mem": ["x"]}}, "pg_parameters.work_mem"),
    ({"pg_hba": ["host all all 0.0.0.0/0 md5\nlocal all all trust"]}, "pg_hba"),
    ({"init_mode": "restore"}, "init_mode"),
    ({"pitr": {}}, "pitr: only with init_mode"),
    ({"replica_create_method": "rsync"}, "replica_create_method"),
    ({"init_mode": "pitr", "pitr": "yesterday"}, "pitr: expected an object"),
    ({"init_mode": "pitr", "pitr": {"target": "x"}}, "pitr: unknown key"),
    ({"init_mode": "pitr", "pitr": {"target_time": "2026-12-01 10:00:00"}}, "has no time zone"),
    ({"init_mode": "pitr", "pitr": {"target_time": "last tuesday"}}, "pitr.target_time: cannot read"),
    ({"init_mode": "pitr", "pitr": {"target_time": "2026-12-01 10:00+00", "target_name": "x"}}, "give one target"),
    ({"init_mode": "pitr", "pitr": {"target_lsn": "0/3'; DROP"}}, "pitr.target_lsn"),
    ({"init_mode": "pitr", "pitr": {"target_name": "a'b"}}, "pitr.target_name"),
    ({"init_mode": "pitr", "pitr": {"backup": "latest"}}, "pitr.backup"),
    ({"init_mode": "pitr", "pitr": {"stanza": "../x"}}, "pitr.stanza"),
    ({"init_mode": "pitr", "pitr": {"replaces": "c0"}}, "pitr.replaces"),
    ({"init_mode": "pitr", "pitr": {"target_time": 1764756900}}, "pitr.target_time: expected a string"),
    ({"pg_parameters": {"recovery_target_time": "2026-12-01 10:00+00"}}, "pg_parameters.recovery_target_time"),
    ({"init_mode": "existing"}, "existing_keeper"),
    ({"synchronous_replication": "yes"}, "synchronous_replication"),
    ([1, 2], "spec"),
    # the spec cannot make PostgreSQL run a command, load code, log passwords or loosen authentication
    ({"pg_parameters": {"archive_command": "sh -c 'id > /tmp/x'"}}, "pg_parameters.archive_command"),
    ({"pg_parameters": {"archive_cleanup_command": "rm -rf /"}}, "pg_parameters.archive_cleanup_command"),
    ({"pg_parameters": {"recovery_end_command": "id"}}, "pg_parameters.recovery_end_command"),
    ({"pg_parameters": {"shared_preload_libraries": "/tmp/evil.so"}}, "pg_parameters.shared_preload_libraries"),
    ({"pg_parameters": {"session_preload_libraries": "x"}}, "pg_parameters.session_preload_libraries"),
    ({"pg_parameters": {"dynamic_library_path": "/tmp"}}, "pg_parameters.dynamic_library_path"),
    ({"pg_parameters": {"ssl_passphrase_command": "id"}}, "pg_parameters.ssl_passphrase_command"),
    ({"pg_parameters": {"log_directory": "/etc"}}, "pg_parameters.log_directory"),
    ({"pg_parameters": {"log_statement": "ddl"}}, "pg_parameters.log_statement"),
    ({"pg_parameters": {"log_statement": "all"}}, "pg_parameters.log_statement"),
    ({"pg_parameters": {"log_min_duration_statement": 0}}, "pg_parameters.log_min_duration_statement"),
    ({"pg_parameters": {"password_encryption": "md5"}}, "pg_parameters.password_encryption"),
    ({"pg_hba": ["host all all 0.0.0.0/0 trust"]}, "method trust"),
    ({"pg_hba": ["hostssl all all 10.0.0.0 255.0.0.0 password"]}, "method password"),
    ({"pg_hba": ["local all all ident"]}, "method ident"),
    ({"pg_hba": ["HOST all all ::/0 Trust  # comment"]}, "method trust"),
    ({"pg_hba": ["host all all"]}, "no authentication method"),
    ({"pg_hba": ["hots all all 0.0.0.0/0 scram-sha-256"]}, "unknown connection type"),
    ({"fail_interval": "10m"}, "fail_interval: at most"),
    ({"proxy_timeout": 600}, "proxy_timeout: at most"),
])
def test_bad_spec_names_the_key(doc: object, fragment: str) -> None:
    with pytest.raises(specmod.SpecError, match=fragment.replace(".", r"\.")):
        specmod.normalize(doc)


def test_safe_settings_are_accepted() -> None:
    s = specmod.normalize({"pg_parameters": {"log_statement": "none", "log_min_duration_statement": "250ms",
                                             "password_encryption": "scram-sha-256", "work_mem": "8MB"},
                           "pg_hba": ["# apps", "", "hostssl app app 10.0.0.0/8 scram-sha-256",
                                      "host all all 10.0.0.0 255.0.0.0 scram-sha-256", "host all all 0.0.0.0/0 reject",
                                      "local all all peer"],
                           "fail_interval": "2m", "proxy_timeout": "120s"})
    assert s.fail_interval == 120.0 and s.pg_parameters["log_min_duration_statement"] == "250ms"


def test_spec_defaults_and_durations() -> None:
    s = specmod.normalize({"sleep_interval": "250ms", "fail_interval": "2s", "proxy_timeout": 4})
    assert s.sleep_interval == 0.25 and s.fail_interval == 2.0 and s.proxy_timeout == 4.0
    assert s.use_pg_rewind is True and s.pg_parameters == {}
    assert specmod.normalize(s) == s  # normalizing is idempotent
    assert specmod.normalize(s.to_dict()) == s  # the stored form parses back to the same spec
    assert json.loads(json.dumps(s.to_dict())) == s.to_dict()
    assert set(s.to_dict()) == set(specmod.DEFAULTS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.fail_interval = 1.0  # type: ignore[misc]


def test_merge_patch_and_update() -> None:
    s = specmod.normalize({"pg_parameters": {"work_mem": "4MB", "maintenance_work_mem": "64MB"}})
    new = specmod.update(s, {"pg_parameters": {"work_mem": None}, "fail_interval": "5s"})
    assert new.pg_parameters == {"maintenance_work_mem": "64MB"} and new.fail_interval == 5.0
    with pytest.raises(specmod.SpecError, match="init_mode"):
        specmod.update(s, {"init_mode": "existing", "existing_keeper": "k1"})
    p = specmod.normalize({"init_mode": "pitr", "pitr": {"target_time": "2026-12-01T10:00:00Z", "backup": None}})
    assert p.pitr == {"target_time": "2026-12-01 10:00:00+00:00"}
    assert specmod.normalize(p.to_dict()) == p  # the stored form reads back the same
    kept = specmod.replace_whole(p, {"fail_interval": "5s"})  # a spec naming no init key keeps the stored ones
    assert kept.init_mode == "pitr" and kept.pitr == p.pitr and kept.fail_interval == 5.0
    with pytest.raises(specmod.SpecError, match="init_mode cannot be changed"):
        specmod.replace_whole(p, {"init_mode": "new"})
    with pytest.raises(specmod.SpecError, match="pitr cannot be changed"):
        specmod.update(p, {"pitr": {"target_time": "2026-12-01 11:00:00+00"}})


# ------------------------------------------------------------------------------------ stored documents


@pytest.mark.parametrize("raw", [b"not json", b'{"format_version": 99, "uid": "x"}', b'{"uid": "x"}', b"[]"])
def test_unknown_or_malformed_documents_are_refused(raw: bytes) -> None:
    with pytest.raises(FormatError):
        ClusterData.loads(raw)
    with pytest.raises(FormatError):
        KeeperStatus.loads(raw)


@pytest.mark.parametrize(("fields", "fragment"), [
    ({"lsn": "a lot"}, "lsn: expected int, got str"),
    ({"healthy": "yes"}, "healthy: expected bool, got str"),
    ({"pid": True}, "pid: expected int, got bool"),
    ({"uid": 7}, "uid: expected str, got int"),
    ({"address": ["10.0.0.1:5432"]}, "address: expected str"),
    ({"synchronous_standbys": "k1"}, "synchronous_standbys: expected list"),
    ({"synchronous_standbys": [1]}, "expected a list of strings"),
    ({"replication": [{"name": "k2", "flush_lsn": "x"}]}, "flush_lsn: expected int"),
    ({"replication": ["k2"]}, "replication: expected a list of objects"),
    ({"error": "x" * 5000}, "error: longer than 4096"),
    ({"reported_at": "now"}, "reported_at: expected float"),
    ({"reported_at": float("inf")}, "reported_at: not a finite number"),  # json.loads takes Infinity
])
def test_status_documents_with_fields_of_the_wrong_type_are_refused(fields: dict, fragment: str) -> None:
    good = {"format_version": 1, "uid": "k1", "lsn": 5, "healthy": True, "reported_at": 1, "replication": []}
    assert KeeperStatus.loads(json.dumps(good)).reported_at == 1.0  # an integer time is a time
    with pytest.raises(FormatError, match=fragment):
        KeeperStatus.loads(json.dumps(good | fields))
    with pytest.raises(FormatError, match="generation: expected int"):
        ProxyStatus.loads(json.dumps({"format_version": 1, "uid": "p", "generation": "7"}))
    with pytest.raises(FormatError, match="sentinel status: malformed"):
        SentinelStatus.loads(json.dumps({"format_version": 1, "uid": "s", "reported_at": "x"}))


def _cd_doc(spec: object) -> bytes:
    return json.dumps({"format_version": 1, "uid": "c1", "name": "main", "spec": spec}).encode()


def test_cluster_data_spec_is_parsed_once_or_refused_whole() -> None:
    cd = ClusterData.loads(_cd_doc({"fail_interval": "3s", "pg_hba": ["hostssl all all 10.0.0.0/8 scram-sha-256"]}))
    assert cd.spec.fail_interval == 3.0 and cd.spec.pg_hba == ("hostssl all all 10.0.0.0/8 scram-sha-256",)
    assert ClusterData.loads(cd.dumps()) == cd
    for bad in ({"fail_interval": "soon"}, {"fail_interval": [3]}, {"pg_parameters": {"port": "1"}},
                {"no_such_key": 1}, "fast", None):
        with pytest.raises(FormatError, match="clusterdata"):
            ClusterData.loads(_cd_doc(bad) if bad is not None else b'{"format_version": 1, "uid": "c1", "name": "m"}')


@pytest.mark.parametrize("name, raw, fragment", [
    ("switchover", b"[]", "expected a JSON object"),
    ("switchover", b'{"id": "x"}', "format_version"),
    ("switchover", b'{"format_version": 1, "to": 7}', "to:"),
    ("switchover", b'{"format_version": 1, "id": ["x"]}', "id:"),
    ("drain/k1", b'{"format_version": 1, "drained": "yes"}', "drained"),
    ("failkeeper/K1;drop", b'{"format_version": 1}', "unknown command"),
    ("failkeeper", b'{"format_version": 1}', "unknown command"),
    ("reboot", b'{"format_version": 1}', "unknown command"),
    ("removekeeper/k1", b"not json", "not valid JSON"),
    ("removekeeper/k1", b'{"format_version": 1, "requested_at": "now"}', "requested_at"),
])
def test_malformed_commands_are_refused(name: str, raw: bytes, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment):
        Command.loads(name, raw)


def test_commands_round_trip() -> None:
    for cmd in (Command("switchover", id="ab12", to="k2", requested_at=5.0), Command("switchover"),
                Command("drain", keeper="k3", drained=False), Command("failkeeper", keeper="k1")):
        assert Command.loads(cmd.name, cmd.dumps()) == cmd


# ------------------------------------------------------------------------------------ with a store


@pytest.mark.integration
@pytest.mark.needs("etcd")
def test_init_twice_needs_yes_and_bad_spec_writes_nothing(tmp_path: Path) -> None:
    etcd = harness.EtcdCluster(tmp_path / "etcd", 1)
    etcd.start()
    try:
        common = ["--cluster-name", "c", "--store-endpoints", etcd.endpoints, "--store-insecure", "true"]
        bad = run("pghactl", *common, "init", "--spec", '{"fail_interval": "x"}')
        assert bad.returncode == 1 and "fail_interval" in bad.stderr
        assert "not initialized" in json.loads(run("pghactl", *common, "status", "--format", "json").stdout
                                               )["cluster"]["message"]
        bad = run("pghactl", *common, "init", "--spec", "{not json")
        assert bad.returncode == 2 and "not valid JSON" in bad.stderr
        ok = run("pghactl", *common, "init", "--spec", '{"synchronous_replication": true}')
        assert ok.returncode == 0, ok.stderr
        again = run("pghactl", *common, "init")
        assert again.returncode == 1 and "already initialized" in again.stderr and "--yes" in again.stderr
        spec = json.loads(run("pghactl", *common, "spec").stdout)
        assert spec["synchronous_replication"] is True  # the refused init changed nothing
        upd = run("pghactl", *common, "update", "--patch", '{"max_synchronous_standbys": 0}')
        assert upd.returncode == 1 and "max_synchronous_standbys" in upd.stderr
        for patch, key in (('{"pg_parameters": {"archive_cleanup_command": "id > /tmp/pwned"}}', "archive_cleanup_command"),
                           ('{"pg_hba": ["host all all 0.0.0.0/0 trust"]}', "trust")):
            upd = run("pghactl", *common, "update", "--patch", patch)
            assert upd.returncode == 1 and key in upd.stderr, upd.stderr
        upd = run("pghactl", *common, "update", "--patch", '{"pg_parameters": {"work_mem": "8MB"}}')
        assert upd.returncode == 0 and "pg_parameters" in upd.stdout
        assert json.loads(run("pghactl", *common, "spec").stdout)["pg_parameters"] == {"work_mem": "8MB"}
        future = run("pghactl", *common, "init", "--yes", "--spec",
                     '{"init_mode": "pitr", "pitr": {"target_time": "2999-01-01 00:00:00+00"}}')
        assert future.returncode == 1 and "in the future" in future.stderr
        given = run("pghactl", *common, "init", "--yes", "--spec",
                    '{"init_mode": "pitr", "pitr": {"replaces": ["ab"]}}')
        assert given.returncode == 1 and "written by pghactl init --yes" in given.stderr
        pitr = run("pghactl", *common, "init", "--yes", "--spec", '{"init_mode": "pitr", "pitr": {}}')
        assert pitr.returncode == 0 and "end of the archive" in pitr.stdout and "discard" in pitr.stdout
        replaced = json.loads(run("pghactl", *common, "spec").stdout)["pitr"]
        assert list(replaced) == ["replaces"] and len(replaced["replaces"]) == 1  # the uid of the cluster before
        again = run("pghactl", *common, "init", "--yes", "--spec", '{"init_mode": "pitr", "pitr": {}}')
        assert again.returncode == 0  # a restore that never finished: its predecessor's data is discarded too
        assert json.loads(run("pghactl", *common, "spec").stdout)["pitr"]["replaces"][1:] == replaced["replaces"]
        forced = run("pghactl", *common, "init", "--yes")
        assert forced.returncode == 0
        sw = run("pghactl", *common, "switchover")
        assert sw.returncode == 1 and "no primary" in sw.stderr
    finally:
        etcd.stop()


# ------------------------------------------------------------------------------------ keeper refusals


def _keeper_args(cluster, uid: str, data_dir: Path) -> list[str]:
    return [*cluster.common_args(), "--uid", uid, "--data-dir", str(data_dir), "--pg-port", str(harness.free_port()),
            "--pg-su-password-file", str(cluster.su_password_file),
            "--pg-repl-password-file", str(cluster.repl_password_file)]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: checks that the keeper refuses to run as root")
def test_keeper_refuses_root(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    out = run("pgha-keeper", "--cluster-name", "c", "--uid", "k1", "--data-dir", str(tmp_path / "d"),
              "--pg-su-password-file", str(pw), "--pg-repl-password-file", str(pw))
    assert out.returncode == 1 and "refusing to run as root" in out.stderr
    assert "secret" not in out.stderr


@pytest.mark.integration
def test_keeper_lock_and_foreign_cluster(cluster_factory) -> None:
    c = cluster_factory(keepers=1, sentinels=1, proxies=0)
    c.wait_for(lambda s: s["cluster"]["phase"] == "normal", timeout=120, what="a one-keeper cluster")
    data_dir = c.tmp / "keeper0" / "data"
    user = c.user if harness.running_as_root() else None
    # a second keeper on the same data directory exits with a clear error
    env = {"PATH": os.environ.get("PATH", "")}
    second = subprocess.run([os.path.join(harness.AGENT_BIN, "pgha-keeper"), *_keeper_args(c, "keeper0", data_dir)],
                            capture_output=True, text=True, timeout=30, user=user, env=env)
    assert second.returncode == 1 and "in use by another keeper" in second.stderr, second.stderr
    # the same data directory under another uid is refused
    c.keepers["keeper0"].stop()
    other_uid = subprocess.run([os.path.join(harness.AGENT_BIN, "pgha-keeper"),
                                *_keeper_args(c, "keeper9", data_dir)],
                               capture_output=True, text=True, timeout=30, user=user, env=env)
    assert other_uid.returncode == 1 and "belongs to keeper 'keeper0'" in other_uid.stderr, other_uid.stderr
    # re-initialize the cluster as a new one: the keeper refuses to touch the old cluster's data
    c.ctl("init", "--yes")
    c.keepers["keeper0"].start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "belongs to cluster" in c.keepers["keeper0"].log_text():
            break
        time.sleep(0.3)
    assert "refusing to touch it" in c.keepers["keeper0"].log_text()
    assert (data_dir / "postgres" / "PG_VERSION").exists()  # nothing was lost
    st = c.status()
    assert st["cluster"]["primary"] is None


# ------------------------------------------------------------------------------------ hostile store documents


@pytest.mark.integration
def test_malformed_commands_and_cluster_data_specs_stop_no_agent(cluster_factory) -> None:
    """``etcdctl put .../commands/switchover '[]'`` once killed every leading sentinel in turn, and a
    cluster data spec the keeper could not use killed its fence thread. Now: the command is logged and
    removed, the sentinels go on (a real switchover still works), and a spec written as "3s" is a
    duration like any other while one that does not validate is refused whole."""
    from pgha.model import keys
    from pgha.store.etcd import EtcdStore

    c = cluster_factory(keepers=2, sentinels=2, proxies=0)
    c.wait_for(lambda s: s["cluster"]["phase"] == "normal" and all(k["healthy"] for k in s["keepers"])
               and len(s["keepers"]) == 2, timeout=120, what="two healthy keepers")
    k = keys("pgha", c.cluster_name)
    store = EtcdStore(c.etcd.endpoints, timeout=2.0)
    try:
        for name, raw in (("switchover", "[]"), ("switchover", '{"id": "x"}'), ("drain/keeper1", "{not json"),
                          ("reboot", '{"format_version": 1}')):
            store.put(k.command(name), raw)
            deadline = time.monotonic() + 20
            while store.get(k.command(name)) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert store.get(k.command(name)) is None, f"commands/{name} = {raw} was not removed"
        assert all(s.is_running() for s in c.sentinels.values()), c.logs_tail()
        assert any("removing commands/switchover" in s.log_text() for s in c.sentinels.values())
        before = c.status()["cluster"]["primary"]
        c.ctl("switchover", timeout=90)  # the sentinels still act on well-formed requests
        c.wait_for(lambda s: s["cluster"]["primary"] not in (None, before) and s["cluster"]["phase"] == "normal",
                   timeout=60, what="the switchover after the malformed commands")

        # The cluster data's spec with a duration written as a string: parsed, nothing breaks.
        kv = store.get(k.clusterdata)
        doc = json.loads(kv.value)
        doc["spec"]["fail_interval"] = "3s"
        assert store.cas(k.clusterdata, json.dumps(doc), kv.mod_revision)
        time.sleep(3)
        # ... and one that does not validate: the keepers refuse it whole and keep their lease and fence.
        kv = store.get(k.clusterdata)
        doc = json.loads(kv.value)
        doc["spec"]["fail_interval"] = "soon"
        assert store.cas(k.clusterdata, json.dumps(doc), kv.mod_revision)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                "refusing to act on the cluster data" in kp.log_text() for kp in c.keepers.values()):
            time.sleep(0.2)
        for uid, kp in c.keepers.items():
            assert "refusing to act on the cluster data" in kp.log_text() and "does not validate" in kp.log_text(), uid
        time.sleep(4)  # longer than a lease: a dead lease or fence thread would show now
        # pghactl status refuses the cluster data too (it says why); the keepers' own documents show
        # each still holds its lease, and the primary runs (not fenced)
        bad = c.ctl("status", check=False)
        assert bad.returncode == 1 and "does not validate" in bad.stderr
        assert all(kp.is_running() for kp in c.keepers.values())
        statuses = [KeeperStatus.loads(kv.value) for kv in store.get_prefix(k.keepers)[0]]
        assert {x.uid for x in statuses} == set(c.keepers), statuses
        assert any(x.role == "primary" and x.healthy for x in statuses), statuses
        assert "Traceback" not in "".join(kp.log_text() for kp in c.keepers.values())
        # put back: the cluster goes on
        kv = store.get(k.clusterdata)
        doc = json.loads(kv.value)
        doc["spec"]["fail_interval"] = 3.0
        assert store.cas(k.clusterdata, json.dumps(doc), kv.mod_revision)

        # Status documents written by hand, without a lease: a proxy whose acknowledgement the failover
        # would wait for, and a copy of the primary under another key. Neither holds up a failover.
        st = c.status()
        old = st["cluster"]["primary"]
        primary = store.get(k.keeper(old))
        store.put(k.proxy("forged"), ProxyStatus(uid="forged", generation=0).dumps())
        store.put(k.keeper("forged"), primary.value)
        # ... and documents no agent can read: not JSON, not UTF-8, a future format, the wrong types
        future = json.loads(primary.value) | {"format_version": 99}
        wrong_types = json.loads(primary.value) | {"uid": "typed", "lsn": "a lot", "healthy": "yes"}
        for key, raw in ((k.keeper("junk"), "{not json"), (k.proxy("junk"), b"\xff\xfe\x00"),
                         (k.keeper("future"), json.dumps(future)), (k.keeper("typed"), json.dumps(wrong_types)),
                         (k.sentinel("junk"), "[]"), (k.proxy("big"), json.dumps({"uid": "big", "x": "y" * 500_000}))):
            store.put(key, raw)
        time.sleep(1)
        killed = time.monotonic()
        c.keepers[old].signal_tree(signal.SIGKILL)
        # the usual crash failover takes about fail_interval (3 s) plus a second: 20 s is generous
        c.wait_for(lambda s: s["cluster"]["primary"] not in (None, old) and s["cluster"]["phase"] == "normal"
                   and s["cluster"]["transition"] is None, timeout=20, interval=0.2,
                   what="a failover despite the forged and unreadable documents")
        print(f"failover {time.monotonic() - killed:.2f} s after the kill, with the hostile documents in the store")
        ignored = c.status()["ignored"]  # pghactl believes what the sentinel believes, and says what it does not
        assert {"keepers/forged", "keepers/junk", "keepers/future", "keepers/typed", "proxies/junk",
                "proxies/big", "proxies/forged", "sentinels/junk"} <= set(ignored), ignored
        assert "healthy: expected bool" in ignored["keepers/typed"]
        assert all(a.is_running() for a in c.sentinels.values()), c.logs_tail()
        assert "Traceback" not in "".join(a.log_text() for a in c.agents.values())
    finally:
        store.close()
