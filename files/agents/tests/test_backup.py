"""Backups with pgBackRest: the configuration and parameters a keeper writes (pure), and, against
real etcd, PostgreSQL and pgBackRest, archiving, ``pghactl backup`` and ``pghactl backups``."""

from __future__ import annotations

import calendar
import datetime
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from pgha import backup as pb
from pgha.keeper.backups import parse_request
from pgha.keeper.pg import layout
from pgha.model import FormatError, KeeperStatus

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
     "lsn": {"start": "0/4000028", "stop": "0/4000100"},
     "info": {"size": 30000000, "delta": 30000000, "repository": {"size": 4000000, "delta": 4000000}}},
]}, {"name": "other", "backup": [{"label": "x", "type": "full"}]}]


def test_the_backups_of_the_stanza_oldest_first() -> None:
    listed = pb.backups(json.dumps(INFO), "main")
    assert [b["label"] for b in listed] == ["20261203-101500F", "20261203-101500F_20261203-102000I"]
    assert listed[0] == {"label": "20261203-101500F", "type": "full", "start": 1764756900, "stop": 1764756920,
                         "wal_start": "000000010000000000000004", "wal_stop": "000000010000000000000004",
                         "lsn_start": "0/4000028", "lsn_stop": "0/4000100", "size_bytes": 4000000}
    assert listed[1]["lsn_start"] is None  # an entry without lsn
    assert pb.backups("[]", "main") == [] and pb.backups(json.dumps(INFO), "nope") == []
    with pytest.raises(pb.BackupError, match="not JSON"):
        pb.backups("{oops", "main")


def test_the_summary_reads_a_forged_state_as_unknown() -> None:
    state = {"stanza": True, "backups": pb.backups(json.dumps(INFO), "main"), "last_archived_at": 1764757300.0,
             "archived_count": 7, "failed_count": 0}
    s = pb.summary(state, now=1764757310.0)
    assert s == {"stanza": True, "backups": 2, "seconds_since_backup": 100.0, "archived_count": 7.0,
                 "failed_count": 0.0, "seconds_since_archived": 10.0, "restored": None}
    forged = pb.summary({"stanza": "yes", "backups": "many", "last_archived_at": "now", "failed_count": True}, 0.0)
    assert forged == {"stanza": False, "backups": 0, "seconds_since_backup": None, "archived_count": None,
                      "failed_count": None, "seconds_since_archived": None, "restored": None}
    restored = pb.summary({"restored": {"backup": "20261203-101500F", "timeline": 3, "target": ["x"],
                                        "restore_seconds": 1.5, "replay_seconds": "2", "finished_at": True}}, 0.0)
    assert restored["restored"] == {"backup": "20261203-101500F", "timeline": 3, "restore_seconds": 1.5}
    assert pb.summary({}, 0.0) is None


@pytest.mark.parametrize("raw", ["[]", "{not json", '{"format_version": 1, "id": "a b", "type": "full", "keeper": "k"}',
                                 '{"format_version": 1, "id": "a1", "type": "everything", "keeper": "k"}',
                                 '{"format_version": 1, "id": "a1", "type": "full"}',
                                 '{"format_version": 1, "id": "a1", "type": "full", "keeper": "k", "source": "anyone"}'])
def test_a_malformed_backup_request_is_refused(raw: str) -> None:
    with pytest.raises(FormatError):
        parse_request(raw)


def test_a_request_without_a_source_backs_up_from_a_standby_when_there_is_one() -> None:
    req = parse_request('{"format_version": 1, "id": "a1", "type": "diff", "keeper": "k1"}')
    assert req == {"id": "a1", "type": "diff", "keeper": "k1", "source": "auto"}


def keeper(uid: str, **kw: Any) -> KeeperStatus:
    base = dict(uid=uid, host="h1", data_dir=f"/var/lib/pgha/{uid}", address="10.0.0.1:5433", role="replica",
                healthy=True, pg_running=True, streaming_from="10.0.0.1:5432", system_id="7", lsn=1000, replay_lsn=1000)
    return KeeperStatus(**{**base, **kw})


ME = keeper("k1", role="primary", streaming_from=None, address="10.0.0.1:5432", lsn=5000)


