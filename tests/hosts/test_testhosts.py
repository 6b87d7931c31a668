"""scripts/testhosts.py for real: hosts reached over SSH, isolation, partitions, pause, kill/start, destroy.

Needs root and the Debian packages tini openssh-server openssh-client nftables iproute2 (namespace
hosts) plus systemd-container and debootstrap (systemd hosts, marked slow: the first run debootstraps
a rootfs, about 70 s). Each test makes runs of its own (names from the pid) and destroys them in a
finally, then checks that nothing of them is left on the machine (netns, links, routes, nft tables,
mounts, folders, processes).

    /work/main/.venv/bin/pytest tests/hosts -v            # -m 'not slow' leaves out the systemd hosts
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import testhosts  # noqa: E402

TOOL = [sys.executable, str(ROOT / "scripts" / "testhosts.py")]
ANSIBLE = ROOT / ".venv" / "bin" / "ansible"
PREFIX = f"t{os.getpid() % 100000}"  # run names: PREFIX + one letter, at most 7 characters


def _missing(kind: str) -> list[str]:
    return [b for b in testhosts.NEEDS[kind] if shutil.which(b, path=testhosts.HOST_PATH) is None]


if os.geteuid() != 0:
    pytest.skip("testhosts needs root (network namespaces, bridges, mounts)", allow_module_level=True)
if _missing("namespace"):
    pytest.skip(f"testhosts needs {', '.join(_missing('namespace'))} (apt-get install {testhosts.DEBIAN_PACKAGES})",
                allow_module_level=True)

# a host-side ping (no iputils-ping here): one ICMP echo over a raw socket, exit 0 on the reply
PING = r"""
import os, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
dst, wait = sys.argv[1], float(sys.argv[2])
ident, data = os.getpid() & 0xFFFF, b"pgha-testhosts!!"
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.sendto(struct.pack("!BBHHH", 8, 0, csum(struct.pack("!BBHHH", 8, 0, 0, ident, 1) + data), ident, 1) + data, (dst, 0))
end = time.time() + wait
while time.time() < end:
    s.settimeout(max(end - time.time(), 0.01))
    try:
        buf, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    h = (buf[0] & 15) * 4
    if addr[0] == dst and buf[h] == 0 and struct.unpack("!H", buf[h + 4:h + 6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""

# echo server (argv: address port) and a line-driven client: for each token read from stdin it sends the
# token and prints "echo TOKEN" once the echo is back, or "timeout" (the token may still come later)
ECHO_SERVER = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen()
def serve(c):
    while True:
        d = c.recv(4096)
        if not d:
            return
        c.sendall(d)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""
ECHO_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("connected", flush=True)
buf = b""
for line in sys.stdin:
    token, wait = line.split()
    c.settimeout(float(wait))
    c.sendall(token.encode() + b"\n")
    try:
        while token.encode() + b"\n" not in buf:
            d = c.recv(4096)
            if not d:
                print("closed", flush=True)
                sys.exit(1)
            buf += d
        buf = buf.split(token.encode() + b"\n", 1)[1]
        print("echo " + token, flush=True)
    except socket.timeout:
        print("timeout", flush=True)
"""


# ---------------------------------------------------------------------------------------------
# helpers


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def ping(th: testhosts.TestHosts, src: str, dst: str, wait: float = 1.0) -> bool:
    return th.run(src, ["python3", "-c", PING, th.address(dst), str(wait)]).returncode == 0


def tcp_banner(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(16).startswith(b"SSH-")
    except OSError:
        return False


def host_tcp_banner(th: testhosts.TestHosts, src: str, dst: str, port: int = 22) -> bool:
    code = ("import socket, sys\ntry:\n s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n"
            " s.settimeout(1)\n sys.exit(0 if s.recv(16).startswith(b'SSH-') else 1)\nexcept OSError:\n sys.exit(1)\n")
    return th.run(src, ["python3", "-c", code, th.address(dst), str(port)]).returncode == 0


def proc_state(pid: int) -> str:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return data[data.rindex(")") + 2]


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


class EchoPair:
    """An echo server on `server` and a client on `client`, one established TCP connection between them."""

    def __init__(self, th: testhosts.TestHosts, client: str, server: str, port: int) -> None:
        opt = th.host_dir(server) / "opt"
        (opt / "echo_server.py").write_text(ECHO_SERVER)
        th.run(server, f"setsid -f python3 /opt/echo_server.py {th.address(server)} {port} "
                       ">/dev/null 2>&1 </dev/null", check=True)
        wait_for(lambda: host_tcp_listening(th, server, port), 5, f"echo server on {server}")
        self.proc = th.popen(client, ["python3", "-u", "-c", ECHO_CLIENT, th.address(server), str(port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.readline(10) == "connected"
        self.n = 0

    def readline(self, timeout: float) -> str:
        import selectors

        sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError("echo client said nothing")
        return self.proc.stdout.readline().strip()

    def send(self, wait: float) -> str:
        self.n += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"m{self.n} {wait}\n")
        self.proc.stdin.flush()
        return self.readline(wait + 10)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def host_tcp_listening(th: testhosts.TestHosts, host: str, port: int) -> bool:
    return f":{port:04X} " in th.run(host, ["cat", "/proc/net/tcp"]).stdout


def ssh_masters(th: testhosts.TestHosts) -> list[int]:
    """The controller's ssh ControlPersist masters of the run (their argv reads `ssh: CONTROLPATH [mux]`)."""
    cp = (str(th.run_dir / "ansible" / "cp") + "/").encode()
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            if cp in cmd and b"[mux]" in cmd:
                found.append(int(d))
    return found


def snapshot(th: testhosts.TestHosts) -> dict[str, Any]:
    """What a leak check needs, taken while the run exists."""
    st = th.state
    return {"name": th.name, "run_dir": str(th.run_dir), "subnet": st["subnet"],
            "controller": st["controller_address"], "kind": st["kind"],
            "pids": [p for h in st["hosts"] for p in (h.get("pid"), h.get("launcher_pid")) if p],
            "veths": [h["veth"] for h in st["hosts"] if h.get("veth")],
            "machines": [h["machine"] for h in st["hosts"] if h.get("machine")]}


def assert_no_trace(snap: dict[str, Any]) -> None:
    """Nothing of the run is left: netns, links, routes, addresses, nft tables, mounts, folders, processes."""
    name, run_dir, subnet = snap["name"], snap["run_dir"], snap["subnet"]
    netns = [n for n in sh("ip", "netns", "list").split() if n.startswith(f"pth-{name}-")]
    assert not netns, f"netns left: {netns}"
    links = [x["ifname"] for x in json.loads(sh("ip", "-j", "link", "show") or "[]")]
    left = [x for x in links if x == f"pth-{name}" or x.startswith(f"pv-{name}-") or x in snap["veths"]]
    assert not left, f"links left: {left}"
    net = subnet.rsplit(".", 1)[0] + "."
    routes = [r for r in sh("ip", "-4", "route", "show", "table", "all").splitlines() if net in r]
    assert not routes, f"routes left: {routes}"
    assert snap["controller"] not in sh("ip", "-4", "addr", "show"), "controller address left"
    tables = [t for t in sh("nft", "list", "tables").splitlines() if t.split()[-1:] == [f"pth_{name}"]]
    assert not tables, f"nft tables left: {tables}"
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if run_dir + "/" in line or line.split()[4] == run_dir]
    assert not mounts, f"mounts left: {mounts}"
    assert not Path(run_dir).exists(), f"{run_dir} left"
    prop = [m for m in snap["machines"] if (Path("/run/systemd/nspawn/propagate") / m).exists()]
    assert not prop, f"/run/systemd/nspawn/propagate entries left: {prop}"
    cgroups = [str(c) for base in {*testhosts._cgroup_bases(), *Path("/sys/fs/cgroup").iterdir()} if base.is_dir()
               for c in base.glob(f"pth-{name}-*")]
    assert not cgroups, f"cgroups left: {cgroups}"

    def live() -> list[str]:
        found = [f"{p} (recorded)" for p in snap["pids"] if proc_state(p) not in ("gone", "Z")]
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) != os.getpid():
                try:
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if run_dir + "/" in cmd or any(m + " " in cmd or m + "/" in cmd for m in snap["machines"]):
                    found.append(f"{d}: {cmd[:120]}")
        return found

    deadline = time.monotonic() + 5  # orphaned zombies may take a moment to be reaped by PID 1
    while live() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live(), f"processes left: {live()}"


