"""The drill probe and report: the analysis as a pure function, and the tools on a real cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgha import netfault
from pgha.drill import Events, analyze, overlap, split_brain


def events(acks: list[float], errors: list[float] = (), start: float = 0.0, stop: float | None = None) -> Events:
    return Events(acks=[(i + 1, t) for i, t in enumerate(acks)], errors=[(t, "x") for t in errors],
                  started=start, stopped=stop)


def served(acks: list[tuple[float, str]]) -> Events:
    """Acknowledgements with the server that gave each."""
    ev = Events(acks=[(i + 1, t) for i, (t, _) in enumerate(acks)], started=0.0, stopped=acks[-1][0] + 0.1)
    ev.servers = {i + 1: srv for i, (_, srv) in enumerate(acks)}
    return ev


def test_overlap_negative_when_the_old_primary_stopped_before_the_new_one_acknowledged() -> None:
    proxy = served([(t / 10, "10.0.0.11:5433") for t in range(1, 50)] + [(8.5, "10.0.0.12:5433"), (8.6, "10.0.0.12:5433")])
    direct = served([(t / 10, "10.0.0.11:5433") for t in range(1, 70)])  # the isolated primary until 6.9 s
    r = overlap({"main": proxy, "direct": direct}, "10.0.0.11:5433", "10.0.0.12:5433", event=5.0)
    assert r["old_primary_last_ack_s"] == pytest.approx(1.9) and r["new_primary_first_ack_s"] == pytest.approx(3.5)
    assert r["overlap_s"] == pytest.approx(-1.6) and not r["two_primaries_acknowledged"]
    assert r["acknowledged_by_server"]["10.0.0.12:5433"]["acknowledged"] == 2


def test_overlap_positive_when_both_primaries_acknowledged_at_once() -> None:
    proxy = served([(1.0, "a:1"), (4.0, "b:1")])
    direct = served([(1.0, "a:1"), (4.5, "a:1")])
    r = overlap({"main": proxy, "direct": direct}, "a:1", "b:1", event=2.0)
    assert r["overlap_s"] == pytest.approx(0.5) and r["two_primaries_acknowledged"]


def test_events_file_keeps_the_acknowledging_server(tmp_path: Path) -> None:
    f = tmp_path / "e"
    f.write_text("start 1.0\nok 1 1.5 10.0.0.11:5433 3\nok 2 1.6\nerr 1.7 boom\nstop 2.0\n")
    ev = Events.load(f)
    assert ev.acks == [(1, 1.5), (2, 1.6)] and ev.servers == {1: "10.0.0.11:5433"} and ev.timelines == {1: 3}


def on_timelines(acks: list[tuple[float, int]]) -> Events:
    ev = Events(acks=[(i + 1, t) for i, (t, _) in enumerate(acks)])
    ev.timelines = {i + 1: tli for i, (_, tli) in enumerate(acks)}
    ev.servers = {i + 1: f"s{tli}" for i, (_, tli) in enumerate(acks)}
    return ev


def test_split_brain_none_when_each_timeline_ends_before_the_next_begins() -> None:
    a = on_timelines([(1.0, 1), (2.0, 1), (5.0, 2), (9.0, 3)])
    b = on_timelines([(1.5, 1), (5.5, 2), (8.0, 2), (9.5, 3)])  # timeline 1 again later: a rejoined primary
    r = split_brain({"a": a, "b": b})
    assert r["windows"] == [] and r["worst_s"] == 0.0 and set(r["timelines"]) == {"1", "2", "3"}


def test_split_brain_found_when_an_older_timeline_acknowledges_after_a_newer_one() -> None:
    via_proxy = on_timelines([(1.0, 1), (5.0, 2), (6.0, 2)])
    cut_off = on_timelines([(1.0, 1), (4.0, 1), (5.4, 1)])  # the isolated old primary still writing
    r = split_brain({"proxy": via_proxy, "cut_off": cut_off})
    assert len(r["windows"]) == 1 and r["windows"][0]["seconds"] == pytest.approx(0.4)
    assert r["windows"][0]["older_timeline"] == 1 and r["windows"][0]["late_acks"] == 1


def test_partition_rules_cut_the_peers_and_keep_the_controller() -> None:
    rules = netfault.ruleset("pgha_drill_main", ["10.0.0.12", "10.0.0.13"], ["10.0.0.1"], None)
    assert "ip saddr { 10.0.0.1 } accept" in rules and "ip daddr { 10.0.0.1 } accept" in rules
    assert rules.index("10.0.0.1 } accept") < rules.index("10.0.0.12, 10.0.0.13 } drop")
    assert "ip saddr { 10.0.0.12, 10.0.0.13 } drop" in rules and "ip daddr { 10.0.0.12, 10.0.0.13 } drop" in rules
    store_only = netfault.ruleset("pgha_drill_main", ["10.0.0.12"], [], [12380, 12379])
    assert "tcp dport { 12379, 12380 } drop" in store_only and "tcp sport { 12379, 12380 } drop" in store_only
    assert " drop\n" not in store_only.replace("} drop\n", "")  # nothing cut beyond those ports


@pytest.mark.parametrize("peers,keep,ports,why", [
    ([], [], None, "no peer"), (["h2"], [], None, "not an IP"), (["10.0.0.2"], ["x"], None, "not an IP"),
    (["10.0.0.2"], [], [0], "out of range")])
def test_partition_refuses_bad_input(peers, keep, ports, why) -> None:
    with pytest.raises(netfault.FaultError, match=why):
        netfault.ruleset("pgha_drill_main", peers, keep, ports)
    with pytest.raises(netfault.FaultError, match="partition name"):
        netfault.table_name("Bad-Name")


def test_outage_is_the_longest_gap_after_the_kill() -> None:
    acks = [0.1 * i for i in range(1, 51)] + [8.0 + 0.1 * i for i in range(10)]  # last before kill 5.0
    r = analyze(events(acks, stop=10.0), {"kill": 5.05})
    assert r["rto_s"] == pytest.approx(3.0, abs=0.001)
    assert r["first_write_after_event_s"] == pytest.approx(2.95, abs=0.001)
    assert r["events"]["kill"] == 0.0 and r["events"]["first_successful_write"] == pytest.approx(2.95, abs=0.001)


def test_an_acknowledgement_in_flight_at_the_kill_is_not_the_resumption() -> None:
    acks = [0.1 * i for i in range(1, 51)] + [5.06] + [8.0 + 0.1 * i for i in range(10)]
    r = analyze(events(acks, stop=10.0), {"freeze": 5.05})
    assert r["rto_s"] == pytest.approx(2.94, abs=0.001)
    assert r["events"]["first_successful_write"] == pytest.approx(2.95, abs=0.001)


def test_every_outage_is_listed_and_summed() -> None:
    acks = [0.02 * i for i in range(1, 100)] + [3.0 + 0.02 * i for i in range(50)] + [5.0 + 0.02 * i for i in range(50)]
    r = analyze(events(acks, stop=7.0), {"disrupt": 0.5})
    assert [o["seconds"] for o in r["outages"]] == pytest.approx([1.02, 1.02], abs=0.001)
    assert r["total_unavailable_s"] == pytest.approx(2.04, abs=0.002) and r["rto_s"] == pytest.approx(1.02, abs=0.001)


def test_no_write_after_the_kill_counts_to_the_end() -> None:
    r = analyze(events([1.0, 2.0], stop=9.0), {"kill": 2.5})
    assert r["rto_s"] == 7.0 and r["first_write_after_event_s"] is None


def test_transition_timeline_is_reported_relative_to_the_kill() -> None:
    r = analyze(events([1.0, 5.0], stop=6.0), {"kill": 1.5},
                {"detected": 4.0, "promoted": 4.2, "completed": 4.5})
    assert r["events"] == {"kill": 0.0, "detection": 2.5, "election": 2.7, "promotion": 3.0,
                           "first_successful_write": 3.5}
    # with the prober's and the new primary's own times (a forged odd value is left out)
    r = analyze(events([1.0, 5.0], stop=6.0), {"kill": 1.5},
                {"suspected": 1.6, "confirmed": 1.65, "detected": 1.7, "fence_acknowledged": 1.75, "promoted": 1.8,
                 "promote_called": 1.82, "promote_done": 1.9, "completed": 1.95, "aborted": "x"})
    assert list(r["events"]) == ["kill", "suspicion", "confirmation", "detection", "fence_acknowledged", "election",
                                 "promote_called", "promoted", "promotion", "first_successful_write"]
    assert r["events"]["confirmation"] == pytest.approx(0.15) and r["events"]["promoted"] == pytest.approx(0.4)


def test_series_counts_writes_per_bucket() -> None:
    r = analyze(events([0.01, 0.02, 0.15, 0.31], stop=0.35), {"kill": 0.2})
    assert r["series"]["writes"] == [2, 1, 0, 1]


def test_markers_need_the_disruption() -> None:
    with pytest.raises(ValueError, match="kill"):
        analyze(events([1.0]), {"resume": 2.0})


@pytest.mark.integration
def test_probe_and_report_on_a_crash(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory(spec={"synchronous_replication": True})
    st = c.wait_for(lambda s: s["cluster"]["phase"] == "normal" and any(k["sync_candidate"] for k in s["keepers"])
                    and all(p["target"] == s["cluster"]["primary"] for p in s["proxies"]),
                    timeout=120, what="a synchronous cluster with a candidate")
    old = st["cluster"]["primary"]
    port = next(iter(c.proxy_port.values()))
    dsn = c.dsn(port)
    bindir = os.path.dirname(sys.executable)
    out = tmp_path / "events.txt"
    probe = subprocess.Popen([os.path.join(bindir, "pgha-drill"), "probe", "--dsn", dsn, "--out", str(out),
                              "--table", "drill1"])
    try:
        time.sleep(2)
        kill = time.time()
        c.keepers[old].signal_tree(signal.SIGKILL)
        st = c.wait_for(lambda s: s["cluster"]["primary"] not in (None, old) and not s["cluster"]["transition"]
                        and all(p["target"] == s["cluster"]["primary"] for p in s["proxies"]),
                        timeout=60, what="failover")
        time.sleep(2)
    finally:
        probe.send_signal(signal.SIGTERM)
        probe.wait(30)
    assert probe.returncode == 0
    assert password_not_in(out, c.app_password)
    rep = subprocess.run([os.path.join(bindir, "pgha-drill"), "report", "--events", str(out),
                          "--markers", json.dumps({"kill": kill}),
                          "--transition", json.dumps(st["cluster"]["last_transition"]),
                          "--dsn", dsn, "--table", "drill1", "--out-json", str(tmp_path / "r.json"),
                          "--max-rto", "60", "--max-lost", "0"], capture_output=True, text=True, timeout=60)
    assert rep.returncode == 0, rep.stderr + rep.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lost_acknowledged_writes"] == 0 and report["acknowledged_writes"] > 50
    assert 0 < report["rto_s"] < 60
    ev = report["events"]
    assert ev["kill"] == 0 and 0 < ev["detection"] <= ev["election"] <= ev["promotion"]
    # the parties' own times: the prober's refused connection and confirmed crash, pg_promote() on
    # the new primary (its clock is this machine's)
    assert 0 < ev["suspicion"] <= ev["confirmation"] <= ev["detection"], ev
    assert ev["election"] <= ev["promote_called"] <= ev["promoted"] <= ev["promotion"], ev
    assert ev["detection"] <= ev["fence_acknowledged"] <= ev["election"], ev
    assert ev["first_successful_write"] >= ev["promotion"] - 0.5
    assert "writes unavailable" in rep.stdout
    # a budget that is exceeded fails the report
    bad = subprocess.run([os.path.join(bindir, "pgha-drill"), "report", "--events", str(out),
                          "--markers", json.dumps({"kill": kill}), "--dsn", dsn, "--table", "drill1",
                          "--out-json", str(tmp_path / "r2.json"), "--max-rto", "0.001"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "BUDGET EXCEEDED" in bad.stdout
    c.keepers[old].start()


def password_not_in(path: Path, password: str) -> bool:
    return password not in path.read_text()


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def test_disrupt_reaches_every_descendant(tmp_path: Path) -> None:
    """Stand-in processes for a keeper and a postmaster with backends that left its process group."""
    from pgha import drill

    keeper = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    postmaster = subprocess.Popen(["sh", "-c", "setsid sleep 60 & setsid sleep 60 & wait"], start_new_session=True)
    try:
        time.sleep(0.3)
        (tmp_path / "postgres").mkdir()
        (tmp_path / "pgha.lock").write_text(str(keeper.pid))
        (tmp_path / "postgres" / "postmaster.pid").write_text(f"{postmaster.pid}\n/data\n")
        kids = drill.descendants(keeper.pid) + drill.descendants(postmaster.pid)
        assert len(kids) == 4
        drill.disrupt("freeze", tmp_path)
        time.sleep(0.2)
        assert all(_state(p) == "T" for p in kids + [keeper.pid, postmaster.pid])
        drill.disrupt("resume", tmp_path)
        time.sleep(0.2)
        assert all(_state(p) != "T" for p in kids + [keeper.pid, postmaster.pid])
        res = drill.disrupt("crash", tmp_path)
        keeper.wait(10)
        postmaster.wait(10)
        time.sleep(0.2)
        assert all(not Path(f"/proc/{p}").exists() or _state(p) == "Z" for p in kids)
        assert len(res["signals"]) == 2
        with pytest.raises(RuntimeError, match="no running keeper"):
            drill.disrupt("crash", tmp_path)
    finally:
        for p in (keeper, postmaster):
            if p.poll() is None:
                p.kill()


class _FakeConn:
    """Stands in for a psycopg2 connection holding ids 1, 2 and 4."""

    closed = False

    def cursor(self) -> "_FakeConn":
        return self

    def __enter__(self) -> "_FakeConn":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str) -> None:
        assert sql == 'SELECT id FROM "t"'

    def fetchall(self) -> list[tuple[int]]:
        return [(1,), (2,), (4,)]

    def close(self) -> None:
        self.closed = True


def test_missing_lists_unstored_acknowledged_ids_in_order_and_closes() -> None:
    from pgha.drill import missing

    conn = _FakeConn()
    assert missing(conn, "t", [1, 3, 2, 5, 4]) == [3, 5]
    assert conn.closed