@pytest.mark.parametrize("others, chosen, why", [
    ([], None, "no replica"),
    ([keeper("k2", replay_lsn=4000), keeper("k3", replay_lsn=4900)], "k3", "k3 streams 100 bytes behind on this machine"),
    ([keeper("k2", replay_lsn=4900), keeper("k3", replay_lsn=4900)], "k2", "k2 streams 100 bytes behind on this machine"),
    ([keeper("k2", host="h2")], None, "k2 runs on another machine (h2)"),
    ([keeper("k2", host="")], None, "k2 runs on another machine (unknown)"),
    ([keeper("k2", healthy=False)], None, "k2 is not a healthy streaming replica"),
    ([keeper("k2", streaming_from=None)], None, "k2 is not a healthy streaming replica"),
    ([keeper("k2", role="primary")], None, "k2 is not a healthy streaming replica"),
    ([keeper("k2", system_id="8")], None, "k2 is a replica of another system"),
    ([keeper("k2", data_dir="relative")], None, "k2 reports no usable data directory or address"),
    ([keeper("k2", address="nowhere")], None, "k2 reports no usable data directory or address"),
    ([keeper("k2", replay_lsn=5000 - pb.STANDBY_MAX_LAG - 1)], None, f"k2 replays {pb.STANDBY_MAX_LAG + 1} bytes behind"),
    ([keeper("k2", host="h2"), keeper("k3", replay_lsn=None)], "k3", "k3 streams 5000 bytes behind on this machine"),
    ([keeper("k2", host="h2"), keeper("k3", healthy=False)], None,
     "k2 runs on another machine (h2); k3 is not a healthy streaming replica"),
])
def test_the_standby_a_backup_copies_its_files_from(others: list, chosen: str | None, why: str) -> None:
    got, reason = pb.choose_standby(ME, [ME, *others], layout)
    assert (got.uid if got else None) == chosen and reason == why
    if got:
        assert got.pgdata == f"/var/lib/pgha/{got.uid}/postgres" and got.socket_dir == f"/var/lib/pgha/{got.uid}/run"
        assert got.port == 5433


def test_a_backup_from_a_standby_gives_pgbackrest_the_standby_as_pg2() -> None:
    sb = pb.StandbyPg(uid="k2", pgdata="/s/postgres", port=5433, socket_dir="/s/run", lag_bytes=0)
    assert pb.backup_argv(CFG, "full") == ["/usr/bin/pgbackrest", "--config=/d/pgbackrest/pgbackrest.conf",
                                           "--stanza=main", "--type=full", "backup"]
    assert pb.backup_argv(CFG, "incr", sb)[3:] == [
        "--type=incr", "--backup-standby", "--pg2-path=/s/postgres", "--pg2-port=5433", "--pg2-socket-path=/s/run",
        "--pg2-user=postgres", "backup"]


def test_the_last_error_line_of_pgbackrest() -> None:
    out = "2026-12-03 INFO: start\nERROR: [055]: unable to load info file '/r/backup.info'\nmore"
    assert pb.last_error(out) == "ERROR: [055]: unable to load info file '/r/backup.info'"
    assert pb.last_error("") == "no output"


LISTED = pb.backups(json.dumps(INFO), "main")  # a full backup ended 1764756920, an incremental 1764757210


