# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""supervisor_programs, supervisord, ports_free and http_health: their pure parts as table tests, the
modules against a fake supervisorctl (a shell script that records its calls: named as a fake because
supervisor is not installed in ansible-test's venv; the molecule scenarios run the real one), real
sockets and a real HTTP server."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import threading

import pytest

from ansible_collections.pgha.cluster.plugins.modules import (
    http_health,
    paths,
    ports_free,
    supervisor_programs,
    supervisord,
)

STATUS = """etcd1                            RUNNING   pid 1, uptime 0:01:00
keeper1                          RUNNING   pid 2, uptime 0:01:00
keeper2                          STOPPED   Nov 27 07:00 AM
keeper3                          STARTING
nokeeper: ERROR (no such process)
"""


def test_parse_status():
    got = supervisor_programs.parse_status(STATUS, ["keeper1", "keeper2", "keeper3", "nokeeper", "keeper9"])
    assert got == {"keeper1": "RUNNING", "keeper2": "STOPPED", "keeper3": "STARTING",
                   "nokeeper": "MISSING", "keeper9": "MISSING"}


@pytest.mark.parametrize("states,rolling,restart,want", [
    ({"a": "RUNNING", "b": "RUNNING"}, False, [], []),
    ({"a": "RUNNING", "b": "STOPPED"}, False, [], [["start", "b"]]),
    ({"a": "FATAL", "b": "EXITED"}, False, [], [["start", "a", "b"]]),
    ({"a": "RUNNING", "b": "MISSING"}, True, [], [["add", "b"]]),
    ({"a": "RUNNING", "b": "RUNNING"}, False, ["a", "b"], [["restart", "a", "b"]]),
    # a stopped program is started, not also restarted
    ({"a": "STOPPED", "b": "RUNNING"}, False, ["a", "b"], [["start", "a"], ["restart", "b"]]),
    # rolling: the upgrade playbook restarts, the module does not
    ({"a": "RUNNING"}, True, ["a"], []),
])
def test_plan(states, rolling, restart, want):
    assert supervisor_programs.plan(states, rolling, restart) == want


@pytest.fixture
def fake_ctl(tmp_path):
    """A supervisorctl stand-in: prints tmp/status for `status`, records every call in tmp/calls."""
    ctl = tmp_path / "supervisorctl"
    (tmp_path / "status").write_text("a RUNNING pid 1\nb STOPPED\n")
    ctl.write_text("#!/bin/sh\nshift 2\necho \"$*\" >> %s/calls\n"
                   "case \"$1\" in status) cat %s/status; exit 3;; pid) echo 4242;; esac\n" % (tmp_path, tmp_path))
    ctl.chmod(ctl.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "supervisord.conf").write_text("[supervisord]\n")
    return tmp_path


def _args(d, **kw):
    args = dict(supervisorctl=str(d / "supervisorctl"), config=str(d / "supervisord.conf"),
                path=str(d / "comp.conf"), content="[program:a]\n[program:b]\n", programs=["a", "b"])
    args.update(kw)
    return args


def _calls(d):
    return (d / "calls").read_text().splitlines() if (d / "calls").exists() else []


def test_programs_new_file_updates_and_starts(run_module, fake_ctl):
    res, failed = run_module(supervisor_programs, _args(fake_ctl))
    assert not failed and res["changed"] and res["file_changed"]
    assert (fake_ctl / "comp.conf").read_text() == "[program:a]\n[program:b]\n"
    assert oct((fake_ctl / "comp.conf").stat().st_mode & 0o777) == "0o644"
    assert _calls(fake_ctl) == ["update", "status a b", "start b"]
    assert res["started"] == ["b"]


def test_programs_rerun_changes_nothing(run_module, fake_ctl):
    (fake_ctl / "comp.conf").write_text("[program:a]\n[program:b]\n")
    (fake_ctl / "status").write_text("a RUNNING pid 1\nb RUNNING pid 2\n")
    res, failed = run_module(supervisor_programs, _args(fake_ctl))
    assert not failed and not res["changed"]
    assert _calls(fake_ctl) == ["status a b"]


def test_programs_rolling_rereads_and_restarts_nothing(run_module, fake_ctl):
    (fake_ctl / "comp.conf").write_text("old\n")
    (fake_ctl / "status").write_text("a RUNNING pid 1\nb RUNNING pid 2\n")
    res, failed = run_module(supervisor_programs, _args(fake_ctl, rolling=True, restart=["a", "b"]))
    assert not failed and res["changed"]
    assert _calls(fake_ctl) == ["reread", "status a b"]


@pytest.mark.parametrize("before,membership_at_once,want", [
    # same programs, new definitions: rolling mode re-reads only
    ("[program:a]\ncommand=old\n[program:b]\n", True, "reread"),
    # a program added (a proxy's second worker): applied at once only when asked
    ("[program:a]\n", True, "update"),
    ("[program:a]\n", False, "reread"),
    # a program removed
    ("[program:a]\n[program:b]\n[program:c]\n", True, "update"),
])
def test_programs_rolling_membership_change(run_module, fake_ctl, before, membership_at_once, want):
    (fake_ctl / "comp.conf").write_text(before)
    (fake_ctl / "status").write_text("a RUNNING pid 1\nb RUNNING pid 2\n")
    res, failed = run_module(supervisor_programs, _args(fake_ctl, rolling=True, membership_at_once=membership_at_once))
    assert not failed and res["changed"]
    assert res["membership_changed"] == (want == "update" or not membership_at_once)
    assert _calls(fake_ctl) == [want, "status a b"]


def test_program_names_and_apply_command():
    assert supervisor_programs.program_names("; x\n[program:a]\nk=v\n [program:b_w2]\n[group:g]\n") == ["a", "b_w2"]
    assert supervisor_programs.apply_command(False, True, True, True) is None
    assert supervisor_programs.apply_command(True, False, False, False) == "update"
    assert supervisor_programs.apply_command(True, True, False, True) == "reread"
    assert supervisor_programs.apply_command(True, True, True, True) == "update"


def test_programs_restart_after_upgrade(run_module, fake_ctl):
    (fake_ctl / "comp.conf").write_text("[program:a]\n[program:b]\n")
    (fake_ctl / "status").write_text("a RUNNING pid 1\nb RUNNING pid 2\n")
    res, failed = run_module(supervisor_programs, _args(fake_ctl, restart=["a", "b"]))
    assert not failed and res["restarted"] == ["a", "b"]
    assert _calls(fake_ctl)[-1] == "restart a b"


def test_programs_check_mode_writes_nothing(run_module, fake_ctl):
    res, failed = run_module(supervisor_programs, _args(fake_ctl), check_mode=True, diff=True)
    assert not failed and res["changed"] and res["diff"]["after"].startswith("[program:a]")
    assert not (fake_ctl / "comp.conf").exists()
    assert _calls(fake_ctl) == ["status a b"]


def test_programs_without_supervisord_config_fails(run_module, tmp_path):
    res, failed = run_module(supervisor_programs, _args(tmp_path))
    assert failed and "no supervisord configuration" in res["msg"]


def test_supervisord_running_keeps_running(run_module, fake_ctl):
    exe = fake_ctl / "supervisord"
    exe.write_text("#!/bin/sh\necho started >> %s/calls\n" % fake_ctl)
    exe.chmod(0o755)
    args = dict(supervisord=str(exe), supervisorctl=str(fake_ctl / "supervisorctl"),
                config=str(fake_ctl / "supervisord.conf"), content="[supervisord]\n")
    res, failed = run_module(supervisord, args)
    assert not failed and not res["changed"] and res["pid"] == 4242 and not res["started"]
    assert "started" not in _calls(fake_ctl)
    res, failed = run_module(supervisord, dict(args, content="[supervisord]\nchanged\n"))
    assert not failed and res["changed"] and res["restart_needed"]


def test_ports_free_names_the_variable(run_module, tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        ports = [{"var": "keeper_pg_port", "address": "127.0.0.1", "port": port, "program": "keeper1"}]
        res, failed = run_module(ports_free, {"ports": ports, "supervisorctl": str(tmp_path / "none"),
                                              "config": str(tmp_path / "none.conf")})
        assert failed and "keeper_pg_port=%d" % port in res["msg"] and "keeper1" in res["msg"]
    finally:
        srv.close()
    res, failed = run_module(ports_free, {"ports": ports})
    assert not failed and res["probed"] == [port]


def test_ports_free_skips_the_running_owner():
    assert ports_free.running_programs("supervisord", STATUS) == ["etcd1", "keeper1", "keeper3"]
    units = "pgha-main-keeper1.service loaded active running x\nother.service loaded active running y\n"
    assert ports_free.running_programs("systemd", units, "pgha-main-") == ["keeper1"]
    ports = [{"var": "v", "address": "a", "port": 1, "program": "keeper1"},
             {"var": "w", "address": "a", "port": 2, "program": "keeper2"}]
    assert ports_free.conflicts(ports, ["keeper1"], lambda a, p: True) == ["w=2 (a, for keeper2)"]


def test_ports_free_a_shared_port_belongs_to_any_of_its_programs():
    # proxy workers share their client ports (--reuse-port): worker 2 running is worker 1's port taken by its own
    ports = [{"var": "proxy_port", "address": "a", "port": 5, "program": "proxy1", "shared_with": ["proxy1_w2"]}]
    assert ports_free.conflicts(ports, ["proxy1_w2"], lambda a, p: True) == []
    assert ports_free.conflicts(ports, ["keeper1"], lambda a, p: True) == ["proxy_port=5 (a, for proxy1)"]
    assert ports_free.conflicts(ports, [], lambda a, p: False) == []


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_port():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_http_health(run_module, http_port):
    res, failed = run_module(http_health, {"urls": {"p1": "http://127.0.0.1:%d/health" % http_port}, "timeout": 5})
    assert not failed and res["status"] == {"p1": 200}
    res, failed = run_module(http_health, {"urls": {"p1": "http://127.0.0.1:%d/health" % http_port,
                                                    "p2": "http://127.0.0.1:%d/bad" % http_port},
                                           "timeout": 1, "interval": 0.2})
    assert failed and "p2" in res["msg"] and "p1 " not in res["msg"] and res["status"]["p2"] == 503


def _me():
    import grp
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def test_paths_creates_fixes_and_then_changes_nothing(run_module, tmp_path):
    user, group = _me()
    secret = tmp_path / "c" / "secret"
    args = {"paths": [{"path": str(tmp_path / "c"), "owner": user, "group": group, "mode": "0755"},
                      {"path": str(tmp_path / "c" / "data"), "owner": user, "group": group, "mode": "0700"},
                      {"path": str(secret), "state": "file", "owner": user, "group": group, "mode": "0600"}]}
    res, failed = run_module(paths, args, check_mode=True)
    assert not failed and res["changed"] and not (tmp_path / "c").exists() and res["missing"] == [str(secret)]
    res, failed = run_module(paths, args)
    assert not failed and res["changed_paths"] == [str(tmp_path / "c"), str(tmp_path / "c" / "data")]
    assert oct((tmp_path / "c" / "data").stat().st_mode & 0o777) == "0o700"
    secret.write_text("x")
    secret.chmod(0o644)
    res, failed = run_module(paths, args, diff=True)
    assert not failed and res["changed_paths"] == [str(secret)] and oct(secret.stat().st_mode & 0o777) == "0o600"
    res, failed = run_module(paths, args)
    assert not failed and not res["changed"]


def test_paths_never_follows_a_link(run_module, tmp_path):
    import grp
    import pwd

    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    decoy = tmp_path / "decoy"
    decoy.mkdir(mode=0o700)
    before = decoy.stat()
    (tmp_path / "data").symlink_to(decoy)
    res, failed = run_module(paths, {"paths": [{"path": str(tmp_path / "data"), "owner": user, "group": group,
                                                "mode": "0755"}]})
    assert failed and "not a directory" in res["msg"]
    assert decoy.stat().st_mode == before.st_mode
    # a link swapped in between the check and the change: the change refuses it
    secret = tmp_path / "decoy-file"
    secret.write_text("x")
    secret.chmod(0o600)
    (tmp_path / "link").symlink_to(secret)
    with pytest.raises(OSError, match="symbolic link"):
        paths.set_owner_and_mode(str(tmp_path / "link"), False, os.getuid(), os.getgid(), 0o644)
    with pytest.raises(OSError, match="symbolic link"):
        paths.set_owner_and_mode(str(tmp_path / "data"), True, os.getuid(), os.getgid(), 0o755)
    assert oct(secret.stat().st_mode & 0o777) == "0o600" and oct(decoy.stat().st_mode & 0o777) == "0o700"


def test_paths_refuses_a_file_where_a_directory_belongs_and_unknown_users(run_module, tmp_path):
    (tmp_path / "f").write_text("")
    res, failed = run_module(paths, {"paths": [{"path": str(tmp_path / "f"), "mode": "0755"}]})
    assert failed and "not a directory" in res["msg"]
    res, failed = run_module(paths, {"paths": [{"path": str(tmp_path / "d"), "owner": "no-such-user-pgha",
                                                "mode": "0755"}]})
    assert failed and "no user no-such-user-pgha" in res["msg"] and not (tmp_path / "d").exists()