@pytest.fixture
def make_run() -> Iterator[Callable[..., testhosts.TestHosts]]:
    """make_run(letter, **create_kwargs): a created run, destroyed (and checked for leftovers) afterwards."""
    runs: list[tuple[testhosts.TestHosts, dict[str, Any] | None]] = []

    def make(letter: str, **kwargs: Any) -> testhosts.TestHosts:
        th = testhosts.TestHosts(PREFIX + letter)
        th.destroy()  # a leftover of an interrupted earlier session with the same pid
        runs.append((th, None))
        th.create(**kwargs)
        runs[-1] = (th, snapshot(th))
        return th

    try:
        yield make
    finally:
        errors = []
        for th, snap in runs:
            try:
                snap = snap or (snapshot(th) if th.state_file.exists() else None)
                th.destroy()
                if snap:
                    assert_no_trace(snap)
            except Exception as e:  # noqa: BLE001 -- report every run, then fail
                errors.append(f"{th.name}: {e}")
        assert not errors, "; ".join(errors)


# ---------------------------------------------------------------------------------------------
# namespace hosts


def test_create_ssh_and_inventory(make_run: Callable[..., testhosts.TestHosts]) -> None:
    t0 = time.monotonic()
    th = make_run("a", hosts=3)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"3 namespace hosts took {elapsed:.1f} s"
    assert th.hosts == ["node1", "node2", "node3"]
    st = th.state
    assert st["status"] == "ready" and st["kind"] == "namespace"
    assert re.fullmatch(r"10\.1\d\d\.\d+\.0/24", st["subnet"])
    for h in th.hosts:
        r = th.ssh(h, "hostname; cat /proc/1/comm; ip -4 route show default")
        assert r.returncode == 0, r.stderr
        name, comm, route = r.stdout.splitlines()
        assert (name, comm) == (h, "tini")
        assert f"via {th.controller_address}" in route
        assert th.run(h, "hostname").stdout.strip() == h
    t1 = time.monotonic()
    assert "node3" in th.ssh("node1", "getent hosts node3").stdout
    assert time.monotonic() - t1 < 3, "name lookups in a host must not wait for an unreachable DNS server"
    yaml = pytest.importorskip("yaml")
    inv = yaml.safe_load(th.inventory.read_text())["all"]["children"]["testhosts"]
    assert sorted(inv["hosts"]) == th.hosts
    node1 = inv["hosts"]["node1"]
    assert node1["ansible_host"] == th.address("node1") and node1["ansible_user"] == "root"
    assert node1["ansible_ssh_private_key_file"] == str(th.ssh_key)
    assert "StrictHostKeyChecking=no" in node1["ansible_ssh_common_args"]
    assert node1["ansible_python_interpreter"] == "/usr/bin/python3"
    assert inv["vars"]["testhosts_controller_address"] == th.controller_address
    assert inv["vars"]["testhosts_kind"] == "namespace"


