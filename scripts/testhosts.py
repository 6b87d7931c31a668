#!/usr/bin/env python3
"""testhosts: several real hosts on this machine, reached over real SSH, for pgha's tests and drills.

Two kinds of hosts, both on a Linux bridge of their own with a private /24 (the controller, i.e. the
root namespace, holds the bridge's address .1; host N gets .10+N):

  namespace  `ip netns` + veth + `unshare --mount --pid --uts --ipc` + tini as PID 1 + sshd. /etc /var
             /root /home are overlays of the real directories, /opt is a per-host folder, /run and
             /tmp are tmpfs; /usr and the package database are the machine's own. About 1 s for 3.
  systemd    systemd-nspawn containers booting systemd as PID 1 on an overlay of a Debian bookworm
             rootfs that is debootstrapped once and cached (about 70 s the first time).

Faults: partitions (nftables bridge table in the root namespace; the controller keeps reaching every
host), pause/resume (SIGSTOP/SIGCONT of every process of the host), kill/start (power cycle: the
host's disk survives). `destroy` removes every trace, also of a half-created run or one whose state
file is gone (it also works from the naming conventions).

Naming (NAME is 1-8 lowercase letters/digits): bridge pth-NAME, netns pth-NAME-HOST, root-side veths
pv-NAME-N, nft tables `inet pth_NAME` (guard: hosts may only talk to addresses of the run) and
`bridge pth_NAME` (partitions), nspawn machines pth-NAME-HOST, run folder STATE_ROOT/NAME.

As a library (scripts/ on sys.path):  import testhosts; th = testhosts.TestHosts("abc"); th.create()
Runs as root, Python 3.11 standard library only. Logs go to stderr, results (JSON) to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["TestHosts", "TestHostsError", "ensure_rootfs", "rootfs_path", "main"]

log = logging.getLogger("testhosts")

DEFAULT_STATE_DIR = "/srv/pgha-testhosts"
STATE_DIR_ENV = "PGHA_TESTHOSTS_DIR"
STATE_FORMAT = 1
KINDS = ("namespace", "systemd")
NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")
HOST_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,18}[a-z0-9])?$")
LABEL_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
MAX_HOSTS = 200
HOST_OFFSET = 10  # host N of a run gets the address .(10+N)
# the /24s handed out: 10.100.0.0 - 10.199.255.255 (podman's 10.88.0.0/16 stays clear)
POOL_FIRST_OCTET2 = 100
POOL_SIZE = 100 * 256
# directories a namespace host mounts over: its own folders must not be below them
MOUNTED_OVER = ("/etc", "/var", "/root", "/home", "/opt", "/run", "/tmp")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SSH_COMMON_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")
# no nameserver: glibc falls back to 127.0.0.1, where nothing listens, so lookups fail at once
RESOLV_CONF = "# pgha testhosts: no DNS; the run's hosts are in /etc/hosts\noptions timeout:1 attempts:1\n"

ROOTFS_SUITE = "bookworm"
ROOTFS_VARIANT = "minbase"
ROOTFS_INCLUDE = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv", "iproute2",
                  "nftables", "postgresql-15", "etcd-server", "procps", "sudo")
ROOTFS_RECIPE = 1  # bump when _prepare_rootfs changes: the cache key changes with it
DEFAULT_MIRROR = "http://deb.debian.org/debian"

NEEDS = {
    "namespace": ("ip", "nft", "unshare", "nsenter", "tini", "sshd", "ssh", "ssh-keygen", "mount", "umount"),
    "systemd": ("ip", "nft", "nsenter", "systemd-nspawn", "ssh", "ssh-keygen", "mount", "umount"),
}
DEBIAN_PACKAGES = "tini openssh-server openssh-client systemd-container debootstrap nftables iproute2"


class TestHostsError(Exception):
    """Any failure of testhosts, with a message meant for a human."""

    __test__ = False  # not a pytest test class


# ---------------------------------------------------------------------------------------------
# small helpers


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_root() -> None:
    if os.geteuid() != 0:
        raise TestHostsError("testhosts must run as root (it creates network namespaces, bridges, mounts)")


def _require_binaries(kind: str) -> None:
    missing = [b for b in NEEDS[kind] if shutil.which(b, path=HOST_PATH + ":" + os.environ.get("PATH", "")) is None]
    if missing:
        raise TestHostsError(f"{kind} hosts need {', '.join(missing)} (Debian: apt-get install {DEBIAN_PACKAGES})")


def _run(cmd: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float | None = 60,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    log.debug("$ %s", shlex.join(cmd))
    try:
        p = subprocess.run(list(cmd), input=input, capture_output=True, text=True, errors="replace", timeout=timeout,
                           env=env or _tool_env())
    except FileNotFoundError as e:
        raise TestHostsError(f"{cmd[0]}: command not found (apt-get install {DEBIAN_PACKAGES})") from e
    except subprocess.TimeoutExpired as e:
        raise TestHostsError(f"timed out after {timeout} s: {shlex.join(cmd)}") from e
    if check and p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise TestHostsError(f"`{shlex.join(cmd)}` failed (exit {p.returncode}): {' / '.join(msg[-5:])}")
    return p


def _tool_env() -> dict[str, str]:
    """Our environment with the sbin directories on PATH (ip, nft, sshd live there)."""
    path = os.environ.get("PATH", "").split(":")
    return dict(os.environ, PATH=":".join([p for p in path if p] + [p for p in HOST_PATH.split(":") if p not in path]))


def _host_env() -> dict[str, str]:
    return {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": os.environ.get("TERM", "dumb")}


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _mkdir(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _split_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    return [x.strip() for v in value for x in v.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------------
# processes (everything read from /proc: root sees every host's processes, never match by name)

# launchers (unshare, systemd-nspawn) this process started, so that they are reaped, not left as zombies
_LAUNCHED: dict[int, subprocess.Popen[bytes]] = {}


def _reap() -> None:
    for pid, p in list(_LAUNCHED.items()):
        if p.poll() is not None:
            del _LAUNCHED[pid]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid: int | None, start: int | None = None) -> bool:
    if not pid:
        return False
    st = _stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return start is None or st[2] == start


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _link(pid: int, what: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/{what}")
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _exe(pid: int) -> str:
    """Basename of the process's executable (argv[0] may be rewritten, e.g. by ssh's mux master)."""
    exe = _link(pid, "exe") or ""
    return os.path.basename(exe.removesuffix(" (deleted)"))


def _tcp_peers(pid: int) -> set[str]:
    """Remote IPv4 addresses of the process's TCP sockets."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = _link(pid, f"fd/{fd}") or ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    peers = set()
    if inodes:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    peers.add(str(ipaddress.IPv4Address(bytes.fromhex(fields[2].split(":")[0])[::-1])))
    return peers


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    return kids


def _nspid(pid: int) -> list[int]:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []


def _pidns_members(init: int) -> list[int]:
    """Every process in the PID namespace whose init (as the root namespace sees it) is `init`."""
    ns = _link(init, "ns/pid")
    if ns is None:
        return []
    return [p for p in _pids() if _link(p, "ns/pid") == ns and _alive(p)]


def _signal(pid: int | None, sig: int, start: int | None = None) -> bool:
    """Send a signal; with `start`, only if the PID still belongs to that process (no PID-reuse accidents)."""
    if not pid or (start is not None and not _alive(pid, start)):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive (zombies count as gone); returns those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        _reap()
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def _self_and_ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        st = _stat(pid)
        if st is None:
            break
        pid = st[1]
    return out


# ---------------------------------------------------------------------------------------------
# mounts


