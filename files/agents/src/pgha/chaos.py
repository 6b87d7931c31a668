"""A built-in chaoskube: kill a random component every ``interval`` for ``duration`` and let the
platform restart it, while counting the failovers it causes.

``run()`` is the loop with the platform and the clock injected (unit-tested with fakes);
``Supervisor`` is the local platform: supervisord programs, killed with SIGKILL (a keeper together
with its PostgreSQL) and restarted by supervisord itself (``autorestart``), the way the platform
would.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from pgha.procs import signal_tree


@dataclass(frozen=True)
class Target:
    name: str  # supervisord program name (or pod name on Kubernetes)
    component: str  # keeper | sentinel | proxy | etcd


class Platform(Protocol):
    def kill(self, target: Target) -> str:
        """Kill the target; returns what was done."""

    def is_up(self, target: Target) -> bool:
        """Whether the platform has it running again."""


@dataclass
class ChaosResult:
    kills: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # rounds where max_down components were still down
    primaries: list[tuple[float, str | None]] = field(default_factory=list)  # (time, primary) on change

    @property
    def failovers(self) -> int:
        seen = [p for _, p in self.primaries if p is not None]
        return sum(1 for a, b in zip(seen, seen[1:]) if a != b)


def choose(targets: list[Target], down: set[str], include_etcd: bool, rng: random.Random) -> Target | None:
    pool = [t for t in targets if t.name not in down and (include_etcd or t.component != "etcd")]
    return rng.choice(pool) if pool else None


def run(targets: list[Target], platform: Platform, *, interval: float, duration: float, max_down: int,
        include_etcd: bool = False, seed: int | None = None, observe: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
        recovery_grace: float = 2.0) -> ChaosResult:
    """Kill a random target every ``interval`` seconds for ``duration`` seconds.

    Never more than ``max_down`` targets are down at once: a killed target counts as down until the
    platform has it up again and ``recovery_grace`` seconds have passed. ``observe()`` returns the
    current primary; it is sampled between kills to count failovers."""
    rng = random.Random(seed)
    res = ChaosResult()
    down: dict[str, float] = {}  # name -> time it was killed
    start = clock()
    next_kill = start
    last_primary: object = object()
    while True:
        now = clock()
        for name in list(down):
            t = next(t for t in targets if t.name == name)
            if now - down[name] >= recovery_grace and platform.is_up(t):
                down.pop(name)
        if observe is not None:
            primary = observe()
            if primary != last_primary:
                res.primaries.append((now, primary))
                last_primary = primary
        if now - start >= duration:
            break
        if now >= next_kill:
            next_kill += interval
            if len(down) >= max_down:
                res.skipped += 1
            else:
                target = choose(targets, set(down), include_etcd, rng)
                if target is not None:
                    what = platform.kill(target)
                    down[target.name] = clock()
                    res.kills.append({"at": down[target.name], "name": target.name,
                                      "component": target.component, "what": what})
        sleep(min(0.25, max(0.0, next_kill - clock())))
    return res


class Supervisor:
    """The local platform: one supervisord per cluster (see the pgha role)."""

    def __init__(self, supervisorctl: str, config: str) -> None:
        self.cmd = [supervisorctl, "-c", config]

    def _ctl(self, *args: str) -> str:
        out = subprocess.run(self.cmd + list(args), capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    def programs(self) -> dict[str, str]:
        """program name -> state (RUNNING, STARTING, BACKOFF, ...)."""
        out = {}
        for line in self._ctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = parts[1]
        return out

    def pid(self, name: str) -> int | None:
        text = self._ctl("pid", name)
        return int(text) if text.isdigit() and int(text) > 0 else None

    def kill(self, target: Target) -> str:
        pid = self.pid(target.name)
        if pid is None:
            return f"{target.name} was not running"
        n = signal_tree(pid, signal.SIGKILL)
        return f"SIGKILL {target.component} {target.name} (pid {pid}, {n} processes)"

    def is_up(self, target: Target) -> bool:
        return self.programs().get(target.name) == "RUNNING"