def test_hosts_are_isolated(make_run: Callable[..., testhosts.TestHosts]) -> None:
    th = make_run("b", hosts=2)
    marker = f"pth-{th.name}-marker"
    dirs = ("/etc", "/opt", "/var/tmp", "/root", "/home", "/tmp", "/run")
    th.ssh("node1", "; ".join(f"echo node1 > {d}/{marker}" for d in dirs), check=True)
    assert th.ssh("node1", " ".join(["cat", *(f"{d}/{marker}" for d in dirs)])).stdout == "node1\n" * len(dirs)
    for d in dirs:
        assert not Path(d, marker).exists(), f"{d}/{marker} visible in the root namespace"
    seen = th.ssh("node2", "; ".join(f"test -e {d}/{marker} && echo {d}" for d in dirs) + "; true").stdout
    assert seen == "", f"visible on node2: {seen.split()}"
    assert (th.host_dir("node1") / "opt" / marker).exists()
    # own PID namespace: the root namespace's processes are invisible
    assert str(os.getpid()) not in th.ssh("node1", "ls /proc").stdout.split()


def test_network_and_partitions(make_run: Callable[..., testhosts.TestHosts]) -> None:
    th = make_run("c", hosts=3)
    for a, b in (("node1", "node2"), ("node2", "node3"), ("node3", "node1")):
        assert ping(th, a, b) and ping(th, b, a), f"{a} <-> {b}"
    echo = EchoPair(th, "node1", "node2", 7000)
    try:
        assert echo.send(5) == "echo m1"
        label = th.partition("node1")
        assert label == "p1"
        # node1 is cut from node2 and node3, both ways, the open connection too
        assert echo.send(1.5) == "timeout"
        assert not ping(th, "node1", "node2") and not ping(th, "node2", "node1")
        assert not ping(th, "node3", "node1")
        # the controller still reaches node1; node2 <-> node3 still work
        assert th.ssh("node1", "hostname").stdout.strip() == "node1"
        assert ping(th, "node2", "node3") and ping(th, "node3", "node2")
        assert th.heal() == ["p1"]
        assert ping(th, "node1", "node2")
        # the connection lives on: m2 is retransmitted, then m3 comes back
        assert echo.send(20) == "echo m3"

        # only TCP port 7000: the connection stops, ping and SSH between the hosts go on
        assert th.partition("node1", ports=[7000], label="pg") == "pg"
        assert echo.send(1.5) == "timeout"
        assert ping(th, "node1", "node2")
        assert host_tcp_banner(th, "node1", "node2", 22)
        # two partitions at once, healed one at a time
        assert th.partition("node3", from_hosts=["node2"]) == "p1"
        assert not ping(th, "node3", "node2") and ping(th, "node3", "node1")
        assert sorted(th.state["partitions"]) == ["p1", "pg"]
        assert th.heal("pg") == ["pg"]
        assert echo.send(20) == "echo m5"
        assert not ping(th, "node2", "node3")
        with pytest.raises(testhosts.TestHostsError, match="no partition pg"):
            th.heal("pg")
        assert th.heal("p1") == ["p1"]
        assert ping(th, "node2", "node3")
        assert not [t for t in sh("nft", "list", "tables").splitlines() if t == f"table bridge pth_{th.name}"]
    finally:
        echo.close()


