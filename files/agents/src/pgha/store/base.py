"""The store interface every agent uses.

Atomicity: each method is one etcd request and is atomic on its own. ``cas`` compares the
modification revision of one key (0 means "must not exist") and, optionally, the exact value of a
second key (the guard) in the same transaction: the sentinel uses the guard so that only the
current leader can write the cluster data. Leases expire on the server; a key put with a lease
disappears when the lease does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


class StoreError(Exception):
    """The store could not be reached or answered with an error."""


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by ``Store.wait_events``: kind is "put", "delete" or "resync" (the store
    could not say what changed, e.g. after a compaction: treat everything as changed)."""

    kind: str
    key: str
    revision: int = 0


class Store(ABC):
    @abstractmethod
    def get(self, key: str) -> KV | None:
        """The key's current value, or None."""

    @abstractmethod
    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        """All keys under ``prefix`` (sorted) and the store revision they were read at."""

    @abstractmethod
    def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Unconditional write; returns the new revision."""

    @abstractmethod
    def cas(self, key: str, value: bytes | str, mod_revision: int, *, lease: int = 0,
            guard: tuple[str, bytes | str] | None = None) -> bool:
        """Write ``key`` only if its mod revision is ``mod_revision`` (0: absent) and the guard key
        holds exactly the guard value. Returns whether the write happened."""

    @abstractmethod
    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete ``key`` (only at ``mod_revision`` when given). Returns whether it was deleted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix``."""

    @abstractmethod
    def grant(self, ttl: int, budget: float | None = None) -> int:
        """A new lease of ``ttl`` whole seconds. ``budget``: give up (StoreError) after this many
        seconds in all, whatever the number of endpoints (default: the store's own timeouts)."""

    def grant_lease(self, ttl: int, budget: float | None = None) -> tuple[int, int]:
        """A new lease and the TTL the server granted (which may be longer than asked)."""
        return self.grant(ttl, budget), ttl

    @abstractmethod
    def keepalive(self, lease: int, budget: float | None = None) -> int:
        """Renew ``lease``; returns its TTL, or 0 when the lease has already expired."""

    def lease_alive(self, lease: int) -> bool:
        """Whether ``lease`` still exists on the server (not expired, not revoked)."""
        return self.keepalive(lease) > 0  # a fallback that renews it; the backends only ask

    @abstractmethod
    def revoke(self, lease: int) -> None:
        """End ``lease`` now, deleting its keys."""

    @abstractmethod
    def wait(self, prefix: str, after_revision: int, timeout: float) -> bool:
        """Block until a key under ``prefix`` changes after ``after_revision`` or ``timeout`` passes.
        Returns True on a change. Agents use it to react at once instead of at the next poll."""

    def wait_events(self, prefix: str, after_revision: int, timeout: float) -> list[WatchEvent]:
        """Like ``wait``, but says what changed (empty on timeout). This default cannot tell and
        reports one "resync" event; the etcd store lists the events."""
        if self.wait(prefix, after_revision, timeout):
            return [WatchEvent("resync", prefix, after_revision + 1)]
        return []

    def members(self) -> list[dict[str, Any]]:
        """The store's members as the endpoints see them: [{endpoint, healthy, member_id, leader}]
        (empty where the backend has no members, like the in-memory store)."""
        return []

    def move_leader(self, member_id: str) -> None:
        """Make ``member_id`` the store's leader (a graceful leadership transfer)."""
        raise StoreError("this store has no leader to move")

    def close(self) -> None:  # pragma: no cover - default no-op
        pass