def ts(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(sep=" ")


@pytest.mark.parametrize("pitr,label", [
    ({}, "20261203-101500F_20261203-102000I"),  # the end of the archive: the latest backup
    ({"target_time": ts(1764757300)}, "20261203-101500F_20261203-102000I"),
    ({"target_time": ts(1764757000)}, "20261203-101500F"),  # before the incremental ended
    ({"target_time": ts(1764757300), "backup": "20261203-101500F"}, "20261203-101500F"),
    ({"target_lsn": "0/5000000"}, "20261203-101500F_20261203-102000I"),
])
def test_the_backup_a_recovery_starts_from(pitr: dict[str, str], label: str) -> None:
    assert pb.choose_backup(LISTED, pitr, "main") == label


@pytest.mark.parametrize("pitr,listed,fragment", [
    ({"target_time": ts(1764756910)}, LISTED, "before the end of the oldest backup (20261203-101500F"),
    ({"backup": "20261201-000000F"}, LISTED, "is not in the repository of stanza main"),
    ({"target_time": ts(1764757000), "backup": "20261203-101500F_20261203-102000I"}, LISTED, "not before the target"),
    ({}, [], "holds no backup of stanza main"),
])
def test_a_target_no_backup_can_reach_is_refused(pitr: dict[str, str], listed: list, fragment: str) -> None:
    with pytest.raises(pb.BackupError, match=re.escape(fragment)):
        pb.choose_backup(listed, pitr, "main")


def test_the_restore_command_line_and_the_recovery_parameters() -> None:
    at = "2026-12-03 10:20:00+00:00"
    argv = pb.restore_argv(CFG, {"target_time": at}, "20261203-101500F")
    assert argv[:3] == ["/usr/bin/pgbackrest", "--config=/d/pgbackrest/pgbackrest.conf", "--stanza=main"]
    assert argv[-1] == "restore" and "--set=20261203-101500F" in argv
    assert "--type=time" in argv and f"--target={at}" in argv and "--target-action=promote" in argv
    to_end = pb.restore_argv(CFG, {}, "20261203-101500F")
    assert not any(a.startswith(("--type", "--target")) for a in to_end)
    assert "--type=lsn" in pb.restore_argv(CFG, {"target_lsn": "0/5000000"}, "x")
    params = pb.recovery_parameters(CFG, {"target_name": "before-upgrade"})
    assert params == {"restore_command": pb.pg_parameters(CFG, 10)["restore_command"],
                      "recovery_target_name": "before-upgrade", "recovery_target_action": "promote"}
    assert pb.recovery_parameters(CFG, {}).keys() == {"restore_command"}
    assert pb.describe_target({"target_time": at}) == f"time {at}" and pb.describe_target({}) == "the end of the archive"
    out = "P00   INFO: repo1: restore backup set 20261203-101500F, recovery will start at 2026-12-03 10:15:00\n"
    assert pb.restored_set(out) == "20261203-101500F" and pb.restored_set("") is None


def test_a_replica_starts_only_from_a_backup_of_the_clusters_timeline() -> None:
    listed = [dict(b, wal_start="00000001" + b["wal_start"][8:]) for b in LISTED]
    assert pb.backup_for_replica(listed, 1)["label"] == "20261203-101500F_20261203-102000I"
    assert pb.backup_for_replica(listed, 2) is None and pb.backup_for_replica(listed, None) is None
    assert pb.backup_for_replica([dict(LISTED[0], wal_start="0000000A" + "0" * 16)], 10)["label"] == "20261203-101500F"
    argv = pb.standby_restore_argv(CFG, "20261203-101500F")
    assert argv[-1] == "restore" and "--type=standby" in argv and "--set=20261203-101500F" in argv


def test_restoring_another_clusters_backups_gives_its_stanza_this_postgresql() -> None:
    text = pb.config_text(CFG, restore_from="old")
    assert "[main]\npg1-path=/d/postgres" in text and "[old]\npg1-path=/d/postgres\npg1-port=5432" in text
    assert "[old]" not in pb.config_text(CFG, restore_from="main")


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

    # the files of the full backup come from the streaming replica on this machine (pgBackRest waits
    # for it to replay the backup's start), those of the incremental one from the primary
    full = json.loads(c.ctl("backup", "--type", "full", "--format", "json", timeout=300).stdout)
    assert full["type"] == "full" and full["keeper"] == primary and full["label"].endswith("F")
    assert full["from"] == replica and full["wal_start"] and full["size_bytes"] > 0
    backup_log = c.tmp / primary / "data" / "pgbackrest" / "log" / f"{c.cluster_name}-backup.log"
    assert "replay on the standby reached" in backup_log.read_text()
    assert f"files copied from standby {replica}" in c.keepers[primary].log_text()
    write_row(c, "after the full backup")
    incr = json.loads(c.ctl("backup", "--type", "incr", "--from", "primary", "--format", "json", timeout=300).stdout)
    assert incr["type"] == "incr" and incr["label"].startswith(full["label"] + "_") and incr["from"] == primary

    # a keeper added now is created from the backup, not copied from the primary
    c.add_keeper("keeper3").start()
    c.wait_for(healthy_cluster(3), timeout=120, what="the new keeper streaming")
    assert "replica created from backup " + incr["label"] in c.keepers["keeper3"].log_text()
    conn = c.connect_superuser("keeper3", dbname="app")
    try:
        cur = conn.cursor()
        deadline = time.monotonic() + 30
        while True:
            cur.execute("SELECT count(*) FROM t WHERE v = 'after the full backup'")
            if cur.fetchone()[0] == 1:
                break
            assert time.monotonic() < deadline, "the replica from backup lacks a row written after it"
            time.sleep(0.5)
    finally:
        conn.close()

    listed = json.loads(c.ctl("backups", "--format", "json").stdout)
    assert [b["label"] for b in listed] == [full["label"], incr["label"]]
    assert all(set(b) == {"label", "type", "start", "stop", "wal_start", "wal_stop", "lsn_start", "lsn_stop", "size_bytes"} for b in listed)
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

    # a daily schedule that runs next minute (its run of yesterday is satisfied by today's backups):
    # the primary takes that backup when the minute comes, once
    assert listed[0]["lsn_start"] and listed[0]["lsn_start"] <= listed[0]["lsn_stop"]
    run = time.gmtime(time.time() + 60)
    run_at = calendar.timegm(run) - run.tm_sec
    c.ctl("update", "--patch", json.dumps({"backup_schedule_diff": f"{run.tm_min} {run.tm_hour} * * *"}))
    c.wait_for(lambda s: len(json.loads(c.ctl("backups", "--format", "json").stdout)) == 3, timeout=180,
               what="the scheduled backup listed")
    scheduled = json.loads(c.ctl("backups", "--format", "json").stdout)[-1]
    assert scheduled["type"] == "diff" and scheduled["start"] >= run_at
    assert "and no backup satisfies it yet: running pgbackrest backup" in c.keepers[primary].log_text()
    time.sleep(3)
    assert len(json.loads(c.ctl("backups", "--format", "json").stdout)) == 3
    assert c.ctl("update", "--patch", '{"backup_schedule_full": "0 1 * *"}', check=False).returncode != 0
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


def _archive_everything(c: Any, primary: str) -> None:
    """Switch to a new WAL segment and wait until the one just closed is in the archive."""
    conn = c.connect_superuser(primary)
    try:
        conn.autocommit = True
        cur = conn.cursor()
        cur.execute("SELECT pg_walfile_name(pg_switch_wal())")
        segment = cur.fetchone()[0]
        deadline = time.monotonic() + 60
        while True:
            cur.execute("SELECT last_archived_wal FROM pg_stat_archiver")
            done = cur.fetchone()[0]
            if done is not None and done[8:] >= segment[8:]:
                return
            assert time.monotonic() < deadline, f"{segment} not archived within 60s (last: {done})"
            time.sleep(0.2)
    finally:
        conn.close()


def _marks(c: Any, **kw: Any) -> list[int]:
    conn = c.connect_rw(**kw)
    try:
        cur = conn.cursor()
        cur.execute("SELECT i FROM marks ORDER BY i")
        return [r[0] for r in cur.fetchall()]
    finally:
        conn.close()


@pytest.mark.integration
@needs_pgbackrest
def test_point_in_time_recovery_in_place_restores_exactly_the_rows_before_the_target(cluster_factory) -> None:
    from test_integration_ha import healthy_cluster, primary_of

    c = cluster_factory(keepers=2, sentinels=1, proxies=1, backup_repo=True)
    st = c.wait_for(healthy_cluster(2), timeout=120, what="two keepers, archiving")
    primary, old_uid, old_tl = primary_of(st), st["cluster"]["uid"], keeper_rows(c)[primary_of(st)]["timeline"]
    c.wait_for(lambda s: (keeper_rows(c)[primary]["backup"] or {}).get("stanza"), timeout=90,
               what="the primary's stanza created")
    conn = c.connect_rw()
    try:
        conn.autocommit = True
        conn.cursor().execute("CREATE TABLE marks (i int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
    finally:
        conn.close()
    backup = json.loads(c.ctl("backup", "--format", "json", timeout=300).stdout)
    # one row per transaction; the target is read from the server's clock between rows 3 and 4
    conn = c.connect_rw()
    target = ""
    try:
        conn.autocommit = True
        cur = conn.cursor()
        for i in range(1, 7):
            cur.execute("INSERT INTO marks (i) VALUES (%s)", (i,))
            time.sleep(0.3)
            if i == 3:
                cur.execute("SELECT clock_timestamp()::text")
                target = cur.fetchone()[0]
                time.sleep(0.3)
    finally:
        conn.close()
    _archive_everything(c, primary)

    # a target before the backup ended is refused before any data directory is touched
    early = json.dumps({"init_mode": "pitr", "pitr": {"target_time": "2020-01-01 00:00:00+00"}})
    c.ctl("init", "--yes", "--spec", early)
    st = c.wait_for(lambda s: any("before the end of the oldest backup" in (k["error"] or "") for k in s["keepers"]),
                    timeout=90, what="the keeper chosen to restore refusing the target")
    assert st["cluster"]["phase"] == "initializing" and st["cluster"]["uid"] != old_uid
    for uid in c.keepers:
        assert (c.tmp / uid / "data" / "postgres" / "PG_VERSION").exists(), f"{uid}'s data was touched"
    assert "before the end of the oldest backup" in c.ctl("status").stdout

    spec = json.dumps({"init_mode": "pitr", "pitr": {"target_time": target}})
    out = c.ctl("init", "--yes", "--spec", spec).stdout
    assert "point-in-time recovery to time" in out and "discard" in out
    st = c.wait_for(lambda s: healthy_cluster(2)(s) and s["cluster"]["uid"] not in (old_uid, st["cluster"]["uid"]),
                    timeout=240, what="the cluster restored in place, both keepers back")
    new_primary = primary_of(st)
    assert _marks(c) == [1, 2, 3]  # exactly the rows committed before the target: none missing, none extra
    row = keeper_rows(c)[new_primary]
    restored = row["backup"]["restored"]
    assert restored["backup"] == backup["label"] and restored["stanza"] == c.cluster_name
    assert restored["target"].startswith("time ") and restored["timeline"] > old_tl and row["timeline"] > old_tl
    replica = next(uid for uid in c.keepers if uid != new_primary)
    conn = c.connect_superuser(replica, dbname="app")
    try:
        cur = conn.cursor()
        deadline = time.monotonic() + 60
        while True:
            cur.execute("SELECT count(*) FROM marks")
            if cur.fetchone()[0] == 3:
                break
            assert time.monotonic() < deadline, "the replica did not clone the restored primary"
            time.sleep(0.5)
        cur.execute("SHOW recovery_target_time")
        assert cur.fetchone()[0] == ""  # no recovery target left behind on a standby
    finally:
        conn.close()
    conn = c.connect_rw()
    try:
        conn.autocommit = True
        conn.cursor().execute("INSERT INTO marks (i) VALUES (100)")  # writable, on the new timeline
    finally:
        conn.close()
    assert "point-in-time recovery done" in c.keepers[new_primary].log_text()
    # the backup is of the timeline before the recovery's: the replica was copied from the primary
    assert "holds no backup of timeline" in c.keepers[replica].log_text()
    c.check_logs()


# ----------------------------------------------------------------------------- schedules
def _utc(text: str) -> float:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()


@pytest.mark.parametrize("expr, now, expected", [
    ("0 1 * * 0", "2026-12-03 18:07:00", "2026-11-29 01:00:00"),  # weekly, Sunday 01:00; now is a Thursday
    ("0 1 * * 7", "2026-12-03 18:07:00", "2026-11-29 01:00:00"),  # 7 is Sunday too
    ("@daily", "2026-12-03 00:00:30", "2026-12-03 00:00:00"),  # the minute it runs counts
    ("*/15 * * * *", "2026-12-03 18:14:59", "2026-12-03 18:00:00"),
    ("30 2 13 * 5", "2026-12-03 18:07:00", "2026-11-27 02:30:00"),  # the 13th or a Friday (cron's either-or)
    ("0 3 1-7 * *", "2026-12-03 02:59:00", "2026-12-02 03:00:00"),
    ("0 0 29 2 *", "2026-12-03 00:00:00", "2024-02-29 00:00:00"),  # leap days only: more than a year back
    ("0 22,6 * 1-3 1-5", "2026-12-03 18:07:00", "2026-03-31 22:00:00"),
])
def test_the_previous_run_of_a_schedule(expr: str, now: str, expected: str) -> None:
    assert pb.previous_run(pb.parse_schedule(expr), _utc(now), horizon_days=1500) == _utc(expected)


def test_a_schedule_that_never_runs_within_the_horizon() -> None:
    assert pb.previous_run(pb.parse_schedule("0 0 31 2 *"), _utc("2026-12-03 00:00:00")) is None


@pytest.mark.parametrize("expr, why", [
    ("0 1 * *", "five fields"), ("60 * * * *", "minute '60' outside 0-59"), ("0 0 0 * *", "day of month"),
    ("0 0 * 13 *", "month"), ("0 0 * * 8", "day of week"), ("0 0 * * mon", "not \\*, N"),
    ("5-1 * * * *", "outside"), ("*/0 * * * *", "outside"), ("", "five fields"),
])
def test_a_malformed_schedule_says_what_is_wrong(expr: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        pb.parse_schedule(expr)


NOW = _utc("2026-12-03 18:07:00")  # Thursday; the weekly full ran Sunday 11-29 01:00, the daily diff today 01:00


@pytest.mark.parametrize("full, diff, listed, expected", [
    # nothing scheduled
    ("", "", [], None),
    # a new schedule on a cluster without backups: the run missed is made up at once
    ("0 1 * * 0", "", [], ("full", "2026-11-29 01:00:00")),
    ("", "0 1 * * *", [], ("diff", "2026-12-03 01:00:00")),
    # the full of Sunday was taken: no full due; the diff of today not yet
    ("0 1 * * 0", "0 1 * * 1-6", [("full", "2026-11-29 01:00:05")], ("diff", "2026-12-03 01:00:00")),
    # and once today's diff ran, nothing is due
    ("0 1 * * 0", "0 1 * * 1-6", [("full", "2026-11-29 01:00:05"), ("diff", "2026-12-03 01:00:02")], None),
    # a full after the diff's run satisfies the diff too; an incremental satisfies neither
    ("", "0 1 * * *", [("full", "2026-12-03 09:00:00")], None),
    ("", "0 1 * * *", [("full", "2026-12-02 09:00:00"), ("incr", "2026-12-03 09:00:00")], ("diff", "2026-12-03 01:00:00")),
    # a diff never satisfies the full schedule; the full comes first when both are due
    ("0 1 * * 0", "0 1 * * *", [("diff", "2026-12-03 01:00:02")], ("full", "2026-11-29 01:00:00")),
    # a backup that started before the run (and ended after) does not count for it
    ("0 1 * * 0", "", [("full", "2026-11-29 00:59:59")], ("full", "2026-11-29 01:00:00")),
    # a forged listing (start not a number) counts as no backup
    ("0 1 * * 0", "", [("full", None)], ("full", "2026-11-29 01:00:00")),
])
def test_which_backup_the_schedules_call_for(full: str, diff: str, listed: list, expected: tuple | None) -> None:
    backups = [{"label": f"b{i}", "type": t, "start": _utc(s) if s else "x"} for i, (t, s) in enumerate(listed)]
    want = None if expected is None else (expected[0], _utc(expected[1]))
    assert pb.scheduled_backup(full, diff, backups, NOW) == want


def test_the_text_status_says_how_old_the_last_backup_and_archived_wal_are() -> None:
    from pgha.ctl import _text_status
    keeper = {"uid": "keeper1", "healthy": True, "role": "primary", "address": "127.0.0.1:5433", "timeline": 1,
              "lsn": "0/3000000", "lag": None, "synchronous": False, "phase": "running", "error": "",
              "backup": {"stanza": True, "backups": 2, "seconds_since_backup": 100.0, "archived_count": 7.0,
                         "failed_count": 3.0, "seconds_since_archived": None, "restored": None}}
    st = {"cluster": {"name": "main", "phase": "normal", "primary": "keeper1", "generation": 3, "message": "",
                      "synchronous_standbys": []}, "keepers": [keeper], "sentinels": [], "proxies": []}
    text = _text_status(st)
    assert ("  backups: 2 in the repository, the last ended 100s ago; WAL last archived never, "
            "3 archive failures") in text
    keeper["backup"] = None
    assert "backups:" not in _text_status(st)