def test_pause_resume(make_run: Callable[..., testhosts.TestHosts]) -> None:
    th = make_run("d", hosts=2)
    th.run("node1", "setsid -f sh -c 'while :; do echo t >> /opt/ticks; sleep 0.05; done' >/dev/null 2>&1",
           check=True)
    ticks = th.host_dir("node1") / "opt" / "ticks"
    wait_for(ticks.exists, 5, "ticks")
    stopped = th.pause("node1")
    assert th.init_pid("node1") in stopped and len(stopped) >= 3  # tini, sshd, the loop
    assert all(proc_state(p) == "T" for p in th.pids("node1"))
    assert all(proc_state(p) != "T" for p in th.pids("node2"))
    size = ticks.stat().st_size
    time.sleep(0.5)
    assert ticks.stat().st_size == size, "a paused host went on writing"
    assert not tcp_banner(th.address("node1"), timeout=0.5), "sshd of a paused host answered"
    assert th.status()["hosts"][0]["paused"] is True
    th.resume("node1")
    assert all(proc_state(p) != "T" for p in th.pids("node1"))
    wait_for(lambda: ticks.stat().st_size > size, 5, "ticks after resume")
    assert th.ssh("node1", "hostname").stdout.strip() == "node1"


def test_kill_and_start(make_run: Callable[..., testhosts.TestHosts]) -> None:
    th = make_run("e", hosts=2)
    th.ssh("node1", "echo disk > /opt/keep; echo conf > /etc/keep; echo gone > /tmp/gone", check=True)
    old = th.pids("node1")
    th.kill("node1")
    assert th.init_pid("node1") is None and th.pids("node1") == []
    assert all(proc_state(p) in ("gone", "Z") for p in old)
    assert not tcp_banner(th.address("node1"))
    assert th.ssh("node1", "true", timeout=20).returncode == 255
    assert th.ssh("node2", "hostname").stdout.strip() == "node2"
    with pytest.raises(testhosts.TestHostsError, match="not running"):
        th.pause("node1")
    assert th.start("node1") is True
    assert th.start("node1") is False  # running already
    r = th.ssh("node1", "cat /opt/keep /etc/keep; test -e /tmp/gone || echo no-tmp")
    assert r.stdout.split() == ["disk", "conf", "no-tmp"]
    assert ping(th, "node1", "node2")
    th.stop("node2")
    assert not tcp_banner(th.address("node2"))
    th.start("node2")
    assert th.ssh("node2", "hostname").stdout.strip() == "node2"