def _unescape_mount(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [_unescape_mount(line.split()[4]) for line in f]


def _mounts_under(path: str | Path) -> list[str]:
    p = os.path.realpath(path)
    return [m for m in _mounts() if m == p or m.startswith(p.rstrip("/") + "/")]


def _umount_all(paths: Sequence[str]) -> list[str]:
    done = []
    for m in sorted(set(paths), key=lambda x: -x.count("/")):
        if m not in _mounts():
            continue
        if _run(["umount", m], check=False).returncode != 0:
            _run(["umount", "-l", m], check=False)
        done.append(m)
    return done


def _cgroup_bases() -> list[Path]:
    """This process's cgroup in the hierarchies nspawn puts containers in: the v2 one and, on a hybrid
    setup like this machine's, the v1 name=systemd one."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if hid == "0":
                own["cgroup2"] = path
            elif "name=systemd" in ctrls.split(","):
                own["name=systemd"] = path
    bases: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields, info = pre.split(), post.split()
            key = "cgroup2" if info[0] == "cgroup2" else (
                "name=systemd" if info[0] == "cgroup" and "name=systemd" in info[2].split(",") else None)
            if key is None or key in bases or key not in own:
                continue
            root, path = fields[3], own[key]
            if path == root or path.startswith(root.rstrip("/") + "/"):
                bases[key] = Path(_unescape_mount(fields[4])) / path[len(root.rstrip("/")):].lstrip("/")
    return list(bases.values())


def _rm_cgroup(path: Path) -> None:
    """rmdir a cgroup and its children, deepest first (they hold no files to delete)."""
    if not path.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(path), key=lambda x: -x[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _safe_rmtree(path: Path) -> None:
    """rm -rf that first unmounts whatever is mounted below `path` and refuses if anything stays."""
    if not path.exists() and not path.is_symlink():
        return
    _umount_all(_mounts_under(path))
    left = _mounts_under(path)
    if left:
        raise TestHostsError(f"cannot remove {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        _run(["rm", "-rf", "--one-file-system", str(path)], check=False)


# ---------------------------------------------------------------------------------------------
# network helpers


def _links() -> list[dict[str, Any]]:
    return json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]")


def _netns_list() -> list[str]:
    out = _run(["ip", "-j", "netns", "list"], check=False).stdout.strip()
    return [n["name"] for n in json.loads(out)] if out else []


def _nft_tables() -> list[tuple[str, str]]:
    out = _run(["nft", "-j", "list", "tables"], check=False).stdout
    tables = []
    with contextlib.suppress(ValueError):
        for item in json.loads(out or "{}").get("nftables", []):
            if "table" in item:
                tables.append((item["table"]["family"], item["table"]["name"]))
    return tables


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for r in routes:
        dst = r.get("dst")
        if not dst or dst == "default":
            continue
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False)
            if net.prefixlen > 0 and isinstance(net, ipaddress.IPv4Network):
                nets.append(net)
    for link in json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
        for a in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def _ssh_banner(address: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# the systemd hosts' rootfs


def _cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("PGHA_CACHE") or Path.home() / ".cache" / "pgha"
    return Path(cache_dir) / "testhosts"


def rootfs_key() -> str:
    """The cache key: a short hash of suite, variant, include list and recipe version."""
    text = f"{ROOTFS_SUITE} {ROOTFS_VARIANT} {','.join(ROOTFS_INCLUDE)} recipe={ROOTFS_RECIPE}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rootfs_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the cached rootfs lives: ${PGHA_CACHE:-~/.cache/pgha}/testhosts/rootfs-<key>."""
    return _cache_root(cache_dir) / f"rootfs-{rootfs_key()}"


def _installed_packages(root: Path) -> set[str]:
    pkgs, name = set(), None
    try:
        with open(root / "var/lib/dpkg/status") as f:
            for line in f:
                if line.startswith("Package: "):
                    name = line.split()[1]
                elif line.startswith("Status: ") and line.split()[1:] == ["install", "ok", "installed"] and name:
                    pkgs.add(name)
    except OSError:
        pass
    return pkgs


def _prepare_rootfs(root: Path) -> None:
    """After debootstrap: mask services the packages would start, per-container SSH host keys, clean."""
    system = _mkdir(root / "etc/systemd/system")
    for unit in ("postgresql.service", "etcd.service"):
        target = system / unit
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to("/dev/null")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    dropin = _mkdir(system / "ssh.service.d")
    # the unit's own ExecStartPre (sshd -t) would run first and fail without keys: reset the list
    _write(dropin / "pgha-testhosts.conf", "[Service]\nExecStartPre=\nExecStartPre=-/usr/bin/ssh-keygen -A\n"
           "ExecStartPre=/usr/sbin/sshd -t\n")
    _mkdir(root / "etc/ssh/sshd_config.d")
    _write(root / "etc/ssh/sshd_config.d/pgha-testhosts.conf",
           "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
           "UseDNS no\n")
    # each container gets its own machine-id (written into its overlay)
    _write(root / "etc/machine-id", "", 0o444)
    _run(["chroot", str(root), "apt-get", "clean"], env=_host_env())


def ensure_rootfs(cache_dir: str | os.PathLike[str] | None = None, *, adopt: str | os.PathLike[str] | None = None,
                  rebuild: bool = False, mirror: str | None = None) -> Path:
    """The cached bookworm rootfs for systemd hosts, built (debootstrap, ~70 s) when missing.

    adopt: a finished `debootstrap --variant=minbase --include=<ROOTFS_INCLUDE> bookworm DIR` to move into
    the cache instead of building (it is checked for every package of the include list).
    Built into a temporary folder next to the cache and renamed when complete; a lock keeps two runs
    from building at once.
    """
    _require_root()
    final = rootfs_path(cache_dir)
    if final.is_dir() and not rebuild and adopt is None:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _flock(final.parent / f"{final.name}.lock"):
        if final.is_dir() and not rebuild and adopt is None:
            return final  # built by another run while we waited
        for stale in final.parent.glob(f"{final.name}.tmp-*"):
            log.info("removing an unfinished rootfs build: %s", stale)
            _safe_rmtree(stale)
        tmp = final.parent / f"{final.name}.tmp-{os.getpid()}"
        try:
            if adopt is not None:
                src = Path(adopt)
                missing = sorted(set(ROOTFS_INCLUDE) - _installed_packages(src))
                if missing:
                    raise TestHostsError(f"cannot adopt {src}: not installed there: {', '.join(missing)}")
                if _mounts_under(src):
                    raise TestHostsError(f"cannot adopt {src}: something is mounted below it")
                log.info("adopting %s as the rootfs", src)
                shutil.move(str(src), str(tmp))
            else:
                if shutil.which("debootstrap") is None:
                    raise TestHostsError("systemd hosts need debootstrap for their rootfs "
                                         "(apt-get install debootstrap)")
                logfile = final.parent / f"{final.name}.log"
                log.info("building the systemd hosts' rootfs with debootstrap (about 70 s, once): %s", final)
                cmd = ["debootstrap", f"--variant={ROOTFS_VARIANT}", f"--include={','.join(ROOTFS_INCLUDE)}",
                       ROOTFS_SUITE, str(tmp), mirror or os.environ.get("PGHA_DEBIAN_MIRROR") or DEFAULT_MIRROR]
                t0 = time.monotonic()
                with open(logfile, "w") as out:
                    rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=_host_env()).returncode
                if rc != 0:
                    raise TestHostsError(f"debootstrap failed (exit {rc}); see {logfile}:\n{_tail(logfile)}")
                log.info("debootstrap done in %.0f s", time.monotonic() - t0)
            _prepare_rootfs(tmp)
            if final.exists():
                busy = [m for m in _overlay_lowers() if m == str(final)]
                if busy:
                    raise TestHostsError(f"cannot rebuild {final}: systemd hosts run on it; destroy them first")
                old = final.parent / f"{final.name}.tmp-old-{os.getpid()}"
                os.rename(final, old)
                _safe_rmtree(old)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                _safe_rmtree(tmp)
    return final


def _overlay_lowers() -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.startswith("overlay "):
                m = re.search(r"lowerdir=([^,]+)", post)
                if m:
                    out.append(_unescape_mount(m.group(1)))
    return out


# ---------------------------------------------------------------------------------------------
# the runs


def _validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise TestHostsError(f"bad run name {name!r}: 1-8 lowercase letters or digits")
    return name


def _state_root(state_dir: str | os.PathLike[str] | None) -> Path:
    return Path(os.path.realpath(state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR))


