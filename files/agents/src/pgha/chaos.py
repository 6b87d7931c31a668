"""Chaos, pgha's own chaoskube: one random fault per round while clients write, the platform (and
the cluster) repairing what broke. ``playbooks/chaos.yml`` runs the rounds; this module holds
what is not Ansible:

* ``plan()``: which fault each round brings, a pure function of the targets, the hosts and a seed
  (so a run can be replayed): a **kill** (SIGKILL of a keeper together with its PostgreSQL, of a
  sentinel, a proxy worker or, with ``include_etcd``, an etcd member; its supervisor restarts it) or
  a **partition** of one host from the others (all its traffic, or only the store's ports), healed
  after ``partition_seconds`` by a timer on that host (``pgha.netfault``);
* ``Supervisor`` and ``Systemd``: the local platforms, which kill a program on this host;
* ``failovers()``: how many times the primary changed, from the primaries seen between rounds.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pgha.procs import signal_tree

FAULTS = ("kill", "partition")
PARTITION_SCOPES = ("host", "store")


@dataclass(frozen=True)
class Target:
    name: str  # supervisord program (systemd unit pgha-<cluster>-<name>)
    component: str  # keeper | sentinel | proxy | etcd
    host: str = ""  # the inventory host it runs on


class Platform(Protocol):
    def kill(self, target: Target) -> str:
        """Kill the target; returns what was done."""

    def is_up(self, target: Target) -> bool:
        """Whether the platform has it running again."""


def plan(targets: list[Target], hosts: list[str], *, rounds: int, faults: tuple[str, ...] = ("kill",),
         seed: int | None = None, include_etcd: bool = False, partition_seconds: float = 8.0) -> list[dict[str, Any]]:
    """One fault per round. A partition needs at least three hosts (one cut off, a majority left)."""
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or not faults:
        raise ValueError(f"faults must be some of {', '.join(FAULTS)}, not {', '.join(unknown) or 'none'}")
    if "partition" in faults and len(set(hosts)) < 3:
        raise ValueError(f"partitions need the cluster on at least three hosts, not {len(set(hosts))} "
                         f"({', '.join(sorted(set(hosts))) or 'none'})")
    pool = [t for t in targets if include_etcd or t.component != "etcd"]
    if "kill" in faults and not pool:
        raise ValueError("no target to kill")
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(rounds):
        kind = rng.choice(faults)
        if kind == "kill":
            t = rng.choice(pool)
            out.append({"round": i + 1, "fault": "kill", "name": t.name, "component": t.component, "host": t.host})
        else:
            out.append({"round": i + 1, "fault": "partition", "host": rng.choice(sorted(set(hosts))),
                        "scope": rng.choice(PARTITION_SCOPES), "seconds": partition_seconds})
    return out


def failovers(primaries: list[str | None]) -> int:
    """Primary changes in a sequence of observations (None: no primary at that moment)."""
    seen = [p for p in primaries if p]
    return sum(1 for a, b in zip(seen, seen[1:]) if a != b)


def _run(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip()


class Supervisor:
    """The local platform under supervisord: one per cluster (see the pgha role)."""

    def __init__(self, supervisorctl: str, config: str) -> None:
        self.cmd = [supervisorctl, "-c", config]

    def programs(self) -> dict[str, str]:
        """program name -> state (RUNNING, STARTING, BACKOFF, ...)."""
        out = {}
        for line in _run(self.cmd + ["status"]).splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = parts[1]
        return out

    def kill(self, target: Target) -> str:
        text = _run(self.cmd + ["pid", target.name])
        pid = int(text) if text.isdigit() and int(text) > 0 else None
        if pid is None:
            return f"{target.name} was not running"
        n = signal_tree(pid, signal.SIGKILL)
        return f"SIGKILL {target.component} {target.name} (pid {pid}, {n} processes)"

    def is_up(self, target: Target) -> bool:
        return self.programs().get(target.name) == "RUNNING"


class Systemd:
    """The local platform under systemd: unit pgha-<cluster>-<name>, Restart=always."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    def unit(self, target: Target) -> str:
        return f"pgha-{self.cluster}-{target.name}.service"

    def kill(self, target: Target) -> str:
        unit = self.unit(target)
        if _run(["systemctl", "is-active", unit]) != "active":
            return f"{unit} was not running"
        out = subprocess.run(["systemctl", "kill", "--signal=SIGKILL", unit], capture_output=True, text=True,
                             timeout=30, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"systemctl kill {unit}: {out.stderr.strip() or out.stdout.strip()}")
        return f"SIGKILL {target.component} {target.name} (every process of {unit})"

    def is_up(self, target: Target) -> bool:
        return _run(["systemctl", "is-active", self.unit(target)]) == "active"


def kill(target: Target, platform: Platform) -> dict[str, Any]:
    at = time.time()
    return {"at": at, "name": target.name, "component": target.component, "host": target.host,
            "what": platform.kill(target)}
