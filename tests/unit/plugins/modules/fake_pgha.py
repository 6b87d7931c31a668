# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""A fake of the pgha library's ``Ctl`` for the module tests: an in-memory cluster that records
calls. It raises the exception classes the modules catch (module_utils.client.CtlError), which
are pgha's own when pgha is installed and stand-ins otherwise."""

from __future__ import annotations

import copy

from ansible_collections.pgha.cluster.plugins.module_utils import client

DEFAULTS = {
    "sleep_interval": 0.5,
    "fail_interval": 3.0,
    "synchronous_replication": False,
    "max_standby_lag": 1048576,
    "pg_parameters": {},
    "pg_hba": [],
}


def fake_status(primary="keeper1", replicas=("keeper2", "keeper3"), phase="normal", **overrides):
    keepers = []
    if primary:
        keepers.append({"uid": primary, "healthy": True, "role": "primary", "address": "127.0.0.1:5433",
                        "timeline": 1, "lsn": "0/3000060", "synchronous": False, "streaming": False, "lag": None})
    for i, uid in enumerate(replicas):
        keepers.append({"uid": uid, "healthy": True, "role": "replica", "address": "127.0.0.1:%d" % (5434 + i),
                        "timeline": 1, "lsn": "0/3000060", "synchronous": False, "streaming": True, "lag": 0})
    status = {
        "cluster": {"name": "main", "phase": phase, "primary": primary, "generation": 3, "message": ""},
        "keepers": keepers,
        "sentinels": [{"uid": "sentinel1", "leader": True}, {"uid": "sentinel2", "leader": False}],
        "proxies": [{"uid": "proxy1", "address": "127.0.0.1:25432", "ro_address": "127.0.0.1:25433",
                     "target": primary}],
    }
    status.update(overrides)
    return status


class FakeCtl:
    def __init__(self, spec=None, status=None, switchover_result=None, error=None):
        self.spec = copy.deepcopy(spec)
        self._status = status if status is not None else fake_status()
        self.switchover_result = switchover_result
        self.error = error  # raised by every call when set
        self.calls = []

    def _maybe_fail(self):
        if self.error is not None:
            raise self.error

    def normalize(self, spec):
        self.calls.append(("normalize", spec))
        self._maybe_fail()
        unknown = sorted(set(spec) - set(DEFAULTS))
        if unknown:
            raise client.CtlError("unknown spec key %r" % unknown[0])
        out = copy.deepcopy(DEFAULTS)
        out.update(copy.deepcopy(spec))
        return out

    def successor(self, spec):
        return self.normalize(spec)

    def get_spec(self):
        self.calls.append(("get_spec",))
        self._maybe_fail()
        return copy.deepcopy(self.spec)

    def init(self, spec, force=False):
        self.calls.append(("init", spec, force))
        self._maybe_fail()
        if self.spec is not None and not force:
            raise client.CtlError("cluster main is already initialized")
        self.spec = self.normalize(spec)
        return copy.deepcopy(self.spec)

    def update(self, patch):
        self.calls.append(("update", patch))
        self._maybe_fail()
        old = copy.deepcopy(self.spec)
        new = copy.deepcopy(self.spec)
        for key, value in patch.items():
            if isinstance(value, dict) and isinstance(new.get(key), dict):
                merged = dict(new[key])
                for k, v in value.items():
                    if v is None:
                        merged.pop(k, None)
                    else:
                        merged[k] = v
                new[key] = merged
            elif value is None:
                new[key] = DEFAULTS.get(key)
            else:
                new[key] = value
        self.spec = self.normalize(new)
        return old, copy.deepcopy(self.spec)

    def set_spec(self, spec):
        self.calls.append(("set_spec", spec))
        self._maybe_fail()
        if self.spec is None:
            raise client.CtlError("cluster main is not initialized")
        old = copy.deepcopy(self.spec)
        self.spec = self.normalize(spec)
        return old, copy.deepcopy(self.spec)

    def status(self):
        self.calls.append(("status",))
        self._maybe_fail()
        return copy.deepcopy(self._status)

    def switchover(self, to=None, timeout=60.0):
        self.calls.append(("switchover", to, timeout))
        self._maybe_fail()
        return self.switchover_result or {"from": "keeper1", "to": to or "keeper2", "state": "done"}

    def backup(self, kind="full", timeout=3600.0, source="auto"):
        self.calls.append(("backup", kind, timeout, source))
        self._maybe_fail()
        label = "20261203-101500F" if kind == "full" else "20261203-101500F_20261203-102000" + kind[0].upper()
        done = {"label": label, "type": kind, "start": 1764756900, "stop": 1764756920, "wal_start": "00000001",
                "wal_stop": "00000001", "size_bytes": 4000000, "id": "abc", "keeper": "keeper1",
                "from": "keeper1" if source == "primary" else "keeper2", "seconds": 20.0}
        self.listed = getattr(self, "listed", []) + [{k: done[k] for k in list(done)[:7]}]
        return done

    def backups(self):
        self.calls.append(("backups",))
        self._maybe_fail()
        return copy.deepcopy(getattr(self, "listed", []))

    def names(self):
        return [c[0] for c in self.calls]


class FakeEtcdStore:
    """Stands in for pgha.store.etcd.EtcdStore: member_health() returns what it was given."""

    members = []

    def __init__(self, endpoints, **kwargs):
        self.endpoints = endpoints
        self.kwargs = kwargs

    def member_health(self):
        return copy.deepcopy(type(self).members)
