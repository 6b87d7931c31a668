"""A 3-member Patroni cluster on loopback, run as a black box for the side-by-side benchmarks.

Patroni (``bench/requirements-patroni.txt``) lives in its own venv (``PGHA_PATRONI_VENV``, default
/opt/pgha/bench-venv, made from /usr/bin/python3 so the agent user can run it). Each member is a
``harness.Agent`` running ``patroni <config>`` as the agent user, with its data directory as
``work_dir`` so that SIGKILL drills reach its PostgreSQL too. The store is the same real etcd as
pgha's (``harness.EtcdCluster``), through Patroni's ``etcd3`` client (etcd's v3 JSON gateway).

Timings: ``PATRONI_TIMINGS["default"]`` are Patroni's defaults; ``"fast"`` are the smallest values
Patroni accepts (it raises anything lower to ttl 20, loop_wait 1, retry_timeout 3 and keeps
``loop_wait + 2 * retry_timeout <= ttl``).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from common import harness

PATRONI_VENV = os.environ.get("PGHA_PATRONI_VENV", "/opt/pgha/bench-venv")
PATRONI = os.path.join(PATRONI_VENV, "bin", "patroni")
PATRONICTL = os.path.join(PATRONI_VENV, "bin", "patronictl")

PATRONI_TIMINGS: dict[str, dict[str, int]] = {
    "default": {"ttl": 30, "loop_wait": 10, "retry_timeout": 10},
    "fast": {"ttl": 20, "loop_wait": 1, "retry_timeout": 3},
}


def missing() -> str | None:
    if not os.access(PATRONI, os.X_OK):
        return (f"patroni not installed in {PATRONI_VENV} (make bench installs it: "
                "python3 -m venv /opt/pgha/bench-venv && pip install -r bench/requirements-patroni.txt)")
    return None


def version() -> str:
    return subprocess.run([PATRONI, "--version"], capture_output=True, text=True).stdout.strip()


def _yaml(value: Any, indent: int = 0) -> str:
    """Just enough YAML for Patroni's config (dicts, lists, scalars); JSON scalars are valid YAML."""
    pad = " " * indent
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:\n{_yaml(v, indent + 2)}")
            else:
                out.append(f"{pad}{k}: {json.dumps(v)}")
    else:
        for v in value:
            out.append(f"{pad}- {json.dumps(v)}")
    return "\n".join(out)


