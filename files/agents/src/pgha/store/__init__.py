"""Store backends: etcd v3 (``etcd.EtcdStore``) and in-memory (``memory.MemoryStore``) for tests."""

from pgha.store.base import KV, Store, StoreError, WatchEvent

__all__ = ["KV", "Store", "StoreError", "WatchEvent", "open_store"]


def open_store(endpoints: str, *, ca_file: str | None = None, cert_file: str | None = None,
               key_file: str | None = None, timeout: float = 2.0, user: str | None = None,
               password: str | None = None) -> Store:
    """Open the store named by ``--store-endpoints`` (``memory://`` gives a private in-memory store)."""
    if endpoints.startswith("memory://"):
        from pgha.store.memory import MemoryStore

        return MemoryStore()
    from pgha.store.etcd import EtcdStore

    return EtcdStore(endpoints, ca_file=ca_file, cert_file=cert_file, key_file=key_file, timeout=timeout,
                     user=user, password=password)
