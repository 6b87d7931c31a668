"""Integration-test harness: real etcd, real PostgreSQL and the real pgha agents on loopback.

Everything started here is a child process in its own session, tracked by PID, and killed by PID
(never by name: other test runs may share the machine). When the tests run as root the agents run
as an unprivileged user (``PGHA_TEST_USER``, default ``pghatest``) because PostgreSQL refuses root;
the cluster's temporary directory is made traversable for that user and each agent's directory is
chowned to it.

Environment:
    PGHA_AGENT_BIN     directory holding pgha-keeper, pgha-sentinel, pgha-proxy (default: next to
                       sys.executable); when root, must be executable by the agent user
    PGHA_AGENT_PYTHON  the agents' interpreter (informational; make test-engine sets it)
    PGHA_TEST_USER     agent OS user when running as root (default pghatest)
    PGHA_PG_BIN        PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
    PGHA_ETCD          etcd binary (default /usr/bin/etcd)
    PGHA_TEST_TMPDIR   where cluster directories are made (default: the system temp dir)
"""

from __future__ import annotations

import atexit
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PG_BIN = os.environ.get("PGHA_PG_BIN", "/usr/lib/postgresql/15/bin")
ETCD_BIN = os.environ.get("PGHA_ETCD", "/usr/bin/etcd")
AGENT_BIN = os.environ.get("PGHA_AGENT_BIN") or os.path.dirname(sys.executable)
TEST_USER = os.environ.get("PGHA_TEST_USER", "pghatest")
STORE_PREFIX = "pgha"

# --------------------------------------------------------------------------------------- helpers

_reserved_ports: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind port 0, release), never the same twice per process."""
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _reserved_ports:
                _reserved_ports.add(port)
                return port
    raise RuntimeError("could not find a free port")


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> bool:
    """True once something accepts TCP connections on host:port, False after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def running_as_root() -> bool:
    return os.geteuid() == 0


def agent_user() -> tuple[str, int, int]:
    """(name, uid, gid) the agents run as: TEST_USER when root, else whoever runs the tests."""
    if running_as_root():
        pw = pwd.getpwnam(TEST_USER)
    else:
        pw = pwd.getpwuid(os.geteuid())
    return pw.pw_name, pw.pw_uid, pw.pw_gid


def _others_can_traverse(path: Path) -> bool:
    """Whether every directory from / down to ``path`` can be entered by any user."""
    path = path.resolve()
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
        except OSError:
            return False
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return False
    return True


def missing_requirements(components: Iterable[str] = ("etcd", "postgres", "agents")) -> str | None:
    """Why integration tests cannot run here, or None when they can. Used for skip reasons."""
    components = set(components)
    if "etcd" in components and not os.access(ETCD_BIN, os.X_OK):
        return f"etcd not installed ({ETCD_BIN} missing; apt-get install etcd-server or run scripts/bootstrap.sh)"
    if "postgres" in components and not os.access(os.path.join(PG_BIN, "postgres"), os.X_OK):
        return f"PostgreSQL 15 not installed ({PG_BIN}/postgres missing; apt-get install postgresql-15)"
    if running_as_root() and components & {"postgres", "agents", "user"}:
        try:
            pwd.getpwnam(TEST_USER)
        except KeyError:
            return f"running as root but the agent user {TEST_USER!r} does not exist (run scripts/bootstrap.sh)"
    if "agents" in components:
        for prog in ("pgha-keeper", "pgha-sentinel", "pgha-proxy"):
            if not os.access(os.path.join(AGENT_BIN, prog), os.X_OK):
                return f"{prog} not found in {AGENT_BIN} (set PGHA_AGENT_BIN or run make test-engine)"
        if running_as_root() and not _others_can_traverse(Path(AGENT_BIN)):
            return (f"agents in {AGENT_BIN} cannot be run by {TEST_USER!r} (a parent directory is private); "
                    "use the agents venv: make test-engine sets PGHA_AGENT_BIN")
    return None


def pghactl_path() -> str:
    found = os.path.join(os.path.dirname(sys.executable), "pghactl")
    if os.access(found, os.X_OK):
        return found
    return shutil.which("pghactl") or found


# ------------------------------------------------------------------------------- process tables

def _read_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces or parentheses.
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[2]), int(rest[3])


