"""Processes by pid: liveness, descendants, signals. Used by the keeper's fencing and the drills."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (PostgreSQL backends are their own process-group leaders,
    so signalling the postmaster's group would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def signal_pids(pids: list[int], sig: int) -> int:
    """Signal each pid that still exists; returns how many were signalled."""
    n = 0
    for p in pids:
        try:
            os.kill(p, sig)
            n += 1
        except ProcessLookupError:
            pass
    return n


def signal_tree(pid: int | None, sig: int) -> int:
    """Signal ``pid`` and its descendants (children first when stopping, parent first otherwise)."""
    if not pid:
        return 0
    pids = descendants(pid)
    return signal_pids(pids + [pid] if sig in (signal.SIGSTOP, signal.SIGKILL) else [pid] + pids, sig)