class TestHosts:
    """One run: N hosts of one kind on a bridge of their own.

    th = TestHosts("abc")                 # nothing happens yet; state_dir defaults to $PGHA_TESTHOSTS_DIR
    th.create(kind="namespace", hosts=3)  #   or /srv/pgha-testhosts
    th.ssh("node1", "hostname").stdout    # 'node1\\n'
    th.partition("node1"); th.heal()
    th.destroy()
    Also a context manager: `with TestHosts("abc") as th: th.create()` destroys the run on exit.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, name: str, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.name = _validate_name(name)
        self.state_root = _state_root(state_dir)
        self.run_dir = self.state_root / name
        self.state_file = self.run_dir / "state.json"
        self._state: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"TestHosts({self.name!r}, state_dir={str(self.state_root)!r})"

    def __enter__(self) -> TestHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ---- names and state

    @property
    def bridge(self) -> str:
        return f"pth-{self.name}"

    @property
    def nft_table(self) -> str:
        return f"pth_{self.name}"

    def _netns_name(self, host: str) -> str:
        return f"pth-{self.name}-{host}"

    def _veth_name(self, index: int) -> str:
        return f"pv-{self.name}-{index}"

    def _machine_name(self, host: str) -> str:
        return f"pth-{self.name}-{host}"

    def exists(self) -> bool:
        """True when the run folder or any resource named after the run exists."""
        return bool(self.run_dir.exists() or any(self.leftovers().values()))

    @property
    def state(self) -> dict[str, Any]:
        """state.json, as last written (reloaded from disk each time it is asked for)."""
        try:
            with open(self.state_file) as f:
                self._state = json.load(f)
        except FileNotFoundError:
            raise TestHostsError(f"no run {self.name!r} under {self.state_root} (create it first)") from None
        except ValueError as e:
            raise TestHostsError(f"{self.state_file} is unreadable ({e}); `destroy {self.name}` cleans it") from e
        return self._state

    def _lenient_state(self) -> dict[str, Any]:
        try:
            return self.state
        except TestHostsError:
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        state["updated_at"] = _now()
        _write(self.state_file, json.dumps(state, indent=2) + "\n")
        self._state = state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write of state.json under the run's lock."""
        if not self.state_file.exists():
            self.state  # noqa: B018 -- raises the "no run" error
        with _flock(self.run_dir / ".lock"):
            st = self.state
            yield st
            self._save(st)

    @property
    def kind(self) -> str:
        return str(self.state["kind"])

    @property
    def hosts(self) -> list[str]:
        return [h["name"] for h in self.state["hosts"]]

    @property
    def controller_address(self) -> str:
        return str(self.state["controller_address"])

    @property
    def inventory(self) -> Path:
        return self.run_dir / "hosts.yml"

    @property
    def ssh_key(self) -> Path:
        return self.run_dir / "id_ed25519"

    def _host(self, host: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
        st = state or self.state
        for h in st["hosts"]:
            if h["name"] == host:
                return h
        raise TestHostsError(f"host {host} not in run {self.name} (hosts: {', '.join(x['name'] for x in st['hosts'])})")

    def address(self, host: str) -> str:
        return str(self._host(host)["address"])

    def host_dir(self, host: str) -> Path:
        return Path(self._host(host)["dir"])

    def ansible_env(self) -> dict[str, str]:
        """Environment for ansible/ansible-playbook/molecule against this run (per-run sockets and temp)."""
        a = self.run_dir / "ansible"
        return {"ANSIBLE_HOME": str(a / "home"), "ANSIBLE_LOCAL_TEMP": str(a / "tmp"),
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(a / "cp"), "ANSIBLE_HOST_KEY_CHECKING": "False",
                "ANSIBLE_INVENTORY": str(self.inventory)}

    # ---- create

    def create(self, kind: str = "namespace", hosts: int | None = None, host_names: Sequence[str] | None = None, *,
               replace: bool = False, timeout: float | None = None, keep_on_failure: bool = False) -> dict[str, Any]:
        """Create the run's hosts and wait until each one's sshd answers; returns the state (see status()).

        hosts: how many (default 3, or len(host_names)); host_names: default node1..nodeN.
        replace: destroy an existing run of this name first (else that is an error).
        timeout: per host start, default 30 s (namespace) / 180 s (systemd).
        A failed create destroys what it made, unless keep_on_failure.
        """
        _require_root()
        if kind not in KINDS:
            raise TestHostsError(f"bad kind {kind!r}: {' or '.join(KINDS)}")
        _require_binaries(kind)
        count = 3 if hosts is None else hosts
        names = list(host_names) if host_names else [f"node{i}" for i in range(1, count + 1)]
        if host_names and hosts is not None and hosts != len(names):
            raise TestHostsError(f"--hosts {hosts} but {len(names)} host names given")
        if not 1 <= len(names) <= MAX_HOSTS:
            raise TestHostsError(f"a run has 1 to {MAX_HOSTS} hosts, not {len(names)}")
        for n in names:
            if not HOST_RE.match(n):
                raise TestHostsError(f"bad host name {n!r}: lowercase letters, digits and '-', 1-20, a letter first")
        if len(set(names)) != len(names):
            raise TestHostsError(f"host names repeat: {', '.join(names)}")
        if kind == "namespace":
            for d in MOUNTED_OVER:
                if self.state_root == Path(d) or str(self.state_root).startswith(d + "/"):
                    raise TestHostsError(f"state dir {self.state_root} is below {d}, which namespace hosts mount "
                                         f"over: use one outside {' '.join(MOUNTED_OVER)} (e.g. {DEFAULT_STATE_DIR})")
        if self.exists():
            if not replace:
                what = [str(self.run_dir)] if self.run_dir.exists() else []
                what += [x for v in self.leftovers().values() for x in v]
                raise TestHostsError(f"run {self.name} exists ({', '.join(what[:4])}): destroy it first "
                                     f"(testhosts.py destroy {self.name}) or pass --replace")
            log.info("replacing run %s", self.name)
            self.destroy()
        rootfs = str(ensure_rootfs()) if kind == "systemd" else None
        if timeout is None:
            timeout = 30.0 if kind == "namespace" else 180.0

        t0 = time.monotonic()
        self.state_root.mkdir(parents=True, exist_ok=True)
        with _flock(self.state_root / ".lock"):
            subnet = self._pick_subnet()
            _mkdir(self.run_dir, 0o755)
            net = list(subnet.hosts())
            state: dict[str, Any] = {
                "format": STATE_FORMAT, "name": self.name, "kind": kind, "status": "creating",
                "created_at": _now(), "state_root": str(self.state_root), "run_dir": str(self.run_dir),
                "subnet": str(subnet), "controller_address": str(net[0]), "bridge": self.bridge,
                "nft_table": self.nft_table, "ssh_key": str(self.ssh_key), "inventory": str(self.inventory),
                "ansible_env": self.ansible_env(), "rootfs": rootfs, "partitions": {}, "hosts": [],
            }
            for i, n in enumerate(names, 1):
                d = self.run_dir / "hosts" / n
                h: dict[str, Any] = {"name": n, "index": i, "address": str(net[HOST_OFFSET + i - 1]), "dir": str(d),
                                     "pid": None, "pid_start": None, "launcher_pid": None}
                if kind == "namespace":
                    h.update(netns=self._netns_name(n), veth=self._veth_name(i))
                else:
                    h.update(machine=self._machine_name(n), merged=str(d / "merged"), veth=None)
                state["hosts"].append(h)
            self._save(state)  # everything destroy needs, before any resource exists
        try:
            self._create_resources(state)
            started = []
            for h in state["hosts"]:
                self._launch(state, h)
                started.append(h)
            self._save(state)
            for h in started:
                self._wait_ready(state, h, timeout)
            state["status"] = "ready"
            self._save(state)
        except BaseException as e:
            if keep_on_failure:
                log.error("create failed; kept what was made (testhosts.py destroy %s removes it)", self.name)
            else:
                log.error("create failed (%s); removing what was made", e)
                with contextlib.suppress(Exception):
                    self.destroy()
            raise
        log.info("run %s: %d %s hosts on %s ready in %.1f s", self.name, len(names), kind, subnet,
                 time.monotonic() - t0)
        return self.status(check_ssh=False)

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        used = _used_networks()
        for run in self.state_root.iterdir():
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                used.append(ipaddress.ip_network(json.loads((run / "state.json").read_text())["subnet"]))
        start = int(hashlib.sha256(self.name.encode()).hexdigest(), 16) % POOL_SIZE
        for k in range(POOL_SIZE):
            i = (start + k) % POOL_SIZE
            net = ipaddress.ip_network(f"10.{POOL_FIRST_OCTET2 + i // 256}.{i % 256}.0/24")
            if not any(net.overlaps(u) for u in used):
                return net  # type: ignore[return-value]
        raise TestHostsError("no free /24 left in 10.100.0.0-10.199.255.255")

    def _create_resources(self, st: dict[str, Any]) -> None:
        """Keys, bridge, guard table, per-host network and folders (no process yet)."""
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pgha-testhosts-{self.name}", "-f",
              str(self.ssh_key)])
        for d in ("home", "tmp", "cp"):
            _mkdir(self.run_dir / "ansible" / d, 0o700)
        env = self.ansible_env()
        _write(self.run_dir / "ansible.env", "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        self._write_inventory(st)
        prefix = ipaddress.ip_network(st["subnet"]).prefixlen
        br, subnet, ctl = st["bridge"], st["subnet"], st["controller_address"]
        _run(["ip", "link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0"])
        _disable_ipv6(br)
        _run(["ip", "addr", "add", f"{ctl}/{prefix}", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        # hosts may talk to each other and to the controller's bridge address, nothing else (rejected, so
        # that an attempt fails at once instead of hanging)
        t = st["nft_table"]
        _run(["nft", "-f", "-"], input=(
            f"add table inet {t}\n"
            f"add chain inet {t} guard_forward {{ type filter hook forward priority -5; policy accept; }}\n"
            f"add rule inet {t} guard_forward ip saddr {subnet} ip daddr != {subnet} reject\n"
            f"add rule inet {t} guard_forward ip daddr {subnet} ip saddr != {subnet} drop\n"
            f"add chain inet {t} guard_input {{ type filter hook input priority -5; policy accept; }}\n"
            f"add rule inet {t} guard_input iifname \"{br}\" ip daddr != {subnet} reject\n"
            f"add rule inet {t} guard_input iifname \"{br}\" meta nfproto ipv6 drop\n"))
        pubkey = (self.run_dir / "id_ed25519.pub").read_text()
        etc_hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + "".join(
            f"{h['address']}\t{h['name']}\n" for h in st["hosts"])
        for h in st["hosts"]:
            if st["kind"] == "namespace":
                self._prepare_namespace_host(st, h, prefix, pubkey, etc_hosts)
            else:
                self._prepare_systemd_host(st, h, prefix, pubkey, etc_hosts)

    def _write_inventory(self, st: dict[str, Any]) -> None:
        q = json.dumps  # a JSON string is a valid YAML scalar
        lines = ["# written by scripts/testhosts.py for run " + self.name, "all:", "  children:", "    testhosts:",
                 "      hosts:"]
        for h in st["hosts"]:
            lines += [f"        {h['name']}:", f"          ansible_host: {h['address']}",
                      "          ansible_user: root", f"          ansible_ssh_private_key_file: {q(str(self.ssh_key))}",
                      f"          ansible_ssh_common_args: {q(SSH_COMMON_ARGS)}",
                      "          ansible_python_interpreter: /usr/bin/python3"]
        lines += ["      vars:", f"        testhosts_controller_address: {st['controller_address']}",
                  f"        testhosts_kind: {st['kind']}", f"        testhosts_run: {q(self.name)}",
                  f"        testhosts_subnet: {st['subnet']}"]
        _write(self.inventory, "\n".join(lines) + "\n")

    def _prepare_namespace_host(self, st: dict[str, Any], h: dict[str, Any], prefix: int, pubkey: str,
                                etc_hosts: str) -> None:
        ns, veth, name = h["netns"], h["veth"], h["name"]
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _disable_ipv6(veth)
        _run(["ip", "link", "set", veth, "master", st["bridge"], "up"])
        inside = ["ip", "netns", "exec", ns]
        _run([*inside, "sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{h['address']}/{prefix}", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", st["controller_address"]])
        d = Path(h["dir"])
        for sub in ("etc", "var", "root", "home"):
            _mkdir(d / "overlay" / sub / "upper", 0o700 if sub == "root" else 0o755)
            _mkdir(d / "overlay" / sub / "work", 0o700)
        _mkdir(d / "opt")
        ssh = _mkdir(d / "ssh", 0o700)
        etc = d / "overlay/etc/upper"
        _write(etc / "hostname", name + "\n")
        _write(etc / "hosts", etc_hosts)
        _write(etc / "machine-id", uuid.uuid4().hex + "\n", 0o444)
        _write(etc / "resolv.conf", RESOLV_CONF)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@{self.name}", "-f",
              str(ssh / "ssh_host_ed25519_key")])
        _write(ssh / "authorized_keys", pubkey, 0o600)
        _write(ssh / "sshd_config", "\n".join([
            "# sshd of a pgha test host (scripts/testhosts.py)",
            f"ListenAddress {h['address']}:22", f"HostKey {ssh / 'ssh_host_ed25519_key'}",
            "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            f"AuthorizedKeysFile {ssh / 'authorized_keys'}", "PidFile none", "PrintMotd no", "UseDNS no",
            "MaxStartups 100:30:200", "MaxSessions 100", "AcceptEnv LANG LC_*", "Subsystem sftp internal-sftp",
        ]) + "\n", 0o600)
        q = shlex.quote
        root = q(str(self.state_root))
        _write(d / "init.sh", "\n".join([
            "#!/bin/sh",
            f"# PID 1's child on test host {name} of run {self.name} (written by scripts/testhosts.py)",
            "set -eu",
            f"H={q(str(d))}",
            f"hostname {q(name)}",
            # copies of the root namespace's mounts below /run (other runs' netns files: they would keep
            # those namespaces alive) and below the state root (systemd hosts' overlays): let them go
            "awk '{print $5}' /proc/self/mountinfo | while read -r m; do",
            f"  case \"$m\" in /run|/run/*|{root}/*) umount -l \"$m\" 2>/dev/null || true ;; esac",
            "done",
            "for d in etc var root home; do",
            "  mount -t overlay overlay -o \"lowerdir=/$d,upperdir=$H/overlay/$d/upper,workdir=$H/overlay/$d/work\""
            " \"/$d\"",
            "done",
            "mount --bind \"$H/opt\" /opt",
            "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run",
            "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp",
            "mkdir -p -m 0755 /run/sshd /run/lock",
            "exec /usr/sbin/sshd -D -e -f \"$H/ssh/sshd_config\"",
        ]) + "\n", 0o755)

    def _prepare_systemd_host(self, st: dict[str, Any], h: dict[str, Any], prefix: int, pubkey: str,
                              etc_hosts: str) -> None:
        d = Path(h["dir"])
        upper = _mkdir(d / "upper")
        _mkdir(d / "work", 0o700)
        _mkdir(d / "merged")
        etc = _mkdir(upper / "etc")
        _write(etc / "hostname", h["name"] + "\n")
        _write(etc / "hosts", etc_hosts)
        _write(etc / "machine-id", uuid.uuid4().hex + "\n", 0o444)
        _write(etc / "resolv.conf", RESOLV_CONF)
        _mkdir(upper / "root", 0o700)
        _write(_mkdir(upper / "root/.ssh", 0o700) / "authorized_keys", pubkey, 0o600)
        system = _mkdir(etc / "systemd/system")
        unit = "pgha-testhosts-net.service"
        _write(system / unit, "\n".join([
            # default dependencies: started very early (DefaultDependencies=no) it sometimes failed with
            # "Failed to attach to cgroup" on this kernel's hybrid cgroup setup
            "[Unit]", "Description=pgha testhosts: address of host0",
            "Before=network-pre.target network.target ssh.service", "Wants=network-pre.target",
            "", "[Service]", "Type=oneshot", "RemainAfterExit=yes",
            "ExecStart=-/bin/sh -c 'echo 1 > /proc/sys/net/ipv6/conf/host0/disable_ipv6'",
            f"ExecStart=/usr/bin/ip addr replace {h['address']}/{prefix} dev host0",
            "ExecStart=/usr/bin/ip link set host0 up",
            f"ExecStart=/usr/bin/ip route replace default via {st['controller_address']} dev host0",
            "", "[Install]", "WantedBy=multi-user.target",
        ]) + "\n")
        wants = _mkdir(system / "multi-user.target.wants")
        if not (wants / unit).is_symlink():
            (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")

    # ---- starting and stopping one host

    def _launch(self, st: dict[str, Any], h: dict[str, Any]) -> None:
        """Start the host's processes (no waiting for sshd); records pid and launcher_pid."""
        d = Path(h["dir"])
        console = open(d / "console.log", "ab")
        console.write(f"---- {_now()} testhosts: starting {h['name']}\n".encode())
        console.flush()
        if st["kind"] == "namespace":
            cmd = ["ip", "netns", "exec", h["netns"], "unshare", "--mount", "--pid", "--uts", "--ipc", "--fork",
                   "--mount-proc", "--propagation", "private", "tini", "-s", "--", "/bin/sh", str(d / "init.sh")]
        else:
            merged = h["merged"]
            if merged not in _mounts():
                _run(["mount", "-t", "overlay", "overlay", "-o",
                      f"lowerdir={st['rootfs']},upperdir={d / 'upper'},workdir={d / 'work'}", merged])
            nspawn = ["systemd-nspawn", "--register=no", "--keep-unit", "-M", h["machine"],
                      f"--hostname={h['name']}", "-D", merged, f"--network-bridge={st['bridge']}",
                      "--console=read-only", "--resolv-conf=off", "--link-journal=no", "--boot"]
            # With --keep-unit (no systemd on this machine to register with) nspawn puts the container below
            # its own cgroup (.../payload): every container would share one, and their systemds would
            # manage (and kill) each other's units. So each nspawn starts in a cgroup of its own.
            procs = []
            for base in _cgroup_bases():
                cg = base / h["machine"]
                _rm_cgroup(cg)
                cg.mkdir(parents=True, exist_ok=True)
                procs.append(str(cg / "cgroup.procs"))
            h["cgroups"] = [str(Path(x).parent) for x in procs]
            if not procs:
                log.warning("no cgroup hierarchy found for host %s: containers share one (unit clashes)", h["name"])
            cmd = ["/bin/sh", "-c", "".join(f"echo $$ > {shlex.quote(x)} && " for x in procs) + 'exec "$@"',
                   "nspawn-in-cgroup", *nspawn]
        log.debug("$ %s", shlex.join(cmd))
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True, env=_host_env())
        finally:
            console.close()
        _LAUNCHED[p.pid] = p
        h["launcher_pid"], h["pid"], h["pid_start"] = p.pid, None, None
        h["launcher_start"] = (_stat(p.pid) or (None, None, None))[2]
        # the host's init: the launcher's child in a PID namespace of its own
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for kid in _children(p.pid):
                ns = _nspid(kid)
                if len(ns) >= 2 and ns[-1] == 1 and (st["kind"] != "namespace" or _comm(kid) == "tini"):
                    stat = _stat(kid)
                    if stat:
                        h["pid"], h["pid_start"] = kid, stat[2]
                        return
            if p.poll() is not None:
                break
            time.sleep(0.005)
        p.poll()
        raise TestHostsError(f"host {h['name']} of run {self.name} did not start (launcher exit {p.returncode}); "
                             f"{d / 'console.log'}:\n{_tail(d / 'console.log')}")

    def _wait_ready(self, st: dict[str, Any], h: dict[str, Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        console = Path(h["dir"]) / "console.log"
        while not _ssh_banner(h["address"], 0.5):
            if not _alive(h["pid"], h["pid_start"]):
                raise TestHostsError(f"host {h['name']} of run {self.name} died while starting; {console}:\n"
                                     f"{_tail(console)}")
            if time.monotonic() > deadline:
                raise TestHostsError(f"sshd of host {h['name']} ({h['address']}) did not answer within {timeout:.0f} s;"
                                     f" {console}:\n{_tail(console)}")
            time.sleep(0.01)
        if st["kind"] != "systemd":
            return
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestHostsError(f"systemd of host {h['name']} did not finish booting within {timeout:.0f} s")
            r = self.ssh(h["name"], "systemctl is-system-running --wait", timeout=left)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    failed = self.ssh(h["name"], "systemctl --failed --plain --no-legend", timeout=30).stdout
                    log.info("host %s: systemd degraded; failed units: %s", h["name"],
                             " ".join(x.split()[0] for x in failed.splitlines() if x.strip()) or "?")
                break
            if r.returncode == 255:  # ssh itself failed: sshd just came up, try again
                time.sleep(0.2)
                continue
            raise TestHostsError(f"host {h['name']}: systemctl is-system-running says {state or r.stderr.strip()!r}")
        with contextlib.suppress(Exception):
            link = json.loads(_run(["nsenter", f"--target={h['pid']}", "--net", "ip", "-j", "link", "show", "host0"]
                                   ).stdout)[0]["link_index"]
            h["veth"] = next(x["ifname"] for x in _links() if x["ifindex"] == link)
            with self._locked() as s:
                self._host(h["name"], s)["veth"] = h["veth"]

    def is_running(self, host: str) -> bool:
        h = self._host(host)
        return _alive(h["pid"], h["pid_start"])

    def init_pid(self, host: str) -> int | None:
        """The host's PID 1 as the root namespace sees it (tini, or the container's systemd); None if down."""
        h = self._host(host)
        return h["pid"] if _alive(h["pid"], h["pid_start"]) else None

    def pids(self, host: str) -> list[int]:
        """Every process of the host (its PID namespace), as root-namespace PIDs."""
        init = self.init_pid(host)
        return _pidns_members(init) if init else []

    def _running(self, host: str) -> dict[str, Any]:
        h = self._host(host)
        if not _alive(h["pid"], h["pid_start"]):
            raise TestHostsError(f"host {host} of run {self.name} is not running "
                                 f"(testhosts.py start {self.name} {host})")
        return h

    def pause(self, host: str) -> list[int]:
        """SIGSTOP every process of the host; returns their PIDs (root namespace)."""
        self._running(host)
        stopped: set[int] = set()
        for _ in range(50):
            todo = [p for p in self.pids(host) if (_stat(p) or ("T",))[0] not in ("T", "t")]
            if not todo:
                break
            for p in todo:
                if _signal(p, signal.SIGSTOP):
                    stopped.add(p)
            time.sleep(0.01)
        else:
            raise TestHostsError(f"could not stop every process of host {host}")
        log.info("paused %s (%d processes)", host, len(stopped))
        return sorted(set(self.pids(host)) | stopped)

    def resume(self, host: str) -> list[int]:
        """SIGCONT every process of the host; returns their PIDs."""
        self._running(host)
        pids = self.pids(host)
        for p in pids:
            _signal(p, signal.SIGCONT)
        log.info("resumed %s (%d processes)", host, len(pids))
        return pids

    def kill(self, host: str) -> None:
        """Kill the whole host at once (SIGKILL to its PID 1); its folders (disk) stay for start()."""
        h = self._host(host)
        st = self.state
        if _alive(h["pid"], h["pid_start"]):
            members = _pidns_members(h["pid"])
            _signal(h["pid"], signal.SIGKILL, h["pid_start"])
            self._wait_down(h, members)
            log.info("killed %s", host)
        else:
            log.info("%s was not running", host)
        self._after_stop(st, h)

    def stop(self, host: str, timeout: float = 10.0) -> None:
        """Orderly shutdown: SIGTERM to the host's processes (nspawn: a systemd shutdown), SIGKILL after timeout."""
        h = self._host(host)
        st = self.state
        if _alive(h["pid"], h["pid_start"]):
            members = _pidns_members(h["pid"])
            for p in members:
                _signal(p, signal.SIGCONT)
            if st["kind"] == "systemd":  # nspawn turns SIGTERM into a systemd shutdown
                _signal(h["launcher_pid"], signal.SIGTERM, h.get("launcher_start"))
            else:  # tini would only pass it on to sshd: every process gets it
                for p in members:
                    if p != h["pid"]:
                        _signal(p, signal.SIGTERM)
            left = _wait_gone([p for p in members if p != h["pid"] or st["kind"] == "systemd"], timeout)
            if left:
                log.info("%s: %d processes still there after %.0f s: SIGKILL", host, len(left), timeout)
            _signal(h["pid"], signal.SIGKILL, h["pid_start"])
            self._wait_down(h, members)
            log.info("stopped %s", host)
        self._after_stop(st, h)

    def _wait_down(self, h: dict[str, Any], members: Sequence[int]) -> None:
        left = _wait_gone([*members, h.get("launcher_pid") or 0], 15)
        if left:
            _signal(h.get("launcher_pid"), signal.SIGKILL, h.get("launcher_start"))
            left = _wait_gone(left, 5)
        if left:
            raise TestHostsError(f"host {h['name']} of run {self.name}: processes {left} do not go away")

    def _after_stop(self, st: dict[str, Any], h: dict[str, Any]) -> None:
        # the controller's SSH connection masters to that host would hang on a dead peer
        self._kill_ssh_clients(h["address"])
        if st["kind"] == "systemd":
            _umount_all(_mounts_under(h["merged"]))
            self._remove_propagate(h["machine"])
            for cg in h.get("cgroups") or []:
                _rm_cgroup(Path(cg))

    def start(self, host: str, timeout: float | None = None) -> bool:
        """Boot a killed/stopped host again on the same folders; True once sshd answers, False if it ran already."""
        _require_root()
        with self._locked() as st:
            h = self._host(host, st)
            if _alive(h["pid"], h["pid_start"]):
                log.info("%s is running already", host)
                return False
            if st["kind"] == "namespace" and h["netns"] not in _netns_list():
                raise TestHostsError(f"netns {h['netns']} of host {host} is gone: the run is broken, recreate it")
            self._launch(st, h)
        self._wait_ready(st, h, timeout or (30.0 if st["kind"] == "namespace" else 180.0))
        log.info("started %s", host)
        return True

    # ---- commands in a host

    def run(self, host: str, cmd: str | Sequence[str], *, input: str | None = None, timeout: float | None = None,
            check: bool = False, capture: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host (nsenter into its namespaces, no SSH). A string runs with /bin/sh -c.

        Returns the CompletedProcess (returncode, stdout, stderr; output not captured when capture=False).
        """
        h = self._running(host)
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full = ["nsenter", f"--target={h['pid']}", "--mount", "--uts", "--ipc", "--net", "--pid", "--", *argv]
        log.debug("$ %s", shlex.join(full))
        p = subprocess.run(full, input=input, text=True, errors="replace", timeout=timeout, env=_host_env(),
                           capture_output=capture, cwd="/")
        if check and p.returncode != 0:
            raise TestHostsError(f"{shlex.join(argv)} on {host} failed (exit {p.returncode}): "
                                 f"{(p.stderr or '').strip()}")
        return p

    def popen(self, host: str, cmd: str | Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the host without waiting (nsenter, like run()); kwargs go to Popen."""
        h = self._running(host)
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full = ["nsenter", f"--target={h['pid']}", "--mount", "--uts", "--ipc", "--net", "--pid", "--", *argv]
        kwargs.setdefault("env", _host_env())
        kwargs.setdefault("cwd", "/")
        log.debug("$ %s", shlex.join(full))
        return subprocess.Popen(full, **kwargs)

    def ssh_args(self, host: str) -> list[str]:
        """argv prefix to reach the host over SSH as root: ssh_args(h) + ["cmd"]."""
        return ["ssh", "-F", "/dev/null", "-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=5", f"root@{self.address(host)}"]

    def ssh(self, host: str, cmd: str | Sequence[str], *, input: str | None = None, timeout: float | None = 60,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command on the host over SSH (a list is shell-quoted); returns the CompletedProcess."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        argv = [*self.ssh_args(host), remote]
        log.debug("$ %s", shlex.join(argv))
        try:
            p = subprocess.run(argv, input=input, text=True, errors="replace", capture_output=True, timeout=timeout,
                               stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise TestHostsError(f"ssh {host} {remote!r}: timed out after {timeout} s") from e
        if check and p.returncode != 0:
            raise TestHostsError(f"ssh {host} {remote!r} failed (exit {p.returncode}): {p.stderr.strip()}")
        return p

    # ---- partitions

    def partition(self, isolate: str | Sequence[str], from_hosts: str | Sequence[str] | None = None,
                  ports: Sequence[int] | str | None = None, label: str | None = None) -> str:
        """Drop traffic between the isolated hosts and the others (default: every other host of the run).

        Both directions, at once for established connections too. ports: only those TCP ports (as
        destination or source, either direction). The controller keeps reaching every host.
        Returns the partition's label (default p1, p2, ...).
        """
        _require_root()
        iso, frm = _split_list(isolate), _split_list(from_hosts)
        port_list = [int(p) for p in _split_list(ports)] if isinstance(ports, str) else [int(p) for p in ports or []]
        for p in port_list:
            if not 1 <= p <= 65535:
                raise TestHostsError(f"bad port {p}")
        with self._locked() as st:
            names = [h["name"] for h in st["hosts"]]
            for n in iso + frm:
                self._host(n, st)
            if not iso:
                raise TestHostsError("partition: name the hosts to isolate")
            frm = frm or [n for n in names if n not in iso]
            if set(iso) & set(frm):
                raise TestHostsError(f"partition: {', '.join(sorted(set(iso) & set(frm)))} on both sides")
            if not frm:
                raise TestHostsError("partition: nothing left on the other side")
            if label is None:
                label = next(f"p{i}" for i in range(1, 10000) if f"p{i}" not in st["partitions"])
            if not LABEL_RE.match(label):
                raise TestHostsError(f"bad partition label {label!r}: letters, digits, '_' (1-32)")
            if label in st["partitions"]:
                raise TestHostsError(f"run {self.name} has a partition {label} already (heal it first)")
            a = "{ " + ", ".join(self._host(n, st)["address"] for n in iso) + " }"
            b = "{ " + ", ".join(self._host(n, st)["address"] for n in frm) + " }"
            t, chain = st["nft_table"], f"part_{label}"
            script = [f"add table bridge {t}",
                      f"add chain bridge {t} {chain} {{ type filter hook forward priority 0; policy accept; }}"]
            for src, dst in ((a, b), (b, a)):
                match = f"ip saddr {src} ip daddr {dst}"
                if port_list:
                    ps = "{ " + ", ".join(str(p) for p in port_list) + " }"
                    script += [f"add rule bridge {t} {chain} {match} tcp dport {ps} drop",
                               f"add rule bridge {t} {chain} {match} tcp sport {ps} drop"]
                else:
                    script.append(f"add rule bridge {t} {chain} {match} drop")
            st["partitions"][label] = {"isolate": iso, "from": frm, "ports": port_list, "chain": chain}
            self._save(st)
            try:
                _run(["nft", "-f", "-"], input="\n".join(script) + "\n")
            except TestHostsError:
                del st["partitions"][label]
                self._save(st)
                raise
        log.info("partition %s: %s | %s%s", label, ",".join(iso), ",".join(frm),
                 f" (tcp ports {','.join(map(str, port_list))})" if port_list else "")
        return label

    def heal(self, label: str | None = None) -> list[str]:
        """Remove one partition (label) or all of them; returns the labels removed."""
        _require_root()
        with self._locked() as st:
            t = st["nft_table"]
            if label is None:
                removed = sorted(st["partitions"])
                if ("bridge", t) in _nft_tables():
                    _run(["nft", "delete", "table", "bridge", t])
                st["partitions"] = {}
            else:
                if label not in st["partitions"]:
                    raise TestHostsError(f"no partition {label} in run {self.name} "
                                         f"(partitions: {', '.join(st['partitions']) or 'none'})")
                chain = st["partitions"][label]["chain"]
                _run(["nft", "-f", "-"], input=f"flush chain bridge {t} {chain}\ndelete chain bridge {t} {chain}\n",
                     check=False)
                del st["partitions"][label]
                removed = [label]
                if not st["partitions"] and ("bridge", t) in _nft_tables():
                    _run(["nft", "delete", "table", "bridge", t])
        log.info("healed %s", ", ".join(removed) or "nothing (no partitions)")
        return removed

    # ---- status, listing

    def status(self, check_ssh: bool = True) -> dict[str, Any]:
        """The state plus, per host: running, paused, ssh (sshd answers), pids (number of processes)."""
        st = self.state
        for h in st["hosts"]:
            up = _alive(h["pid"], h["pid_start"])
            members = _pidns_members(h["pid"]) if up else []
            h["running"] = up
            h["processes"] = len(members)
            h["paused"] = bool(members) and all((_stat(p) or ("?",))[0] in ("T", "t") for p in members)
            if check_ssh:
                h["ssh"] = up and not h["paused"] and _ssh_banner(h["address"], 1.0)
        return st

    @staticmethod
    def list_runs(state_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
        """Runs under the state root: name, kind, status, subnet, hosts, run_dir (broken ones too)."""
        root = _state_root(state_dir)
        runs = []
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if not d.is_dir() or not NAME_RE.match(d.name):
                    continue
                try:
                    st = json.loads((d / "state.json").read_text())
                    runs.append({"name": d.name, "kind": st.get("kind"), "status": st.get("status"),
                                 "subnet": st.get("subnet"), "hosts": [h["name"] for h in st.get("hosts", [])],
                                 "run_dir": str(d)})
                except (OSError, ValueError):
                    runs.append({"name": d.name, "kind": None, "status": "broken (no readable state.json)",
                                 "subnet": None, "hosts": [], "run_dir": str(d)})
        return runs

    @staticmethod
    def destroy_all(state_dir: str | os.PathLike[str] | None = None) -> dict[str, dict[str, list[str]]]:
        """destroy() every run under the state root."""
        return {r["name"]: TestHosts(r["name"], state_dir).destroy() for r in TestHosts.list_runs(state_dir)}

    # ---- destroy

    def processes(self) -> list[int]:
        """Live processes of the run: in its netns or PID namespaces, its nspawns, and controller-side ssh
        clients using its key or control sockets (those are what a leak would be)."""
        st = self._lenient_state()
        run = str(self.run_dir) + "/"  # with the slash: run m1 is not run m12
        netns_ino = set()
        for ns in self._netns_names(st):
            with contextlib.suppress(OSError):
                netns_ino.add(f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]")
        inits = {h["pid"] for h in st.get("hosts", []) if _alive(h.get("pid"), h.get("pid_start"))}
        skip = _self_and_ancestors()
        found: set[int] = set()
        machine = f"pth-{self.name}-"
        for pid in _pids():
            if pid in skip or not _alive(pid):
                continue
            if netns_ino and _link(pid, "ns/net") in netns_ino:
                found.add(pid)
                continue
            exe = _exe(pid)
            if exe not in ("systemd-nspawn", "ssh"):
                continue
            args = _cmdline(pid)
            if exe == "systemd-nspawn" and (any(run in a for a in args) or
                                            any(a.startswith((machine, "--machine=" + machine)) for a in args)):
                found.add(pid)
                inits.update(k for k in _children(pid) if len(_nspid(k)) >= 2)
            elif exe == "ssh" and any(run in a for a in args):
                found.add(pid)
        for init in inits:
            found.update(_pidns_members(init))
            if _alive(init):
                found.add(init)
        cgroups = {Path(c) for h in st.get("hosts", []) for c in h.get("cgroups") or []}
        with contextlib.suppress(OSError):
            cgroups.update(c for base in _cgroup_bases() for c in base.glob(f"pth-{self.name}-*"))
        for cg in cgroups:
            for procs in cg.glob("**/cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    found.update(int(x) for x in procs.read_text().split() if _alive(int(x)) and int(x) not in skip)
        return sorted(found)

    def _netns_names(self, st: dict[str, Any], only_existing: bool = False) -> list[str]:
        """The run's netns: recorded ones and those named after the run; with only_existing, those that exist."""
        listed = _netns_list()
        names = {h["netns"] for h in st.get("hosts", []) if h.get("netns")}
        names.update(n for n in listed if n.startswith(f"pth-{self.name}-"))
        return sorted(n for n in names if not only_existing or n in listed)

    def leftovers(self) -> dict[str, list[str]]:
        """What of the run exists on the machine (by state and by naming convention)."""
        st = self._lenient_state()
        links = [x["ifname"] for x in _links() if x["ifname"] == self.bridge or x["ifname"].startswith(
            f"pv-{self.name}-")]
        recorded = {h.get("veth") for h in st.get("hosts", []) if h.get("veth")}
        links += [x["ifname"] for x in _links() if x["ifname"] in recorded and x["ifname"] not in links]
        mounts = _mounts_under(self.run_dir)
        prop = []
        with contextlib.suppress(OSError):
            prop = [str(p) for p in PROPAGATE_DIR.iterdir() if p.name.startswith(f"pth-{self.name}-")]
        cgroups = {c for h in st.get("hosts", []) for c in h.get("cgroups") or [] if Path(c).is_dir()}
        with contextlib.suppress(OSError):
            cgroups.update(str(c) for base in _cgroup_bases() for c in base.glob(f"pth-{self.name}-*") if c.is_dir())
        return {
            "processes": [str(p) for p in self.processes()],
            "cgroups": sorted(cgroups),
            "netns": self._netns_names(st, only_existing=True),
            "links": links,
            "nft_tables": [f"{f} {n}" for f, n in _nft_tables() if n == self.nft_table],
            "mounts": mounts + [m for p in prop for m in _mounts_under(p)],
            "propagate_dirs": prop,
        }

    def _kill_ssh_clients(self, address: str | None = None) -> None:
        """End the controller's ssh clients of this run (to one host): Ansible's ControlPersist masters
        (`ssh: DIR/ansible/cp/HASH [mux]`) would otherwise hang on a host that is gone."""
        run = str(self.run_dir) + "/"
        skip = _self_and_ancestors()
        victims = []
        for pid in _pids():
            if pid in skip or _exe(pid) != "ssh":
                continue
            args = _cmdline(pid)
            if any(run in a for a in args):
                if address is None or any(a == address or a.endswith("@" + address) for a in args) or \
                        address in _tcp_peers(pid):
                    victims.append(pid)
        for p in victims:
            _signal(p, signal.SIGKILL)
        _wait_gone(victims, 5)

    def _remove_propagate(self, machine: str) -> None:
        p = PROPAGATE_DIR / machine
        if p.exists():
            _umount_all(_mounts_under(p))
            shutil.rmtree(p, ignore_errors=True)

    def destroy(self) -> dict[str, list[str]]:
        """Remove every trace of the run (idempotent; works without or with a partial state.json).

        Returns what there was, by category (processes, cgroups, netns, links, nft_tables, mounts,
        propagate_dirs, dirs; all empty when there was nothing). Raises TestHostsError if something could
        not be removed.
        """
        _require_root()
        t0 = time.monotonic()
        st = self._lenient_state()
        before = self.leftovers()
        before["dirs"] = [str(self.run_dir)] if self.run_dir.exists() else []
        if not any(before.values()):
            log.info("run %s: nothing to destroy", self.name)
            return before
        # 1. processes: systemd containers get a short orderly shutdown (in parallel), the rest SIGKILL
        nspawns = []
        for h in st.get("hosts", []):
            if h.get("machine") and _alive(h.get("pid"), h.get("pid_start")):
                members = _pidns_members(h["pid"])
                if any((_stat(p) or ("?",))[0] in ("T", "t") for p in members):
                    continue  # paused: no orderly shutdown possible
                if _signal(h.get("launcher_pid"), signal.SIGTERM, h.get("launcher_start") or -1):
                    nspawns.append(h["launcher_pid"])
        if nspawns:
            _wait_gone(nspawns, 5)
        for _ in range(3):
            procs = self.processes()
            if not procs:
                break
            inits = [p for p in procs if len(_nspid(p)) >= 2 and _nspid(p)[-1] == 1]
            for p in inits + procs:
                _signal(p, signal.SIGKILL)
            _wait_gone(procs, 10)
        # 2. mounts (systemd hosts' overlays, nspawn's propagate folders)
        prop = []
        with contextlib.suppress(OSError):
            prop = [p for p in PROPAGATE_DIR.iterdir() if p.name.startswith(f"pth-{self.name}-")]
        _umount_all(_mounts_under(self.run_dir) + [m for p in prop for m in _mounts_under(p)])
        for p in prop:
            shutil.rmtree(p, ignore_errors=True)
        for cg in self.leftovers()["cgroups"]:
            _rm_cgroup(Path(cg))
        # 3. network: netns, veths, bridge, nft tables
        for ns in self._netns_names(st):
            _run(["ip", "netns", "del", ns], check=False)
        for link in self.leftovers()["links"]:
            if link != self.bridge:
                _run(["ip", "link", "del", link], check=False)
        if any(x["ifname"] == self.bridge for x in _links()):
            _run(["ip", "link", "del", self.bridge], check=False)
        for family, table in _nft_tables():
            if table == self.nft_table:
                _run(["nft", "delete", "table", family, table], check=False)
        # 4. the run folder
        _safe_rmtree(self.run_dir)
        _reap()
        after = self.leftovers()
        after["dirs"] = [str(self.run_dir)] if self.run_dir.exists() else []
        if any(after.values()):
            left = {k: v for k, v in after.items() if v}
            raise TestHostsError(f"destroy {self.name}: could not remove {json.dumps(left)}")
        log.info("destroyed run %s in %.1f s", self.name, time.monotonic() - t0)
        self._state = None
        return before


def _disable_ipv6(ifname: str) -> None:
    with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
        f.write("1")


# ---------------------------------------------------------------------------------------------
# command line


def _print(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS, metavar="DIR",
                        help=f"state root (default ${STATE_DIR_ENV} or {DEFAULT_STATE_DIR}); must lie outside "
                             f"{' '.join(MOUNTED_OVER)}")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log every command run")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="log errors only")
    p = argparse.ArgumentParser(
        prog="testhosts.py", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Several real hosts on this machine, reached over real SSH, with fault injection.\n"
                    "namespace hosts: netns + unshare + tini + sshd (about 1 s for 3); systemd hosts: systemd-nspawn\n"
                    "containers booting systemd on a cached debootstrapped bookworm rootfs. Run as root.",
        epilog="Run folder STATE_ROOT/NAME: state.json, hosts.yml (Ansible inventory, group testhosts),\n"
               "id_ed25519 (controller key), ansible.env (source it: per-run ANSIBLE_HOME/LOCAL_TEMP/\n"
               "SSH_CONTROL_PATH_DIR), hosts/HOST/ (the host's disk and console.log).\n\n"
               "examples:\n"
               "  testhosts.py create t1 --hosts 3\n"
               "  ansible -i /srv/pgha-testhosts/t1/hosts.yml testhosts -m ping\n"
               "  testhosts.py partition t1 --isolate node1 --ports 2379,2380 --label etcd\n"
               "  testhosts.py heal t1 --label etcd\n"
               "  testhosts.py kill t1 node2 && testhosts.py start t1 node2\n"
               "  testhosts.py run t1 node3 -- ps -ef\n"
               "  testhosts.py destroy t1     # or: destroy --all\n\n"
               "Python: sys.path.insert(0, 'scripts'); import testhosts; th = testhosts.TestHosts('t1');\n"
               "th.create(hosts=3); th.ssh('node1', 'hostname'); th.partition('node1'); th.heal(); th.destroy()")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    c = cmd("create", "create a run of hosts and wait until sshd answers on each; prints the state (JSON)")
    c.add_argument("name", metavar="NAME", help="run name: 1-8 lowercase letters/digits")
    c.add_argument("--kind", choices=KINDS, default="namespace", help="namespace (default, fast) or systemd")
    c.add_argument("--hosts", type=int, default=None, metavar="N", help="number of hosts (default 3)")
    c.add_argument("--host-names", metavar="A,B,..", help="host names (default node1..nodeN)")
    c.add_argument("--replace", action="store_true", help="destroy an existing run of that name first")
    c.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for each host (default 30 namespace, 180 systemd)")
    c.add_argument("--keep-on-failure", action="store_true", help="leave a failed create in place to debug it")
    c = cmd("destroy", "remove every trace of runs (idempotent; also without state.json)")
    c.add_argument("names", nargs="*", metavar="NAME")
    c.add_argument("--all", action="store_true", help="every run under the state root")
    cmd("list", "the runs under the state root (JSON)")
    c = cmd("status", "a run's state with each host's liveness (JSON)")
    c.add_argument("name", metavar="NAME")
    c = cmd("partition", "drop traffic between hosts (nftables bridge table in the root namespace)")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--isolate", required=True, metavar="H[,H]", help="hosts on one side")
    c.add_argument("--from", dest="from_hosts", metavar="H[,H]", help="hosts on the other side (default: all others)")
    c.add_argument("--ports", metavar="P[,P]", help="only these TCP ports (destination or source)")
    c.add_argument("--label", help="name of the partition (default p1, p2, ...)")
    c = cmd("heal", "remove one partition (--label) or all of them")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--label")
    for verb, text in (("pause", "SIGSTOP every process of a host"), ("resume", "SIGCONT every process of a host"),
                       ("kill", "kill a whole host at once (SIGKILL its PID 1); its disk stays"),
                       ("stop", "orderly shutdown of a host (SIGTERM, SIGKILL after --timeout)"),
                       ("start", "boot a killed/stopped host again, wait for sshd")):
        c = cmd(verb, text)
        c.add_argument("name", metavar="NAME")
        c.add_argument("host", metavar="HOST")
        if verb in ("start", "stop"):
            c.add_argument("--timeout", type=float, default=None, metavar="S")
    c = cmd("run", "run a command in a host (nsenter, no SSH); exits with its status")
    c.add_argument("name", metavar="NAME")
    c.add_argument("host", metavar="HOST")
    c.add_argument("--json", action="store_true", help="capture; print {returncode, stdout, stderr}")
    c.add_argument("--timeout", type=float, default=None, metavar="S")
    c.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    c = cmd("ssh", "ssh into a host as root (interactive without CMD)")
    c.add_argument("name", metavar="NAME")
    c.add_argument("host", metavar="HOST")
    c.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    c = cmd("env", "print `export` lines for Ansible against a run (inventory, per-run sockets and temp)")
    c.add_argument("name", metavar="NAME")
    c = cmd("rootfs", "build (once) or adopt the systemd hosts' rootfs; prints its path")
    c.add_argument("--adopt", metavar="DIR", help="move a finished debootstrap of the include list into the cache")
    c.add_argument("--rebuild", action="store_true", help="build again even if cached")
    c.add_argument("--mirror", help=f"Debian mirror (default $PGHA_DEBIAN_MIRROR or {DEFAULT_MIRROR})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", False) else (
        logging.ERROR if getattr(args, "quiet", False) else logging.INFO)
    logging.basicConfig(level=level, stream=sys.stderr, format="testhosts: %(message)s")
    sd = getattr(args, "state_dir", None)
    try:
        if args.command == "list":
            _print(TestHosts.list_runs(sd))
            return 0
        if args.command == "rootfs":
            sys.stdout.write(f"{ensure_rootfs(adopt=args.adopt, rebuild=args.rebuild, mirror=args.mirror)}\n")
            return 0
        if args.command == "destroy":
            if args.all == bool(args.names):
                raise TestHostsError("destroy: give run names or --all (not both)")
            _require_root()
            _print(TestHosts.destroy_all(sd) if args.all else {n: TestHosts(n, sd).destroy() for n in args.names})
            return 0
        th = TestHosts(args.name, sd)
        if args.command != "create":
            th.state  # noqa: B018 -- "no run NAME" before anything else
        if args.command == "create":
            names = _split_list(args.host_names) or None
            _print(th.create(args.kind, args.hosts, names, replace=args.replace, timeout=args.timeout,
                             keep_on_failure=args.keep_on_failure))
        elif args.command == "status":
            _print(th.status())
        elif args.command == "partition":
            label = th.partition(args.isolate, args.from_hosts, args.ports, args.label)
            _print({"label": label, **th.state["partitions"][label]})
        elif args.command == "heal":
            _print({"healed": th.heal(args.label)})
        elif args.command in ("pause", "resume"):
            _print({"host": args.host, "pids": getattr(th, args.command)(args.host)})
        elif args.command == "kill":
            th.kill(args.host)
        elif args.command == "stop":
            th.stop(args.host, args.timeout or 10.0)
        elif args.command == "start":
            th.start(args.host, args.timeout)
        elif args.command == "env":
            sys.stdout.write("".join(f"export {k}={shlex.quote(v)}\n" for k, v in th.ansible_env().items()))
        elif args.command in ("run", "ssh"):
            argv_ = list(args.argv)
            while argv_ and argv_[0] != "--" and argv_[0].startswith("-"):  # options given after HOST
                opt = argv_.pop(0)
                if args.command == "run" and opt == "--json":
                    args.json = True
                elif args.command == "run" and opt == "--timeout" and argv_:
                    args.timeout = float(argv_.pop(0))
                else:
                    raise TestHostsError(f"{args.command}: unknown option {opt} (the command goes after --)")
            argv_ = argv_[1:] if argv_[:1] == ["--"] else argv_
            if args.command == "ssh":
                os.execvp("ssh", [*th.ssh_args(args.host), *([" ".join(argv_)] if argv_ else [])])  # as ssh joins
            if not argv_:
                raise TestHostsError("run: give the command after --")
            r = th.run(args.host, argv_, timeout=args.timeout, capture=args.json)
            if args.json:
                _print({"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr})
            return r.returncode
        return 0
    except TestHostsError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