def _process_table() -> dict[int, tuple[str, int, int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _read_stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    return table


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    st = _read_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _send(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover - a reused pid of someone else's
            pass


# ----------------------------------------------------------------------------------------- Agent

_live_agents: set[Agent] = set()
_live_lock = threading.Lock()


class Agent:
    """One long-running process (an agent, an etcd member, anything) started in its own session.

    ``pids()`` finds the process and every descendant, including daemons that left the process tree
    or the session (``pg_ctl start`` does both) but still run in ``work_dir`` (PostgreSQL's
    processes all keep the data directory as their working directory).
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, user: str | None = None,
                 work_dir: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.cwd = Path(cwd) if cwd else self.log_path.parent
        self.env = env
        self.user = user          # run as this OS user (only meaningful when root)
        self.work_dir = Path(work_dir) if work_dir else None
        self.proc: subprocess.Popen[bytes] | None = None
        self._known: set[int] = set()

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, pid={self.proc.pid if self.proc else None})"

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = _clean_env(self.env)
        kw: dict[str, Any] = {}
        if self.user and running_as_root():
            pw = pwd.getpwnam(self.user)
            kw.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
            env.setdefault("HOME", str(self.cwd))
            env["USER"] = env["LOGNAME"] = pw.pw_name
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.cwd, env=env, start_new_session=True, **kw)
        self._known = {self.proc.pid}
        with _live_lock:
            _live_agents.add(self)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The agent's pid (while it runs) plus every live descendant, sorted."""
        table = _process_table()
        roots: set[int] = set()
        if self.proc is not None:
            roots.add(self.proc.pid)
            sid = self.proc.pid  # start_new_session: the agent leads its own session
            roots.update(pid for pid, (_, _, _, s) in table.items() if s == sid)
        if self.work_dir is not None:
            wd = str(self.work_dir.resolve())
            uid = pwd.getpwnam(self.user).pw_uid if self.user and running_as_root() else os.geteuid()
            for pid in table:
                try:
                    if os.stat(f"/proc/{pid}").st_uid != uid:
                        continue
                except OSError:
                    continue
                cwd = _cwd(pid)
                if cwd and (cwd == wd or cwd.startswith(wd + "/")):
                    roots.add(pid)
        children: dict[int, list[int]] = {}
        for pid, (_, ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        found: set[int] = set()
        todo = [p for p in roots if p in table]
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(children.get(pid, []))
        alive = sorted(p for p in found if table[p][0] not in ("Z", "X"))
        self._known.update(alive)
        return alive

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to the agent and every descendant (for SIGSTOP/SIGCONT/SIGKILL drills)."""
        _send(self.pids(), sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the agent process alone; with SIGKILL, wait for it to be gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        _send([self.proc.pid], sig)
        if sig == signal.SIGKILL:
            self._reap(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the agent, wait up to ``timeout``, then SIGKILL it and anything it left behind."""
        tree = self.pids()
        graceful = False
        if self.proc is not None and self.proc.poll() is None:
            _send(tree, signal.SIGCONT)  # a SIGSTOPped process cannot act on SIGTERM
            _send([self.proc.pid], signal.SIGTERM)
            graceful = self._reap(timeout)
            if not graceful:
                _send(self.pids() or [self.proc.pid], signal.SIGKILL)
                self._reap(10)
        if graceful:
            # What the agent started may still be finishing its own shutdown: give it a moment.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_alive(p) for p in set(tree) | set(self.pids())):
                time.sleep(0.1)
        # Leftovers (e.g. a postmaster whose keeper was SIGKILLed) are killed.
        rest = sorted(p for p in set(tree) | set(self.pids()) if _alive(p))
        if rest:
            _send(rest, signal.SIGCONT)
            _send(rest, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_alive(p) for p in rest):
                time.sleep(0.05)
        with _live_lock:
            _live_agents.discard(self)

    def _reap(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    # -------------------------------------------------------------- logs
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _clean_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
           and not k.startswith("PGHA_") and not k.startswith("PYTEST_")}
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def stop_all_agents() -> None:
    """Stop every agent still running (session finalizer and atexit safety net)."""
    with _live_lock:
        agents = list(_live_agents)
    for a in agents:
        try:
            a.stop(timeout=5)
        except Exception:  # noqa: BLE001 - best effort, keep stopping the others
            pass


atexit.register(stop_all_agents)


# ----------------------------------------------------------------------------------------- etcd

class EtcdCluster:
    """``n`` members of etcd on loopback with fast elections, each with its own data directory."""

    def __init__(self, tmp: Path, n: int = 1, *, token: str | None = None, tls: bool = False) -> None:
        """``tls``: client and peer URLs on HTTPS with certificates from a CA made under ``tmp/pki``
        and client certificates required (``self.pki``, ``self.client_tls(name)``)."""
        self.tmp = Path(tmp)
        self.n = n
        self.token = token or "pgha-" + secrets.token_hex(4)
        self.client_ports = [free_port() for _ in range(n)]
        self.peer_ports = [free_port() for _ in range(n)]
        self.names = [f"etcd{i}" for i in range(n)]
        self.tls = tls
        scheme = "https" if tls else "http"
        self.endpoint_list = [f"{scheme}://127.0.0.1:{p}" for p in self.client_ports]
        self.endpoints = ",".join(self.endpoint_list)
        initial = ",".join(f"{name}={scheme}://127.0.0.1:{p}"
                           for name, p in zip(self.names, self.peer_ports, strict=True))
        self.pki = self.tmp / "pki"
        self.ca: Any = None
        if tls:
            from pgha import pki

            self.ca, _ = pki.ensure_ca(self.pki, "pgha test CA")
        self.members: list[Agent] = []
        for i, name in enumerate(self.names):
            argv = [
                ETCD_BIN, "--name", name, "--data-dir", str(self.tmp / name / "data"),
                "--listen-client-urls", self.endpoint_list[i], "--advertise-client-urls", self.endpoint_list[i],
                "--listen-peer-urls", f"{scheme}://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"{scheme}://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.token,
                "--heartbeat-interval", "100", "--election-timeout", "1000", "--pre-vote=true",  # as the etcd role runs it
                "--logger", "zap", "--log-outputs", "stderr",
            ]
            if tls:
                from pgha import pki

                key, crt, _ = pki.ensure_certificate(self.pki, self.ca, name, common_name=name, dns=("localhost",),
                                                     ips=("127.0.0.1",), server=True, client=True)
                ca = str(self.pki / "ca.crt")
                argv += ["--cert-file", str(crt), "--key-file", str(key), "--trusted-ca-file", ca,
                         "--client-cert-auth=true", "--peer-cert-file", str(crt), "--peer-key-file", str(key),
                         "--peer-trusted-ca-file", ca, "--peer-client-cert-auth=true"]
            (self.tmp / name).mkdir(parents=True, exist_ok=True)
            self.members.append(Agent(name, argv, self.tmp / "logs" / f"{name}.log", cwd=self.tmp / name))

    def start(self, timeout: float = 30.0) -> None:
        for m in self.members:
            if not m.is_running():
                m.start()
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for m in reversed(self.members):
            m.stop(timeout=10)

    def kill_member(self, i: int) -> None:
        self.members[i].kill(signal.SIGKILL)

    def start_member(self, i: int) -> None:
        """Restart member ``i`` on its existing data directory (the initial-cluster flags are ignored then)."""
        self.members[i].start()

    def client_tls(self, name: str) -> dict[str, str]:
        """EtcdStore keyword arguments for a client certificate ``name`` (made once; empty common
        name, as etcd's JSON gateway wants): {} without TLS."""
        if not self.tls:
            return {}
        from pgha import pki

        key, crt, _ = pki.ensure_certificate(self.pki, self.ca, f"client-{name}", organizational_unit=name,
                                             client=True)
        if running_as_root():  # the agents run as their own user: theirs to read, nobody else's
            _, uid, gid = agent_user()
            for path in (self.pki, key, crt, self.pki / "ca.crt"):
                os.chown(path, uid, gid)
        return {"ca_file": str(self.pki / "ca.crt"), "cert_file": str(crt), "key_file": str(key)}

    def health(self) -> list[dict[str, Any]]:
        from pgha.store.etcd import EtcdStore

        store = EtcdStore(self.endpoints, timeout=1.0, **self.client_tls("harness"))
        try:
            return store.member_health()
        finally:
            store.close()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running member answers healthy and they agree on a leader."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while True:
            running = {m.name for m in self.members if m.is_running()}
            last = [h for h, name in zip(self.health(), self.names, strict=True) if name in running]
            leaders = {h.get("leader") for h in last}
            if last and all(h["healthy"] for h in last) and len(leaders) == 1 and None not in leaders:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}\n{m.log_tail(20)}" for m in self.members)
                raise AssertionError(f"etcd not healthy after {timeout}s: {last}\n{tails}")
            time.sleep(0.2)


class Blackhole:
    """A TCP relay on loopback in front of ``target_port`` that can be cut like a partitioned
    network: while cut it keeps accepting connections and holds them without forwarding a byte
    either way, so the client's requests hang until their own timeouts (a refused connection would
    fail fast and hide the bugs a partition shows). ``heal()`` drops the held connections and
    forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut_event = threading.Event()
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.cut_event.set()

    def heal(self) -> None:
        self.cut_event.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self.heal()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        while self.cut_event.is_set() and not self._stop.is_set():
            time.sleep(0.02)  # connected, and never answered
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            client.close()
            return
        with self._lock:
            self._conns.append(upstream)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            src.settimeout(0.05)
        except OSError:  # closed by heal() already
            return
        while not self._stop.is_set():
            if self.cut_event.is_set():
                time.sleep(0.02)  # the data waits, as it would behind a partition
                continue
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for x in (src, dst):
            try:
                x.close()
            except OSError:
                pass


# -------------------------------------------------------------------------------------- cluster

class PghaCluster:
    """etcd + keepers + sentinels + proxies of one pgha cluster, all on loopback under ``tmp``.

    ``tmp`` must be traversable by the agent user (the ``cluster_factory`` fixture makes one that is).
    """

    def __init__(self, tmp: Path, *, keepers: int = 3, sentinels: int = 2, proxies: int = 1,
                 spec: dict[str, Any] | None = None, etcd_members: int = 1, cluster_name: str | None = None,
                 log_level: str = "info", secure_store: bool = False, pg_tls: bool = True,
                 backup_repo: bool = False) -> None:
        """``secure_store``: etcd on HTTPS wanting client certificates, with etcd authentication on and
        each component (and pghactl, as the operator) logging in as its own user (pgha.store.auth).
        ``pg_tls``: every keeper's PostgreSQL with a certificate from the cluster's CA (``tmp/pg-pki``),
        logins over TCP only with TLS, the members verifying each other (the default, as deployed).
        ``backup_repo``: every keeper archives WAL to, and backs up into, the pgBackRest repository
        ``tmp/backup-repo`` (``self.backup_repo``).

        Clients (``connect_rw`` ...) log in as the application role ``app`` to its database ``app``;
        the superuser only over a keeper's Unix socket (``connect_superuser``)."""
        self.tmp = Path(tmp)
        self.cluster_name = cluster_name or "t" + secrets.token_hex(4)
        self.spec = dict(spec or {})
        self.log_level = log_level
        self.user, self.uid, self.gid = agent_user()
        self.tmp.mkdir(parents=True, exist_ok=True)
        if running_as_root():
            os.chmod(self.tmp, 0o755)
            if not _others_can_traverse(self.tmp):
                raise RuntimeError(f"{self.tmp} is not reachable for {self.user!r}: use a directory whose parents "
                                   "all allow others to enter (the cluster_factory fixture makes one)")
        self.log_dir = self.tmp / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.etcd = EtcdCluster(self.tmp / "etcd", etcd_members, tls=secure_store)
        self.secure_store = secure_store
        self._store_auth_done = False

        self.su_password = secrets.token_urlsafe(18)
        self.repl_password = secrets.token_urlsafe(18)
        secrets_dir = self._own_dir(self.tmp / "secrets", 0o700)
        self.su_password_file = self._secret(secrets_dir / "su-password", self.su_password)
        self.repl_password_file = self._secret(secrets_dir / "repl-password", self.repl_password)
        self.app_password = secrets.token_urlsafe(18)
        self.app_password_file = self._secret(secrets_dir / "app-password", self.app_password)
        self.pg_tls = pg_tls
        self.pg_pki = self._own_dir(self.tmp / "pg-pki", 0o700)
        self.pg_ca_file = ""
        if pg_tls:
            from pgha import pki

            self._pg_ca, _ = pki.ensure_ca(self.pg_pki, f"pgha {self.cluster_name} test CA")
            self.pg_ca_file = str(self.pg_pki / "ca.crt")
        self.backup_repo = self._own_dir(self.tmp / "backup-repo", 0o750) if backup_repo else None
        self.store_passwords: dict[str, str] = {}
        self.store_password_files: dict[str, Path] = {}
        if secure_store:
            from pgha.store.auth import COMPONENTS

            for component in (*COMPONENTS, "root"):
                self.store_passwords[component] = secrets.token_urlsafe(18)
                self.store_password_files[component] = self._secret(secrets_dir / f"store-{component}",
                                                                    self.store_passwords[component])

        self.keepers: dict[str, Agent] = {}
        self.sentinels: dict[str, Agent] = {}
        self.proxies: dict[str, Agent] = {}
        self.keeper_pg_port: dict[str, int] = {}
        self.keeper_api_port: dict[str, int] = {}
        self.proxy_port: dict[str, int] = {}
        self.proxy_ro_port: dict[str, int] = {}
        self.proxy_api_port: dict[str, int] = {}
        self.sentinel_api_port: dict[str, int] = {}
        self._running = False
        self._initialised = False
        for i in range(keepers):
            self.add_keeper(f"keeper{i}")
        for i in range(sentinels):
            self._add_sentinel(f"sentinel{i}")
        for i in range(proxies):
            self._add_proxy(f"proxy{i}")

    # -------------------------------------------------------------- construction
    def _own_dir(self, path: Path, mode: int = 0o700) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        if running_as_root():
            os.chown(path, self.uid, self.gid)
        return path

    def _secret(self, path: Path, value: str) -> Path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        os.chmod(path, 0o600)
        if running_as_root():
            os.chown(path, self.uid, self.gid)
        return path

    def store_settings(self, component: str) -> dict[str, str]:
        """The PGHA_STORE_* settings of ``component`` (keeper, sentinel, proxy, operator) beyond the
        endpoints: its client certificate and etcd user on a secure store, nothing otherwise."""
        if not self.secure_store:
            return {}
        from pgha.store.auth import user_name

        tls = self.etcd.client_tls(component)
        return {"PGHA_STORE_CA_FILE": tls["ca_file"], "PGHA_STORE_CERT_FILE": tls["cert_file"],
                "PGHA_STORE_KEY_FILE": tls["key_file"], "PGHA_STORE_USER": user_name(self.cluster_name, component),
                "PGHA_STORE_PASSWORD_FILE": str(self.store_password_files[component])}

    def common_args(self, component: str = "operator") -> list[str]:
        flags = [("--" + k[len("PGHA_"):].lower().replace("_", "-"), v)
                 for k, v in self.store_settings(component).items()]
        if not self.secure_store:
            flags.append(("--store-insecure", "true"))  # the tests' etcd on loopback, plain HTTP
        return ["--cluster-name", self.cluster_name, "--store-endpoints", self.etcd.endpoints,
                "--store-prefix", STORE_PREFIX, "--log-level", self.log_level, *(x for f in flags for x in f)]

    def _agent(self, uid: str, prog: str, args: list[str], work_dir: Path | None = None) -> Agent:
        home = self._own_dir(self.tmp / uid, 0o700)
        component = prog.removeprefix("pgha-")
        return Agent(uid, [os.path.join(AGENT_BIN, prog), *self.common_args(component), *args],
                     self.log_dir / f"{uid}.log", cwd=home, user=self.user, work_dir=work_dir or home)

    def add_keeper(self, uid: str) -> Agent:
        """Define (not start) one more keeper; returns it. Call ``.start()`` on it to run it."""
        pg_port, api_port = free_port(), free_port()
        data_dir = self.tmp / uid / "data"
        tls: list[str] = []
        if self.pg_tls:
            from pgha import pki

            key, crt, _ = pki.ensure_certificate(self.pg_pki, self._pg_ca, uid, dns=("localhost",), ips=("127.0.0.1",),
                                                 server=True)
            if running_as_root():
                for path in (key, crt):
                    os.chown(path, self.uid, self.gid)
            tls = ["--pg-tls-cert-file", str(crt), "--pg-tls-key-file", str(key), "--pg-tls-ca-file", self.pg_ca_file]
        agent = self._agent(uid, "pgha-keeper", [
            "--uid", uid, "--data-dir", str(data_dir), "--pg-bin-path", PG_BIN,
            "--pg-listen-address", "127.0.0.1", "--pg-port", str(pg_port),
            "--pg-advertise-address", "127.0.0.1", "--pg-advertise-port", str(pg_port),
            "--pg-su-username", "postgres", "--pg-su-password-file", str(self.su_password_file),
            "--pg-repl-username", "repluser", "--pg-repl-password-file", str(self.repl_password_file),
            "--pg-app-username", "app", "--pg-app-password-file", str(self.app_password_file),
            "--api-listen-address", "127.0.0.1", "--api-port", str(api_port), *tls,
            *(["--backup-repo-path", str(self.backup_repo)] if self.backup_repo else []),
        ])
        self.keepers[uid] = agent
        self.keeper_pg_port[uid] = pg_port
        self.keeper_api_port[uid] = api_port
        return agent

    def _add_sentinel(self, uid: str) -> Agent:
        agent = self._agent(uid, "pgha-sentinel", ["--uid", uid])
        self.sentinels[uid] = agent
        return agent

    def _add_proxy(self, uid: str) -> Agent:
        port, ro_port, api_port = free_port(), free_port(), free_port()
        agent = self._agent(uid, "pgha-proxy", [
            "--uid", uid, "--listen-address", "127.0.0.1", "--port", str(port), "--ro-port", str(ro_port),
            "--api-listen-address", "127.0.0.1", "--api-port", str(api_port),
            *(["--pg-tls-ca-file", self.pg_ca_file] if self.pg_tls else []),
        ])
        self.proxies[uid] = agent
        self.proxy_port[uid] = port
        self.proxy_ro_port[uid] = ro_port
        self.proxy_api_port[uid] = api_port
        return agent

    @property
    def agents(self) -> dict[str, Agent]:
        return {**self.keepers, **self.sentinels, **self.proxies}

    # -------------------------------------------------------------- lifecycle
    def start(self, init: bool = True) -> None:
        """Start etcd, keepers, sentinels and proxies, then (the first time) ``pghactl init`` with the
        spec. Calling it on a running cluster does nothing; after ``stop()`` it restarts every process
        without initialising again."""
        if self._running:
            return
        self._running = True
        self.etcd.start()
        if self.secure_store and not self._store_auth_done:
            from pgha.model import keys as cluster_keys
            from pgha.store.auth import ensure_auth

            ensure_auth(self.etcd.endpoints, cluster_keys(STORE_PREFIX, self.cluster_name), self.cluster_name,
                        self.store_passwords, **self.etcd.client_tls("operator"))
            self._store_auth_done = True
        for group in (self.keepers, self.sentinels, self.proxies):
            for agent in group.values():
                if not agent.is_running():
                    agent.start()
        if init and not self._initialised:
            self.init()

    @property
    def running(self) -> bool:
        return self._running

    def init(self) -> subprocess.CompletedProcess[str]:
        """Initialise a fresh cluster (no --yes: there is nothing to overwrite)."""
        res = self.ctl("init", "--spec", json.dumps(self.spec))
        self._initialised = True
        return res

    def stop(self) -> None:
        """Stop everything in reverse order of starting. Idempotent."""
        for group in (self.proxies, self.sentinels, self.keepers):
            for agent in reversed(list(group.values())):
                agent.stop()
        self.etcd.stop()
        self._running = False

    # -------------------------------------------------------------- pghactl
    def ctl_env(self) -> dict[str, str]:
        return _clean_env({"PGHA_CLUSTER_NAME": self.cluster_name, "PGHA_STORE_ENDPOINTS": self.etcd.endpoints,
                           "PGHA_STORE_PREFIX": STORE_PREFIX, **self.store_settings("operator"),
                           **({} if self.secure_store else {"PGHA_STORE_INSECURE": "true"})})

    def ctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run pghactl (cluster name, endpoints and prefix given as PGHA_* environment)."""
        argv = [pghactl_path(), *args]
        res = subprocess.run(argv, env=self.ctl_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=timeout, cwd=self.tmp)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {res.returncode}\nstdout:\n{res.stdout}\n"
                                 f"stderr:\n{res.stderr}")
        return res

    def status(self) -> dict[str, Any]:
        return json.loads(self.ctl("status", "--format", "json", timeout=20).stdout)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60, what: str = "",
                 interval: float = 0.5) -> dict[str, Any]:
        """Poll ``status()`` until ``predicate(status)`` is true; return that status.

        On timeout raise AssertionError naming ``what``, with the last status (or error) and the tail
        of every agent's log."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = self.status()
                if predicate(last):
                    return last
            except (AssertionError, ValueError, subprocess.TimeoutExpired, KeyError, TypeError,
                    IndexError) as exc:
                last = f"<{type(exc).__name__}: {exc}>"
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate!r}\n"
                                     f"last status: {json.dumps(last, indent=1, default=str)}\n"
                                     f"{self.logs_tail()}")
            time.sleep(interval)

    def logs_tail(self, lines: int = 30) -> str:
        return "\n".join(f"----- {name} ({a.log_path})\n{a.log_tail(lines)}" for name, a in self.agents.items())

    # -------------------------------------------------------------- clients
    def _connect(self, port: int, **kw: Any) -> Any:
        import psycopg2

        return psycopg2.connect(**{**self.client_params(port), "connect_timeout": 3, **kw})

    def client_params(self, port: int) -> dict[str, Any]:
        """The application role's libpq parameters for ``port`` (a proxy's or a keeper's), password included."""
        return {"host": "127.0.0.1", "port": port, "user": "app", "password": self.app_password, "dbname": "app",
                **self.client_tls()}

    def client_tls(self) -> dict[str, str]:
        """What a client that checks the server's certificate passes to libpq (through a proxy too:
        the keepers' certificates name 127.0.0.1, where the proxies listen)."""
        return {"sslmode": "verify-full", "sslrootcert": self.pg_ca_file} if self.pg_tls else {}

    def dsn(self, port: int) -> str:
        """The application role's libpq connection string for ``port`` (a proxy's), password included."""
        import psycopg2.extensions

        return psycopg2.extensions.make_dsn(**self.client_params(port))

    def connect_superuser(self, uid: str, **kw: Any) -> Any:
        """psycopg2 connection as the superuser over keeper ``uid``'s Unix socket (the only way in:
        the keepers refuse the superuser over TCP). Needs root or the agents' user."""
        import psycopg2

        params: dict[str, Any] = {"host": str(self.tmp / uid / "data" / "run"), "port": self.keeper_pg_port[uid],
                                  "user": "postgres", "dbname": "postgres", "connect_timeout": 3}
        params.update(kw)
        return psycopg2.connect(**params)

    def _proxy(self, proxy: str | None) -> str:
        if proxy is None:
            if not self.proxies:
                raise ValueError("this cluster has no proxy")
            return next(iter(self.proxies))
        return proxy

    def connect_rw(self, proxy: str | None = None, **kw: Any) -> Any:
        """psycopg2 connection through a proxy's read-write port (to the primary)."""
        return self._connect(self.proxy_port[self._proxy(proxy)], **kw)

    def connect_ro(self, proxy: str | None = None, **kw: Any) -> Any:
        """psycopg2 connection through a proxy's read-only port (to a standby)."""
        return self._connect(self.proxy_ro_port[self._proxy(proxy)], **kw)

    def connect_keeper(self, uid: str, **kw: Any) -> Any:
        """psycopg2 connection straight to keeper ``uid``'s PostgreSQL."""
        return self._connect(self.keeper_pg_port[uid], **kw)

    # -------------------------------------------------------------- checks
    def check_logs(self) -> None:
        """AssertionError if any agent's log shows a Python traceback."""
        bad = [name for name, a in self.agents.items() if "Traceback" in a.log_text()]
        if bad:
            details = "\n".join(f"----- {n}\n{self.agents[n].log_tail(60)}" for n in bad)
            raise AssertionError(f"traceback in the log of {', '.join(bad)}\n{details}")

    def all_logs(self) -> list[Path]:
        return sorted(self.log_dir.glob("*.log")) + sorted((self.tmp / "etcd" / "logs").glob("*.log"))


def make_tmp_dir(prefix: str = "pgha-") -> Path:
    """A fresh directory the agent user can reach (unlike pytest's tmp_path under a private /tmp/pytest-of-root)."""
    base = os.environ.get("PGHA_TEST_TMPDIR") or tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(path, 0o755)
    return path


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "AGENT_BIN", "Agent", "ETCD_BIN", "EtcdCluster", "PG_BIN", "PghaCluster", "TEST_USER", "agent_user",
    "free_port", "make_tmp_dir", "missing_requirements", "pghactl_path", "remove_tree", "running_as_root",
    "stop_all_agents", "wait_port",
]
