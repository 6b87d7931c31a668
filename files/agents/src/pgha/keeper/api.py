"""The keeper's HTTP API (part of ``pgha.keeper.main.Keeper``): /health, /primary, /replica and
/metrics, answered from what the status thread last collected (never a query of its own)."""

from __future__ import annotations

import json
import time
from typing import Any

from pgha.backup import summary as backup_summary
from pgha.http import prometheus
from pgha.model import ROLE_PRIMARY, ROLE_REPLICA


class Api:
    """The HTTP routes; uses the Keeper's status, cluster data and lease."""

    def api_routes(self) -> dict[str, Any]:
        def health(q: dict[str, list[str]]) -> tuple[int, str, str]:
            st = self.status
            if st.healthy:
                return 200, "application/json", json.dumps({"healthy": True, "role": st.role})
            return 503, "application/json", json.dumps({"healthy": False, "phase": self.phase, "error": self.error})

        def primary(q: dict[str, list[str]]) -> tuple[int, str, str]:
            cd = self.cd
            ok = bool(cd and cd.primary == self.uid and self.status.healthy and self.status.role == ROLE_PRIMARY
                      and not self.fenced and not (cd.transition and cd.transition.new == self.uid
                                                   and cd.transition.stage == "fence"))
            return (200 if ok else 503), "application/json", json.dumps({"primary": ok})

        def replica(q: dict[str, list[str]]) -> tuple[int, str, str]:
            st = self.status
            lag = self.replica_lag()
            ok = st.healthy and st.role == ROLE_REPLICA and st.streaming_from is not None
            if ok and "max_lag" in q:
                try:
                    limit = int(q["max_lag"][0])
                except ValueError:
                    return 400, "text/plain", "max_lag must be a number of bytes\n"
                ok = lag is not None and lag <= limit
            return (200 if ok else 503), "application/json", json.dumps({"replica": ok, "lag": lag})

        def metrics(q: dict[str, list[str]]) -> tuple[int, str, str]:
            st = self.status
            labels = {"keeper": self.uid}
            m = [
                ("pgha_keeper_up", "gauge", "PostgreSQL is running and answering", labels, 1.0 if st.healthy else 0.0),
                ("pgha_keeper_is_primary", "gauge", "1 when running as primary", labels,
                 1.0 if st.role == ROLE_PRIMARY else 0.0),
                ("pgha_keeper_is_replica", "gauge", "1 when running as replica", labels,
                 1.0 if st.role == ROLE_REPLICA else 0.0),
                ("pgha_keeper_timeline", "gauge", "current timeline", labels, float(st.timeline or 0)),
                ("pgha_keeper_lsn_bytes", "gauge", "current WAL position in bytes", labels, float(st.lsn or 0)),
                ("pgha_keeper_replication_lag_bytes", "gauge", "replay lag behind the upstream (replicas)", labels,
                 float(self.replica_lag() or 0)),
                ("pgha_keeper_store_contact_age_seconds", "gauge", "seconds since the lease was last renewed",
                 labels, self.lease.age() if self.lease.age() is not None else -1.0),
                ("pgha_keeper_fenced", "gauge", "1 when the keeper fenced itself (lease lapsed)", labels,
                 1.0 if self.fenced else 0.0),
            ] + self.backup_metrics(labels)
            return 200, "text/plain; version=0.0.4", prometheus(m)

        return {"/health": health, "/primary": primary, "/replica": replica, "/metrics": metrics}

    def backup_metrics(self, labels: dict[str, str]) -> list[tuple[str, str, str, dict[str, str], float]]:
        """With a backup repository: seconds since the last backup and the last archived segment,
        archive failures (-1: not known yet)."""
        b = backup_summary(self.backup_state, time.time()) if self.backup_state else None
        if b is None:
            return []

        def known(value: float | None) -> float:
            return -1.0 if value is None else float(value)
        return [
            ("pgha_keeper_backup_age_seconds", "gauge", "seconds since the newest backup finished", labels,
             known(b["seconds_since_backup"])),
            ("pgha_keeper_archive_age_seconds", "gauge", "seconds since a WAL segment was last archived (primary)",
             labels, known(b["seconds_since_archived"])),
            ("pgha_keeper_archive_failures_total", "counter", "failed WAL archive attempts (primary)", labels,
             known(b["failed_count"])),
        ]