def test_run_command(make_run: Callable[..., testhosts.TestHosts]) -> None:
    th = make_run("f", hosts=1, host_names=["db-one"])
    assert th.hosts == ["db-one"]
    r = th.run("db-one", "hostname; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "db-one\n", "err\n")
    r = th.run("db-one", ["cat", "/proc/1/comm"], check=True)
    assert r.stdout == "tini\n"
    with pytest.raises(testhosts.TestHostsError, match="host node4 not in run"):
        th.run("node4", "true")


def test_cli(make_run: Callable[..., testhosts.TestHosts]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TOOL, *args], capture_output=True, text=True, timeout=120)

    r = cli("--help")
    assert r.returncode == 0
    for word in ("create", "destroy", "list", "status", "partition", "heal", "pause", "resume", "kill", "start",
                 "run"):
        assert word in r.stdout
    name = PREFIX + "g"
    snap = None
    try:
        r = cli("create", name, "--hosts", "2")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert [h["name"] for h in st["hosts"]] == ["node1", "node2"] and all(h["running"] for h in st["hosts"])
        snap = snapshot(testhosts.TestHosts(name))
        r = cli("create", name)
        assert r.returncode == 1 and f"run {name} exists" in r.stderr
        assert name in [x["name"] for x in json.loads(cli("list").stdout)]
        st = json.loads(cli("status", name).stdout)
        assert all(h["ssh"] for h in st["hosts"])
        r = cli("partition", name, "--isolate", "node1", "--ports", "2379,2380", "--label", "etcd")
        assert json.loads(r.stdout)["ports"] == [2379, 2380]
        assert "tcp dport { 2379, 2380 }" in sh("nft", "list", "table", "bridge", f"pth_{name}")
        assert json.loads(cli("heal", name).stdout) == {"healed": ["etcd"]}
        r = cli("run", name, "node2", "--", "sh", "-c", "hostname; exit 7")
        assert (r.returncode, r.stdout) == (7, "node2\n")
        r = cli("run", name, "node2", "--json", "--", "cat", "/etc/hostname")
        assert json.loads(r.stdout) == {"returncode": 0, "stdout": "node2\n", "stderr": ""}
        r = cli("kill", name, "node9")
        assert r.returncode == 1 and f"host node9 not in run {name}" in r.stderr
        assert cli("kill", name, "node2").returncode == 0
        assert json.loads(cli("status", name).stdout)["hosts"][1]["running"] is False
        assert cli("start", name, "node2").returncode == 0
        assert cli("ssh", name, "node2", "--", "cat", "/proc/1/comm").stdout == "tini\n"
        assert "ANSIBLE_SSH_CONTROL_PATH_DIR=" in cli("env", name).stdout
        r = cli("destroy", name)
        assert r.returncode == 0, r.stderr
        assert_no_trace(snap)
        assert cli("destroy", name).returncode == 0  # idempotent
        r = cli("status", name)
        assert r.returncode == 1 and "no run" in r.stderr
        r = cli("create", "Bad_Name")
        assert r.returncode == 1 and "bad run name" in r.stderr
        # destroy --all, in a state root of its own (other runs on this machine are none of our business)
        root = f"/srv/pgha-testhosts-pytest-{os.getpid()}"
        assert cli("create", name, "--hosts", "1", "--state-dir", root).returncode == 0
        snap = snapshot(testhosts.TestHosts(name, root))
        assert [x["name"] for x in json.loads(cli("--state-dir", root, "list").stdout)] == [name]
        r = cli("destroy", "--all", "--state-dir", root)
        assert r.returncode == 0 and list(json.loads(r.stdout)) == [name]
        assert_no_trace(snap)
        assert json.loads(cli("list", "--state-dir", root).stdout) == []
    finally:
        testhosts.TestHosts(name).destroy()
        testhosts.TestHosts(name, f"/srv/pgha-testhosts-pytest-{os.getpid()}").destroy()
        shutil.rmtree(f"/srv/pgha-testhosts-pytest-{os.getpid()}", ignore_errors=True)


