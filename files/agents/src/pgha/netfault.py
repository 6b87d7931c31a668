"""Network partitions made on the host itself, for the partition drills (``drill_disrupt``).

``partition()`` cuts this host off from chosen peer addresses with an nftables table of its own
(``inet pgha_drill_<name>``): every packet to or from a peer is dropped in both directions,
established connections included, as a switch failure would do; or, with ``ports``, only the
TCP traffic to and from those ports (the store's, say), so that the host loses the store but keeps
everything else. The addresses in ``keep`` (the controller running the drill) are never cut. The
table is removed by ``heal()``, and in any case after ``heal_after`` seconds by a detached timer,
so a drill that dies halfway never leaves a host cut off.

Works wherever nftables does: real hosts, network-namespace hosts, systemd-nspawn containers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

TABLE_PREFIX = "pgha_drill_"
RUN_DIR = Path("/run")


class FaultError(Exception):
    """The partition could not be made or healed."""


def table_name(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]{1,40}", name):
        raise FaultError(f"partition name {name!r}: use 1-40 lowercase letters, digits or _")
    return TABLE_PREFIX + name


def _nft() -> str:
    path = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if not path:
        raise FaultError("nft not found: install nftables on this host (apt-get install nftables)")
    return path


def _addresses(items: list[str], what: str) -> tuple[list[str], list[str]]:
    v4, v6 = [], []
    for item in items:
        try:
            addr = ipaddress.ip_address(item)
        except ValueError:
            raise FaultError(f"{what}: {item!r} is not an IP address") from None
        (v4 if addr.version == 4 else v6).append(str(addr))
    return v4, v6


def ruleset(table: str, peers: list[str], keep: list[str], ports: list[int] | None) -> str:
    """The nftables script that makes the partition (pure; unit-tested)."""
    p4, p6 = _addresses(peers, "peers")
    k4, k6 = _addresses(keep, "keep")
    if not p4 and not p6:
        raise FaultError("no peer address to cut this host off from")
    for port in ports or []:
        if not 0 < int(port) < 65536:
            raise FaultError(f"port {port} out of range")
    lines = [f"table inet {table} {{"]
    for chain, hook, them in (("cut_in", "input", "saddr"), ("cut_out", "output", "daddr")):
        lines += [f"  chain {chain} {{", f"    type filter hook {hook} priority -10; policy accept;"]
        for fam, kept in (("ip", k4), ("ip6", k6)):
            if kept:
                lines.append(f"    {fam} {them} {{ {', '.join(kept)} }} accept")
        for fam, cut in (("ip", p4), ("ip6", p6)):
            if not cut:
                continue
            match = f"{fam} {them} {{ {', '.join(cut)} }}"
            if ports:
                plist = ", ".join(str(int(p)) for p in sorted(set(ports)))
                lines.append(f"    {match} tcp dport {{ {plist} }} drop")
                lines.append(f"    {match} tcp sport {{ {plist} }} drop")
            else:
                lines.append(f"    {match} drop")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _timer_pidfile(table: str) -> Path:
    return RUN_DIR / f"{table}.heal.pid"


def _table_exists(nft: str, table: str) -> bool:
    return subprocess.run([nft, "list", "table", "inet", table], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False).returncode == 0


def partition(name: str, peers: list[str], keep: list[str], ports: list[int] | None = None,
              heal_after: float = 60.0) -> dict[str, Any]:
    """Cut this host off from ``peers`` (all traffic, or TCP ``ports`` only), ``keep`` excepted."""
    nft = _nft()
    table = table_name(name)
    script = ruleset(table, peers, keep, ports)
    if _table_exists(nft, table):
        heal(name)
    out = subprocess.run([nft, "-f", "-"], input=script.encode(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, check=False)
    at = time.time()
    if out.returncode != 0:
        raise FaultError(f"nft refused the partition: {out.stdout.decode(errors='replace').strip()}")
    timer = subprocess.Popen(["/bin/sh", "-c", f'sleep {float(heal_after):.1f}; exec "$0" delete table inet {table}',
                              nft], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    _timer_pidfile(table).write_text(str(timer.pid))
    return {"table": table, "at": at, "peers": peers, "keep": keep, "ports": ports or [],
            "heal_after": heal_after, "timer_pid": timer.pid, "rules": script}


def heal(name: str) -> dict[str, Any]:
    """Remove the partition (and its timer); True in ``healed`` when there was one."""
    nft = _nft()
    table = table_name(name)
    pidfile = _timer_pidfile(table)
    try:
        pid = int(pidfile.read_text())
        os.killpg(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass
    pidfile.unlink(missing_ok=True)
    existed = _table_exists(nft, table)
    if existed:
        out = subprocess.run([nft, "delete", "table", "inet", table], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, check=False)
        if out.returncode != 0 and _table_exists(nft, table):
            raise FaultError(f"nft could not remove {table}: {out.stdout.decode(errors='replace').strip()}")
    return {"table": table, "at": time.time(), "healed": existed}
