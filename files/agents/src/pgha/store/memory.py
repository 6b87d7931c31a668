"""In-memory store with the same interface as etcd, for unit tests of pure logic.

Leases expire by an injectable clock; call ``expire()`` (or any method) to apply expiry.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from pgha.store.base import KV, Store


def _b(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class MemoryStore(Store):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._data: dict[str, KV] = {}
        self._leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, deadline)
        self._revision = 1
        self._next_lease = 1
        self._cond = threading.Condition()
        self.down = False  # set True to simulate an unreachable store

    # -- helpers
    def _check(self) -> None:
        from pgha.store.base import StoreError

        if self.down:
            raise StoreError("memory store is down (simulated)")
        self.expire()

    def expire(self) -> None:
        now = self._clock()
        dead = [lid for lid, (_, deadline) in self._leases.items() if deadline <= now]
        for lid in dead:
            self._drop_lease(lid)

    def _drop_lease(self, lid: int) -> None:
        self._leases.pop(lid, None)
        for key in [k for k, kv in self._data.items() if kv.lease == lid]:
            del self._data[key]
            self._bump()

    def _bump(self) -> int:
        self._revision += 1
        self._cond.notify_all()
        return self._revision

    def _write(self, key: str, value: bytes | str, lease: int) -> int:
        rev = self._bump()
        old = self._data.get(key)
        self._data[key] = KV(key, _b(value), rev, old.create_revision if old else rev, lease)
        return rev

    # -- Store
    def get(self, key: str) -> KV | None:
        with self._cond:
            self._check()
            return self._data.get(key)

    def get_prefix(self, prefix: str) -> tuple[list[KV], int]:
        with self._cond:
            self._check()
            return [self._data[k] for k in sorted(self._data) if k.startswith(prefix)], self._revision

    def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        with self._cond:
            self._check()
            return self._write(key, value, lease)

    def cas(self, key: str, value: bytes | str, mod_revision: int, *, lease: int = 0,
            guard: tuple[str, bytes | str] | None = None) -> bool:
        with self._cond:
            self._check()
            cur = self._data.get(key)
            if (cur.mod_revision if cur else 0) != mod_revision:
                return False
            if guard is not None:
                g = self._data.get(guard[0])
                if g is None or g.value != _b(guard[1]):
                    return False
            self._write(key, value, lease)
            return True

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        with self._cond:
            self._check()
            cur = self._data.get(key)
            if cur is None or (mod_revision is not None and cur.mod_revision != mod_revision):
                return False
            del self._data[key]
            self._bump()
            return True

    def delete_prefix(self, prefix: str) -> None:
        with self._cond:
            self._check()
            for key in [k for k in self._data if k.startswith(prefix)]:
                del self._data[key]
            self._bump()

    def grant(self, ttl: int, budget: float | None = None) -> int:
        with self._cond:
            self._check()
            lid = self._next_lease
            self._next_lease += 1
            self._leases[lid] = (ttl, self._clock() + ttl)
            return lid

    def keepalive(self, lease: int, budget: float | None = None) -> int:
        with self._cond:
            self._check()
            if lease not in self._leases:
                return 0
            ttl, _ = self._leases[lease]
            self._leases[lease] = (ttl, self._clock() + ttl)
            return ttl

    def lease_alive(self, lease: int) -> bool:
        with self._cond:
            self._check()
            return lease in self._leases

    def revoke(self, lease: int) -> None:
        with self._cond:
            self._check()
            self._drop_lease(lease)

    def wait(self, prefix: str, after_revision: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._revision <= after_revision:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