def test_destroy_leaves_nothing(make_run: Callable[..., testhosts.TestHosts]) -> None:
    th = make_run("h", hosts=3)
    snap = snapshot(th)
    th.partition("node2", ports=[5432])
    th.partition("node3", from_hosts=["node1"])
    th.pause("node1")
    th.run("node3", "setsid -f sleep 600 >/dev/null 2>&1", check=True)
    # a controller-side ssh connection that would outlive the run
    ssh = subprocess.Popen([*th.ssh_args("node2"), "sleep 600"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(th.pids("node2")) >= 4, 10, "the ssh session on node2")
    removed = th.destroy()
    assert ssh.wait(10) is not None
    assert f"pth-{th.name}" in removed["links"] and len(removed["netns"]) == 3
    assert_no_trace(snap)
    assert not any(th.destroy().values())  # again: nothing to do, no error
    assert not th.exists()


def test_destroy_without_state_and_after_failed_create(make_run: Callable[..., testhosts.TestHosts],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    th = make_run("i", hosts=2)
    snap = snapshot(th)
    th.state_file.unlink()  # only the naming conventions are left to find the run
    th.destroy()
    assert_no_trace(snap)

    th.state_file.parent.mkdir(parents=True)
    th.state_file.write_text('{"name": "broken", "hos')  # a partial state file
    th.destroy()
    assert not th.run_dir.exists()

    # a create that fails half-way cleans up after itself (or keeps everything for debugging)
    real_launch = testhosts.TestHosts._launch

    def failing_launch(self: testhosts.TestHosts, st: dict[str, Any], h: dict[str, Any]) -> None:
        if h["index"] == 2:
            raise testhosts.TestHostsError("simulated failure")
        real_launch(self, st, h)

    monkeypatch.setattr(testhosts.TestHosts, "_launch", failing_launch)
    with pytest.raises(testhosts.TestHostsError, match="simulated"):
        th.create(hosts=2)
    assert not th.exists()
    with pytest.raises(testhosts.TestHostsError, match="simulated"):
        th.create(hosts=2, keep_on_failure=True)
    assert th.exists() and th.leftovers()["netns"]
    snap = snapshot(th)
    th.destroy()
    assert_no_trace(snap)


def test_two_runs_side_by_side(make_run: Callable[..., testhosts.TestHosts]) -> None:
    a = make_run("j", hosts=2)
    b = make_run("k", hosts=2)
    assert a.state["subnet"] != b.state["subnet"]
    # a host started after run b exists gets copies of b's mounts: b's destroy must still free everything
    a.kill("node1")
    a.start("node1")
    snap = snapshot(b)
    b.destroy()
    assert_no_trace(snap)
    for h in a.hosts:
        assert a.ssh(h, "hostname").stdout.strip() == h
    assert ping(a, "node1", "node2")
    # the guard table: hosts reach their own subnet only
    assert "ip saddr" in sh("nft", "list", "table", "inet", f"pth_{a.name}")


def _ansible_service_mgr(th: testhosts.TestHosts) -> dict[str, str]:
    if not ANSIBLE.exists():
        pytest.skip(f"{ANSIBLE} is missing (scripts/bootstrap.sh makes the venv)")
    env = dict(os.environ, **th.ansible_env(), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CONFIG", None)
    r = subprocess.run([str(ANSIBLE), "-i", str(th.inventory), "testhosts", "-o", "-m", "ansible.builtin.setup",
                        "-a", "gather_subset=!all,!min,service_mgr"], capture_output=True, text=True, env=env,
                       cwd=th.run_dir, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(re.findall(r'^(\S+) \| SUCCESS => .*"ansible_service_mgr": "(\w+)"', r.stdout, re.M))


def test_ansible_sees_tini(make_run: Callable[..., testhosts.TestHosts]) -> None:
    th = make_run("l", hosts=2)
    assert _ansible_service_mgr(th) == {"node1": "tini", "node2": "tini"}
    # ansible leaves ssh ControlMaster processes behind (ControlPersist): destroy (fixture) ends them


# ---------------------------------------------------------------------------------------------
# systemd hosts


@pytest.mark.slow
def test_systemd_hosts(make_run: Callable[..., testhosts.TestHosts]) -> None:
    if _missing("systemd"):
        pytest.skip(f"systemd hosts need {', '.join(_missing('systemd'))} (apt-get install systemd-container)")
    if not testhosts.rootfs_path().is_dir() and shutil.which("debootstrap") is None:
        pytest.skip("systemd hosts need debootstrap to build their rootfs (apt-get install debootstrap)")
    t0 = time.monotonic()
    th = make_run("s", kind="systemd", hosts=2)
    print(f"2 systemd hosts in {time.monotonic() - t0:.1f} s")
    for h in th.hosts:
        r = th.ssh(h, "systemctl is-system-running; hostname; cat /proc/1/comm")
        state, name, comm = r.stdout.split()
        assert state in ("running", "degraded") and (name, comm) == (h, "systemd")
        # the packages' own services stay masked
        assert th.ssh(h, "systemctl is-active postgresql etcd").stdout.split() == ["inactive", "inactive"]
    assert ping(th, "node1", "node2")
    # a unit written over SSH starts, and Restart=always brings it back after a kill
    unit = ("[Service]\nExecStart=/bin/sleep 1000\nRestart=always\nRestartSec=0.2\n\n"
            "[Install]\nWantedBy=multi-user.target\n")
    for h in th.hosts:
        th.ssh(h, "cat > /etc/systemd/system/pth-demo.service && systemctl daemon-reload && "
                  "systemctl enable --now pth-demo.service", input=unit, check=True)

    def main_pid(host: str = "node1") -> int:
        out = th.ssh(host, "systemctl show -p MainPID --value pth-demo.service").stdout.strip()
        return int(out or 0)

    first = wait_for(main_pid, 10, "pth-demo's MainPID")
    th.ssh("node1", f"kill -9 {first}", check=True)
    second = wait_for(lambda: (p := main_pid()) not in (0, first) and p, 15, "pth-demo restarted")
    assert second != first
    assert th.ssh("node1", "systemctl is-active pth-demo.service").stdout.strip() == "active"
    # each container has cgroups of its own: stopping the unit on node1 leaves node2's alone
    other = wait_for(lambda: main_pid("node2"), 10, "pth-demo on node2")
    th.ssh("node1", "systemctl disable --now pth-demo.service", check=True)
    time.sleep(0.5)
    assert th.ssh("node2", "systemctl is-active pth-demo.service").stdout.strip() == "active"
    assert main_pid("node2") == other
    # partitions work on nspawn's veths as well
    th.partition("node1")
    assert not ping(th, "node1", "node2") and th.ssh("node1", "true").returncode == 0
    th.heal()
    assert ping(th, "node1", "node2")
    assert _ansible_service_mgr(th) == {"node1": "systemd", "node2": "systemd"}
    assert len(ssh_masters(th)) == 2  # Ansible's ControlPersist masters, one per host
    # pause, kill, start: a power cycle keeps the disk, the enabled unit comes back
    th.pause("node2")
    assert all(proc_state(p) == "T" for p in th.pids("node2"))
    th.resume("node2")
    th.ssh("node2", "echo disk > /opt/keep", check=True)
    th.kill("node2")
    assert not tcp_banner(th.address("node2")) and th.pids("node2") == []
    assert not (Path("/run/systemd/nspawn/propagate") / th.state["hosts"][1]["machine"]).exists()
    assert len(ssh_masters(th)) == 1, "the master to the killed host would hang the next Ansible run"
    th.start("node2")
    assert th.ssh("node2", "cat /opt/keep").stdout == "disk\n"
    assert wait_for(lambda: main_pid("node2"), 20, "pth-demo on node2 after the power cycle")
    assert _ansible_service_mgr(th) == {"node1": "systemd", "node2": "systemd"}
    # the fixture's destroy ends the remaining masters and checks that nothing is left
