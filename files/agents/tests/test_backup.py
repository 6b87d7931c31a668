"""Backups with pgBackRest: the configuration and parameters a keeper writes (pure), and, against
real etcd, PostgreSQL and pgBackRest, archiving, ``pghactl backup`` and ``pghactl backups``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from pgha import backup as pb
from pgha.keeper.backups import parse_request
from pgha.model import FormatError

CFG = pb.BackupConfig(bin="/usr/bin/pgbackrest", stanza="main", repo_path="/srv/repo", work_dir=Path("/d/pgbackrest"),
                      pg_port=5432, pgdata=Path("/d/postgres"), pg_socket_dir=Path("/d/run"), pg_user="postgres")


def test_the_configuration_names_the_stanza_repository_and_this_postgresql() -> None:
    text = pb.config_text(CFG)
    assert "[main]\npg1-path=/d/postgres\npg1-port=5432\npg1-socket-path=/d/run\npg1-user=postgres\n" in text
    assert "repo1-path=/srv/repo\n" in text and "archive-async=y\n" in text
    assert "spool-path=/d/pgbackrest/spool\n" in text and "repo1-retention-full=2\n" in text


def test_postgresql_archives_and_restores_through_the_keepers_configuration() -> None:
    params = pb.pg_parameters(CFG, archive_timeout=10)
    assert params["archive_mode"] == "on"
    assert params["archive_command"] == ("/usr/bin/pgbackrest --config=/d/pgbackrest/pgbackrest.conf --stanza=main "
                                         "archive-push %p")
    assert params["restore_command"].endswith("archive-get %f \"%p\"")
    assert params["archive_timeout"] == "10s"
    assert pb.backup_argv(CFG, "incr")[-2:] == ["--type=incr", "backup"]
    with pytest.raises(ValueError):
        pb.backup_argv(CFG, "everything")


INFO = [{"name": "main", "status": {"code": 0}, "backup": [
    {"label": "20261203-101500F_20261203-102000I", "type": "incr",
     "timestamp": {"start": 1764757200, "stop": 1764757210},
     "archive": {"start": "000000010000000000000006", "stop": "000000010000000000000006"},
     "info": {"size": 30000000, "delta": 100000, "repository": {"size": 4000000, "delta": 20000}}},
    {"label": "20261203-101500F", "type": "full", "timestamp": {"start": 1764756900, "stop": 1764756920},
     "archive": {"start": "000000010000000000000004", "stop": "000000010000000000000004"},
     "info": {"size": 30000000, "delta": 30000000, "repository": {"size": 4000000, "delta": 4000000}}},
]}, {"name": "other", "backup": [{"label": "x", "type": "full"}]}]


def test_the_backups_of_the_stanza_oldest_first() -> None:
    listed = pb.backups(json.dumps(INFO), "main")
    assert [b["label"] for b in listed] == ["20261203-101500F", "20261203-101500F_20261203-102000I"]
    assert listed[0] == {"label": "20261203-101500F", "type": "full", "start": 1764756900, "stop": 1764756920,
                         "wal_start": "000000010000000000000004", "wal_stop": "000000010000000000000004",
                         "size_bytes": 4000000}
    assert pb.backups("[]", "main") == [] and pb.backups(json.dumps(INFO), "nope") == []
    with pytest.raises(pb.BackupError, match="not JSON"):
        pb.backups("{oops", "main")


def test_the_summary_reads_a_forged_state_as_unknown() -> None:
    state = {"stanza": True, "backups": pb.backups(json.dumps(INFO), "main"), "last_archived_at": 1764757300.0,
             "archived_count": 7, "failed_count": 0}
    s = pb.summary(state, now=1764757310.0)
    assert s == {"stanza": True, "backups": 2, "seconds_since_backup": 100.0, "archived_count": 7.0,
                 "failed_count": 0.0, "seconds_since_archived": 10.0}
    forged = pb.summary({"stanza": "yes", "backups": "many", "last_archived_at": "now", "failed_count": True}, 0.0)
    assert forged == {"stanza": False, "backups": 0, "seconds_since_backup": None, "archived_count": None,
                      "failed_count": None, "seconds_since_archived": None}
    assert pb.summary({}, 0.0) is None


@pytest.mark.parametrize("raw", ["[]", "{not json", '{"format_version": 1, "id": "a b", "type": "full", "keeper": "k"}',
                                 '{"format_version": 1, "id": "a1", "type": "everything", "keeper": "k"}',
                                 '{"format_version": 1, "id": "a1", "type": "full"}'])
def test_a_malformed_backup_request_is_refused(raw: str) -> None:
    with pytest.raises(FormatError):
        parse_request(raw)


def test_the_last_error_line_of_pgbackrest() -> None:
    out = "2026-12-03 INFO: start\nERROR: [055]: unable to load info file '/r/backup.info'\nmore"
    assert pb.last_error(out) == "ERROR: [055]: unable to load info file '/r/backup.info'"
    assert pb.last_error("") == "no output"


# ------------------------------------------------------------------ real pgBackRest

needs_pgbackrest = pytest.mark.skipif(shutil.which("pgbackrest") is None,
                                      reason="pgbackrest is not installed (scripts/bootstrap.sh installs it)")


def keeper_rows(c: Any) -> dict[str, dict[str, Any]]:
    return {k["uid"]: k for k in c.status()["keepers"]}


@pytest.mark.integration
@needs_pgbackrest
def test_wal_is_archived_and_pghactl_backs_up_and_lists(cluster_factory) -> None:
    from test_integration_ha import healthy_cluster, primary_of, write_row

    from pgha.model import keys
    from pgha.store.etcd import EtcdStore

    c = cluster_factory(keepers=2, sentinels=1, proxies=1, backup_repo=True)
    st = c.wait_for(healthy_cluster(2), timeout=120, what="two keepers, archiving")
    primary = primary_of(st)
    replica = next(uid for uid in c.keepers if uid != primary)
    c.wait_for(lambda s: (keeper_rows(c)[primary]["backup"] or {}).get("stanza"), timeout=90,
               what="the primary's stanza created")
    write_row(c, "before the backup")
    conn = c.connect_superuser(primary)
    try:
        conn.autocommit = True
        conn.cursor().execute("SELECT pg_switch_wal()")
    finally:
        conn.close()
    c.wait_for(lambda s: ((keeper_rows(c)[primary]["backup"] or {}).get("archived_count") or 0) > 0, timeout=60,
               what="a WAL segment archived")

    # a hostile request is ignored (logged once) and stops nothing
    store = EtcdStore(c.etcd.endpoints, timeout=2.0)
    try:
        store.put(keys("pgha", c.cluster_name).backup_request, '{"format_version": 1, "id": "../x", "type": "full"}')
        time.sleep(2)
    finally:
        store.close()
    assert "ignoring" in c.keepers[primary].log_text()

    full = json.loads(c.ctl("backup", "--type", "full", "--format", "json", timeout=300).stdout)
    assert full["type"] == "full" and full["keeper"] == primary and full["label"].endswith("F")
    assert full["wal_start"] and full["size_bytes"] > 0
    write_row(c, "after the full backup")
    incr = json.loads(c.ctl("backup", "--type", "incr", "--format", "json", timeout=300).stdout)
    assert incr["type"] == "incr" and incr["label"].startswith(full["label"] + "_")

    listed = json.loads(c.ctl("backups", "--format", "json").stdout)
    assert [b["label"] for b in listed] == [full["label"], incr["label"]]
    assert all(set(b) == {"label", "type", "start", "stop", "wal_start", "wal_stop", "size_bytes"} for b in listed)
    assert listed[0]["start"] <= listed[0]["stop"] <= listed[1]["start"]
    summary = keeper_rows(c)[primary]["backup"]
    assert summary["backups"] == 2 and summary["seconds_since_backup"] is not None
    # the replica would fetch from the archive what the primary no longer keeps
    conn = c.connect_superuser(replica)
    try:
        cur = conn.cursor()
        cur.execute("SHOW restore_command")
        assert "archive-get %f" in cur.fetchone()[0]
    finally:
        conn.close()
    # no password in the keepers' pgBackRest configuration, mode 0600
    conf = Path(c.tmp / primary / "data" / "pgbackrest" / "pgbackrest.conf")
    assert conf.stat().st_mode & 0o777 == 0o600
    assert c.su_password not in conf.read_text()
    c.check_logs()


@pytest.mark.integration
def test_without_a_repository_pghactl_backup_says_so(cluster_factory) -> None:
    from test_integration_ha import healthy_cluster

    c = cluster_factory(keepers=1, sentinels=1, proxies=0)
    c.wait_for(healthy_cluster(1), timeout=120, what="a one-keeper cluster")
    r = c.ctl("backup", check=False)
    assert r.returncode != 0
    assert "has no backup repository" in r.stderr and "--backup-repo-path" in r.stderr
    r = c.ctl("backups", check=False)
    assert r.returncode != 0 and "reports a backup repository" in r.stderr
    r = c.ctl("backup", "--type", "everything", check=False)
    assert r.returncode == 2 and "invalid choice" in r.stderr