class PatroniCluster:
    """etcd + ``members`` Patroni members under ``tmp`` (traversable by the agent user)."""

    def __init__(self, tmp: Path, *, members: int = 3, timings: str = "default", etcd_members: int = 1,
                 scope: str | None = None, synchronous_mode: bool = False) -> None:
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tmp, 0o755)
        self.user, self.uid, self.gid = harness.agent_user()
        self.scope = scope or "p" + secrets.token_hex(4)
        self.timings = dict(PATRONI_TIMINGS[timings])
        self.etcd = harness.EtcdCluster(self.tmp / "etcd", etcd_members)
        self.su_password = secrets.token_urlsafe(18)
        self.repl_password = secrets.token_urlsafe(18)
        self.names = [f"pg{i}" for i in range(members)]
        self.pg_port = {n: harness.free_port() for n in self.names}
        self.api_port = {n: harness.free_port() for n in self.names}
        self.members: dict[str, harness.Agent] = {}
        self.config_path: dict[str, Path] = {}
        self.synchronous_mode = synchronous_mode
        for n in self.names:
            home = self.tmp / n
            home.mkdir(exist_ok=True)
            os.chmod(home, 0o700)
            if harness.running_as_root():
                os.chown(home, self.uid, self.gid)
            cfg = home / "patroni.yml"
            cfg.write_text(self._config(n) + "\n")
            os.chmod(cfg, 0o600)
            if harness.running_as_root():
                os.chown(cfg, self.uid, self.gid)
            self.config_path[n] = cfg
            self.members[n] = harness.Agent(n, [PATRONI, str(cfg)], self.tmp / "logs" / f"{n}.log", cwd=home,
                                            user=self.user, work_dir=home)

    def _config(self, name: str) -> str:
        home = self.tmp / name
        dcs: dict[str, Any] = {**self.timings, "maximum_lag_on_failover": 1048576,
                               "postgresql": {"use_pg_rewind": True, "parameters": {"wal_log_hints": "on"}}}
        if self.synchronous_mode:
            dcs["synchronous_mode"] = True
        cfg = {
            "scope": self.scope, "namespace": "/patroni/", "name": name,
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{self.api_port[name]}",
                        "connect_address": f"127.0.0.1:{self.api_port[name]}"},
            "etcd3": {"hosts": [e.split("//", 1)[1] for e in self.etcd.endpoint_list]},
            "bootstrap": {"dcs": dcs, "initdb": [{"encoding": "UTF8"}, "data-checksums"]},
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port[name]}",
                "connect_address": f"127.0.0.1:{self.pg_port[name]}",
                "data_dir": str(home / "data"), "bin_dir": harness.PG_BIN, "pgpass": str(home / "pgpass"),
                "authentication": {"superuser": {"username": "postgres", "password": self.su_password},
                                   "replication": {"username": "replicator", "password": self.repl_password}},
                "pg_hba": ["local all all trust", "host all all 127.0.0.1/32 scram-sha-256",
                           "host replication replicator 127.0.0.1/32 scram-sha-256"],
                "parameters": {"unix_socket_directories": str(home)},
            },
        }
        return _yaml(cfg)

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if not all(m.is_running() for m in self.etcd.members):
            self.etcd.start()
        for m in self.members.values():
            if not m.is_running():
                m.start()

    def stop(self) -> None:
        for m in self.members.values():
            m.stop(timeout=20)
        self.etcd.stop()

    # -------------------------------------------------------------- state
    def cluster(self, exclude: str | None = None) -> dict[str, Any] | None:
        """GET /cluster from the first member that answers (skipping ``exclude``)."""
        for n in self.names:
            if n == exclude or not self.members[n].is_running():
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port[n]}/cluster", timeout=2) as r:
                    return json.loads(r.read())
            except (OSError, urllib.error.URLError, ValueError):
                continue
        return None

    def leader(self, c: dict[str, Any] | None) -> str | None:
        if not c:
            return None
        return next((m["name"] for m in c.get("members", []) if m.get("role") in ("leader", "master")
                     and m.get("state") == "running"), None)

    def healthy(self, c: dict[str, Any] | None) -> bool:
        """One running leader and every other member streaming from it."""
        if not c or len(c.get("members", [])) < len(self.names) or not self.leader(c):
            return False
        return all(m.get("state") in ("running", "streaming") and
                   (m.get("role") in ("leader", "master") or m.get("state") == "streaming")
                   for m in c["members"])

    def wait_for(self, pred: Any, timeout: float, what: str, exclude: str | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        c = None
        while time.monotonic() < deadline:
            c = self.cluster(exclude)
            if pred(c):
                assert c is not None
                return c
            time.sleep(0.1)
        tails = "\n".join(f"--- {n}\n{m.log_tail(15)}" for n, m in self.members.items())
        raise AssertionError(f"patroni: timed out after {timeout}s waiting for {what}; last /cluster: {c}\n{tails}")

    # -------------------------------------------------------------- clients
    def dsn(self) -> str:
        hosts = ",".join("127.0.0.1" for _ in self.names)
        ports = ",".join(str(self.pg_port[n]) for n in self.names)
        return f"host={hosts} port={ports} user=postgres dbname=postgres target_session_attrs=read-write"

    def connect_rw(self, **kw: Any) -> Any:
        import psycopg2

        params: dict[str, Any] = {"password": self.su_password, "connect_timeout": 3}
        params.update(kw)
        return psycopg2.connect(self.dsn(), **params)

    def switchover(self, leader: str, candidate: str) -> subprocess.CompletedProcess[str]:
        cfg = self.config_path[leader]
        res = subprocess.run([PATRONICTL, "-c", str(cfg), "switchover", "--leader", leader, "--candidate", candidate,
                              "--force", self.scope], capture_output=True, text=True, timeout=180)
        if res.returncode != 0:
            raise AssertionError(f"patronictl switchover failed:\n{res.stdout}\n{res.stderr}")
        return res
