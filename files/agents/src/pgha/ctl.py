"""pghactl: initialize, inspect and steer a pgha cluster.

``Ctl`` is the library the Ansible modules wrap; ``main()`` is the command line. pghactl never
writes the cluster data itself (only the leading sentinel does): it writes the spec (by
compare-and-swap) and requests under ``commands/`` that the leading sentinel consumes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from pgha import cli
from pgha.backup import BACKUP_SOURCES, BACKUP_TYPES, describe_target, summary as backup_summary
from pgha.model import (
    COMMAND_SWITCHOVER,
    FORMAT_VERSION,
    ROLE_PRIMARY,
    STATUS_PREFIXES,
    ClusterData,
    Command,
    FormatError,
    KeeperStatus,
    ProxyStatus,
    SentinelStatus,
    dumps,
    int_to_lsn,
    keys,
    load_status,
    load_statuses,
    loads,
)
from pgha.spec import Spec, SpecError, merge_patch, normalize, replace_whole, valid_uid, with_init_keys
from pgha.store import Store, StoreError


class CtlError(Exception):
    """A request that cannot be carried out; the message says why."""


def _keeper_row(uid: str, st: KeeperStatus | None, cd: ClusterData | None, primary_lsn: int | None) -> dict[str, Any]:
    """One keeper as ``pghactl status`` shows it: what it reports, and what the cluster data wants."""
    want = cd.keepers.get(uid) if cd else None
    lag = None
    if st and st.role == "replica" and primary_lsn is not None and st.lsn is not None:
        lag = max(0, primary_lsn - st.lsn)
    return {
        "uid": uid,
        "healthy": bool(st and st.healthy),
        "role": st.role if st else "none",
        "desired_role": want.role if want else None,
        "address": (st.address if st else "") or (want.address if want else ""),
        "host": st.host if st else "",
        "data_dir": st.data_dir if st else "",
        "pid": st.pid if st else 0,
        "timeline": st.timeline if st else None,
        "lsn": int_to_lsn(st.lsn) if st and st.lsn is not None else None,
        "lag": lag,
        "streaming": bool(st and st.streaming_from),
        "synchronous": bool(cd and uid in cd.sync.standbys),
        "sync_candidate": bool(cd and uid in cd.sync.candidates),
        "phase": st.phase if st else "down",
        "error": st.error if st else "no status (keeper down or its lease expired)",
        "pending_restart": bool(st and st.pending_restart),
        "drained": bool(want and want.drained),
        "pg_tls": bool(st and st.pg_tls),
        "backup": backup_summary(st.backup, time.time()) if st else None,
    }


class Ctl:
    def __init__(self, store: Store, prefix: str = "pgha", cluster: str = "main") -> None:
        self.store = store
        self.cluster = cluster
        self.keys = keys(prefix, cluster)

    # ------------------------------------------------------------------ reading
    def _spec_doc(self) -> tuple[dict[str, Any] | None, int]:
        kv = self.store.get(self.keys.spec)
        if kv is None:
            return None, 0
        try:
            return loads(kv.value, "spec"), kv.mod_revision
        except FormatError as exc:
            raise CtlError(str(exc)) from None

    def get_spec(self) -> dict[str, Any] | None:
        """The stored spec in its JSON form (every default filled in), None before init."""
        spec = self._stored_spec()[0]
        return spec.to_dict() if spec is not None else None

    def _stored_spec(self) -> tuple[Spec | None, dict[str, Any] | None, int]:
        doc, rev = self._spec_doc()
        if doc is None:
            return None, None, rev
        try:
            return normalize(doc.get("spec")), doc, rev
        except SpecError as exc:
            raise CtlError(f"stored spec is invalid: {exc}") from None

    def clusterdata(self) -> ClusterData | None:
        kv = self.store.get(self.keys.clusterdata)
        if kv is None:
            return None
        try:
            return ClusterData.loads(kv.value)
        except FormatError as exc:
            raise CtlError(str(exc)) from None

    def status(self) -> dict[str, Any]:
        kvs, _ = self.store.get_prefix(self.keys.base)
        cd: ClusterData | None = None
        statuses: dict[str, KeeperStatus] = {}
        sentinels: dict[str, SentinelStatus] = {}
        proxies: list[ProxyStatus] = []
        ignored: dict[str, str] = {}  # status documents no agent believes, and why
        leader = None
        for kv in kvs:
            name = kv.key[len(self.keys.base):]
            try:
                if name == "clusterdata":
                    cd = ClusterData.loads(kv.value)
                elif name.startswith("keepers/"):  # believed as the sentinel believes them (load_status)
                    st = load_status(KeeperStatus, name, kv.value, kv.lease)
                    statuses[st.uid] = st
                elif name.startswith("sentinels/"):
                    sst = load_status(SentinelStatus, name, kv.value, kv.lease)
                    sentinels[sst.uid] = sst
                elif name.startswith("proxies/"):
                    proxies.append(load_status(ProxyStatus, name, kv.value, kv.lease))
                elif name == "sentinel-leader":
                    leader = kv.value.decode()
            except FormatError as exc:
                if name == "clusterdata":
                    raise CtlError(str(exc)) from None
                if name.startswith(STATUS_PREFIXES):
                    ignored[name] = str(exc)
        spec = self.get_spec()
        primary = cd.primary if cd else None
        primary_lsn = statuses[primary].lsn if primary in statuses and statuses[primary].role == ROLE_PRIMARY \
            else None
        keepers = [_keeper_row(uid, statuses.get(uid), cd, primary_lsn)
                   for uid in sorted(set(statuses) | set(cd.keepers if cd else {}))]
        return {
            "cluster": {
                "name": self.cluster,
                "initialized": spec is not None,
                "uid": cd.uid if cd else None,
                "phase": cd.phase if cd else None,
                "primary": primary,
                "generation": cd.generation if cd else 0,
                "proxy_target": cd.proxy.target if cd else None,
                "proxy_generation": cd.proxy.generation if cd else 0,
                "ro_targets": list(cd.proxy.ro_targets) if cd else [],
                "synchronous_standbys": list(cd.sync.standbys) if cd else [],
                "transition": (cd.transition.kind + ":" + cd.transition.stage) if cd and cd.transition else None,
                "message": cd.message if cd else ("not initialized" if spec is None else "waiting for a sentinel"),
                "last_switchover": cd.last_switchover if cd else None,
                "last_transition": cd.last_transition if cd else None,
            },
            "keepers": keepers,
            "sentinels": [{"uid": s, "leader": s == leader, "host": sentinels[s].host} for s in sorted(sentinels)],
            "proxies": [{"uid": p.uid, "address": p.address, "ro_address": p.ro_address, "target": p.target,
                         "listening": p.listening, "generation": p.generation}
                        for p in sorted(proxies, key=lambda p: p.uid)],
            "ignored": ignored,
        }

    # ------------------------------------------------------------------ writing
    def normalize(self, spec: Any) -> dict[str, Any]:
        """``spec`` validated, every default filled in (JSON form); CtlError names a bad key."""
        return self._parse(spec).to_dict()

    def successor(self, spec: Any) -> dict[str, Any]:
        """What ``set_spec(spec)`` would store (``normalize`` on a cluster not initialized)."""
        return self._parse(with_init_keys(self._stored_spec()[0], spec)).to_dict()

    @staticmethod
    def _parse(spec: Any) -> Spec:
        try:
            return normalize(spec)
        except SpecError as exc:
            raise CtlError(f"invalid spec: {exc}") from None

    def init(self, spec: dict[str, Any] | None, force: bool = False) -> dict[str, Any]:
        normalized = self._parse(spec or {})
        doc, rev = self._spec_doc()
        pitr = normalized.pitr
        if doc is not None and not force:
            raise CtlError(f"cluster {self.cluster} is already initialized (uid {doc.get('uid')}); "
                           "pass --yes to initialize a NEW cluster in its place (existing keepers keep their "
                           "data and will refuse to join the new cluster"
                           + ("; with init_mode pitr they discard it to restore" if pitr is not None else "") + ")")
        if pitr is not None:
            if "replaces" in pitr:
                raise CtlError("invalid spec: pitr.replaces: written by pghactl init --yes, not given")
            target = pitr.get("target_time")
            if target and datetime.datetime.fromisoformat(target).timestamp() > time.time():
                raise CtlError(f"invalid spec: pitr.target_time {target} is in the future: WAL up to it "
                               "does not exist yet")
            if doc is not None and isinstance(doc.get("uid"), str):
                # the keepers of the cluster restored in place discard their data (and only theirs); a
                # restore of it that never finished left their data to that cluster's: carried forward
                try:
                    earlier = normalize(doc.get("spec")).replaced_clusters
                except SpecError:
                    earlier = ()
                replaces = [doc["uid"]] + [u for u in earlier if u != doc["uid"]][:7]
                normalized = self._parse({**normalized.to_dict(), "pitr": {**pitr, "replaces": replaces}})
        uid = uuid.uuid4().hex[:12]
        new_doc = {"format_version": FORMAT_VERSION, "uid": uid, "spec": normalized.to_dict(),
                   "created_at": time.time()}
        if not self.store.cas(self.keys.spec, dumps(new_doc), rev):
            raise CtlError("the spec changed while initializing; retry")
        if doc is not None:
            self.store.delete(self.keys.clusterdata)
            self.store.delete_prefix(self.keys.commands)
        return normalized.to_dict()

    def update(self, patch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Apply a merge patch to the stored spec; (old, new) in JSON form."""
        if not isinstance(patch, dict):
            raise CtlError("invalid update: patch: expected a JSON object")
        return self._replace(lambda old: merge_patch(old.to_dict(), patch), "invalid update")

    def set_spec(self, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Make ``spec`` (keys left out take their default) the stored spec; (old, new) in JSON form."""
        return self._replace(lambda old: spec, "invalid spec")

    def _replace(self, successor: Callable[[Spec], Any], refused: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Write successor(stored spec) by compare-and-swap on the revision read (again on a race)."""
        for _ in range(5):
            old, doc, rev = self._stored_spec()
            if old is None or doc is None:
                raise CtlError(f"cluster {self.cluster} is not initialized (run pghactl init)")
            try:
                new = replace_whole(old, successor(old))
            except SpecError as exc:
                raise CtlError(f"{refused}: {exc}") from None
            if new == old or self.store.cas(self.keys.spec, dumps({**doc, "spec": new.to_dict()}), rev):
                return old.to_dict(), new.to_dict()
        raise CtlError("the spec kept changing under us; retry")

    def _request(self, cmd: Command) -> None:
        self.store.put(self.keys.command(cmd.name), cmd.dumps())

    def _require_keeper(self, uid: str) -> ClusterData:
        if not valid_uid(uid):
            raise CtlError(f"invalid keeper uid {uid!r}")
        cd = self.clusterdata()
        if cd is None:
            raise CtlError(f"cluster {self.cluster} has no cluster data yet (not initialized, or no sentinel)")
        if uid not in cd.keepers:
            raise CtlError(f"no keeper {uid} in cluster {self.cluster} (keepers: {', '.join(sorted(cd.keepers))})")
        return cd

    def failkeeper(self, uid: str) -> None:
        self._require_keeper(uid)
        self._request(Command("failkeeper", keeper=uid, requested_at=time.time()))

    def removekeeper(self, uid: str) -> None:
        cd = self._require_keeper(uid)
        if cd.primary == uid:
            raise CtlError(f"{uid} is the primary: switch over first (pghactl switchover)")
        self._request(Command("removekeeper", keeper=uid, requested_at=time.time()))

    def drain(self, uid: str, drained: bool = True, timeout: float = 30.0) -> dict[str, Any]:
        """Take a replica out of the synchronous standbys and read-only targets (or put it back).

        Waits until the sentinel recorded it, the primary runs the new synchronous_standby_names and
        every live proxy follows the new read-only targets. Returns what was reached; "synchronous"
        stays true when no other streaming replica could take its place (then its restart would
        stall commits, and the caller decides whether to go on).
        """
        cd = self._require_keeper(uid)
        if drained and cd.primary == uid:
            raise CtlError(f"{uid} is the primary: switch over first (pghactl switchover)")
        self._request(Command("drain", keeper=uid, drained=drained, requested_at=time.time()))
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            st = self.status()
            c = st["cluster"]
            k = next((k for k in st["keepers"] if k["uid"] == uid), None)
            if k is not None and k["drained"] == drained:
                proxies_follow = all(p["generation"] >= c["proxy_generation"] for p in st["proxies"] if p["listening"])
                state = {"uid": uid, "drained": drained, "synchronous": k["synchronous"],
                         "read_only_target": uid in c["ro_targets"], "proxies_follow": proxies_follow}
                if not drained:
                    return state
                applied = self._applied_sync(c["primary"])
                sync_settled = c["primary"] is None or (applied is not None and (uid in applied) == k["synchronous"])
                if sync_settled and proxies_follow:
                    return state
            time.sleep(0.05)
        if not state:
            self.store.delete(self.keys.command(f"drain/{uid}"))
            raise CtlError(f"no leading sentinel took the drain request for {uid} within {timeout:.0f}s")
        raise CtlError(f"drain of {uid} did not settle within {timeout:.0f}s: {state} (see pghactl status)")

    def _applied_sync(self, primary: str | None) -> tuple[str, ...] | None:
        """The synchronous standbys the primary reports it runs with."""
        if primary is None:
            return None
        kv = self.store.get(self.keys.keeper(primary))
        if kv is None:
            return None
        try:
            return KeeperStatus.loads(kv.value).synchronous_standbys
        except FormatError:
            return None

    def switchover(self, to: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
        cd = self.clusterdata()
        if cd is None or cd.primary is None:
            raise CtlError(f"cluster {self.cluster} has no primary to switch over from")
        if to is not None:
            self._require_keeper(to)
        rid = uuid.uuid4().hex[:8]
        self._request(Command(COMMAND_SWITCHOVER, id=rid, to=to, requested_at=time.time()))
        deadline = time.monotonic() + timeout
        seen = False
        while time.monotonic() < deadline:
            cd = self.clusterdata()
            last = cd.last_switchover if cd else None
            if last and last.get("id") == rid:
                seen = True
                if last.get("state") == "done":
                    return {"id": rid, "from": last.get("from"), "to": last.get("to"), "state": "done",
                            "seconds": last.get("seconds")}
                if last.get("state") == "failed":
                    raise CtlError(f"switchover refused or failed: {last.get('reason')}")
            time.sleep(0.05)
        if not seen:
            self.store.delete(self.keys.command("switchover"))
            raise CtlError(f"no leading sentinel took the switchover request within {timeout:.0f}s")
        raise CtlError(f"switchover did not complete within {timeout:.0f}s (see pghactl status)")

    # ------------------------------------------------------------------ backups
    def keeper_statuses(self) -> dict[str, KeeperStatus]:
        """The keepers' status documents, believed as the sentinel believes them."""
        kvs, _ = self.store.get_prefix(self.keys.keepers)
        return load_statuses(KeeperStatus, kvs, self.keys.base)

    def backup(self, kind: str = "full", timeout: float = 3600.0, source: str = "auto") -> dict[str, Any]:
        """Ask the primary's keeper for a backup and wait for it: the backup as listed, with its id,
        seconds, the keeper that ran pgBackRest (``keeper``) and the one whose files it copied
        (``from``). ``source``: auto copies from a streaming replica on the primary's machine when
        there is one (pgBackRest reaches both data directories locally), else from the primary;
        standby insists on a replica; primary never uses one."""
        if kind not in BACKUP_TYPES:
            raise CtlError(f"--type {kind}: one of {', '.join(BACKUP_TYPES)}")
        if source not in BACKUP_SOURCES:
            raise CtlError(f"--from {source}: one of {', '.join(BACKUP_SOURCES)}")
        cd = self.clusterdata()
        if cd is None or cd.primary is None:
            raise CtlError(f"cluster {self.cluster} has no primary to back up")
        st = self.keeper_statuses().get(cd.primary)
        if st is None:
            raise CtlError(f"the primary's keeper {cd.primary} does not report: nothing to back up from")
        if not st.backup:
            raise CtlError(f"keeper {cd.primary} has no backup repository (pgha-keeper --backup-repo-path)")
        if not st.backup.get("stanza"):
            raise CtlError(f"keeper {cd.primary} has not created the pgBackRest stanza yet (see its log)")
        rid = uuid.uuid4().hex[:12]
        self.store.put(self.keys.backup_request, dumps({"format_version": FORMAT_VERSION, "id": rid, "type": kind,
                                                        "keeper": cd.primary, "source": source,
                                                        "requested_at": time.time()}))
        deadline = time.monotonic() + timeout
        seen = False
        try:
            while time.monotonic() < deadline:
                st = self.keeper_statuses().get(cd.primary)
                last = (st.backup.get("last") if st and isinstance(st.backup, dict) else None) or {}
                if isinstance(last, dict) and last.get("id") == rid:
                    seen = True
                    if last.get("state") == "done":
                        listed = [b for b in st.backup.get("backups") or []
                                  if isinstance(b, dict) and b.get("label") == last.get("label")]
                        return {"id": rid, "keeper": cd.primary, "seconds": last.get("seconds"),
                                "from": last.get("from") if isinstance(last.get("from"), str) else cd.primary,
                                **(listed[0] if listed else {"label": last.get("label"), "type": kind})}
                    if last.get("state") == "failed":
                        raise CtlError(f"backup failed on keeper {cd.primary}: {last.get('error')}")
                time.sleep(0.2)
        finally:
            self.store.delete(self.keys.backup_request)
        if not seen:
            raise CtlError(f"keeper {cd.primary} did not take the backup request within {timeout:.0f}s")
        raise CtlError(f"the backup did not finish within {timeout:.0f}s (it goes on: see keeper {cd.primary}'s log)")

    def backups(self) -> list[dict[str, Any]]:
        """The repository's backups, as the keeper that listed it last reports them."""
        best: tuple[float, list[dict[str, Any]]] | None = None
        for st in self.keeper_statuses().values():
            b = st.backup if isinstance(st.backup, dict) else {}
            listed, at = b.get("backups"), b.get("listed_at")
            if isinstance(listed, list) and isinstance(at, (int, float)) and (best is None or at > best[0]):
                best = (float(at), [x for x in listed if isinstance(x, dict)])
        if best is None:
            raise CtlError(f"no keeper of cluster {self.cluster} reports a backup repository "
                           "(pgha-keeper --backup-repo-path), or none has listed it yet")
        return [{k: x.get(k) for k in BACKUP_FIELDS} for x in best[1]]


BACKUP_FIELDS = ("label", "type", "start", "stop", "wal_start", "wal_stop", "lsn_start", "lsn_stop", "size_bytes")


# ---------------------------------------------------------------------------------- command line


def _text_status(st: dict[str, Any]) -> str:
    c = st["cluster"]
    lines = [f"cluster {c['name']}: phase {c['phase'] or '-'}, primary {c['primary'] or '-'}, "
             f"generation {c['generation']}"]
    if c["message"]:
        lines.append(f"  note: {c['message']}")
    if c["synchronous_standbys"]:
        lines.append(f"  synchronous standbys: {', '.join(c['synchronous_standbys'])}")
    b = next((k.get("backup") for k in st["keepers"] if k["uid"] == c["primary"]), None)
    if b:
        def ago(x: float | None) -> str:
            return f"{x:g}s ago" if x is not None else "never"
        lines.append(f"  backups: {b['backups']} in the repository, the last ended {ago(b['seconds_since_backup'])}; "
                     f"WAL last archived {ago(b['seconds_since_archived'])}"
                     + (f", {b['failed_count']:g} archive failures" if b.get("failed_count") else "")
                     + ("" if b["stanza"] else "; no stanza yet (see the primary's log)"))
    lines.append("")
    lines.append(f"{'KEEPER':<12} {'HEALTHY':<8} {'ROLE':<8} {'ADDRESS':<22} {'TL':>3} {'LSN':<12} {'LAG':>8}  SYNC")
    for k in st["keepers"]:
        lines.append(f"{k['uid']:<12} {str(k['healthy']).lower():<8} {k['role']:<8} {k['address']:<22} "
                     f"{k['timeline'] if k['timeline'] is not None else '-':>3} {k['lsn'] or '-':<12} "
                     f"{k['lag'] if k['lag'] is not None else '-':>8}  {'yes' if k['synchronous'] else ''}"
                     f"{'  (drained)' if k.get('drained') else ''}".rstrip())
    for k in st["keepers"]:
        if k.get("phase") not in ("running", "down", "", None):
            lines.append(f"  {k['uid']}: {k['phase']}")
        if k.get("error") and k.get("phase") != "down":
            lines.append(f"  {k['uid']}: error: {k['error']}")
        restored = (k.get("backup") or {}).get("restored")
        if restored:
            lines.append(f"  {k['uid']}: restored backup {restored.get('backup')} of stanza {restored.get('stanza')} "
                         f"to {restored.get('target')} (timeline {restored.get('timeline')})")
    lines.append("")
    lines.append("sentinels: " + (", ".join(f"{s['uid']}{' (leader)' if s['leader'] else ''}"
                                            for s in st["sentinels"]) or "none"))
    lines.append("proxies:   " + (", ".join(f"{p['uid']} {p['address']} -> {p['target'] or 'nowhere'}"
                                            for p in st["proxies"]) or "none"))
    for key, why in sorted(st.get("ignored", {}).items()):
        lines.append(f"ignored:   {key}: {why}")
    return "\n".join(lines)


def _load_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        cli.die(f"{what} is not valid JSON: {exc}", 2)


# ------------------------------------------------------------------ the command line
# One function per subcommand: it gets the parsed arguments and a Ctl, prints what was done.


def _cmd_init(args: argparse.Namespace, ctl: Ctl) -> None:
    if args.spec_file:
        text = sys.stdin.read() if args.spec_file == "-" else open(args.spec_file).read()
        spec = _load_json(text, f"spec file {args.spec_file}")
    else:
        spec = _load_json(args.spec, "--spec") if args.spec else {}
    done = ctl.init(spec, force=args.yes)
    if done["init_mode"] == "pitr":
        pitr = done["pitr"] or {}
        print(f"cluster {args.cluster_name} initialized for a point-in-time recovery to {describe_target(pitr)}; the leading "
              "sentinel will now pick a keeper with the backup repository to restore it"
              + ("; the keepers of the cluster it replaces discard their data" if "replaces" in pitr else ""))
    else:
        print(f"cluster {args.cluster_name} initialized; the leading sentinel will now pick a keeper to run initdb")


def _cmd_status(args: argparse.Namespace, ctl: Ctl) -> None:
    st = ctl.status()
    print(json.dumps(st, indent=2, sort_keys=True) if args.format == "json" else _text_status(st))


def _cmd_spec(args: argparse.Namespace, ctl: Ctl) -> None:
    spec = ctl.get_spec()
    if spec is None:
        cli.die(f"cluster {args.cluster_name} is not initialized")
    print(json.dumps(spec, indent=2, sort_keys=True))


def _cmd_update(args: argparse.Namespace, ctl: Ctl) -> None:
    old, new = ctl.update(_load_json(args.patch, "--patch"))
    changed = sorted(k for k in new if old.get(k) != new.get(k))
    print("spec unchanged" if not changed else "spec updated: " + ", ".join(changed))


def _cmd_switchover(args: argparse.Namespace, ctl: Ctl) -> None:
    r = ctl.switchover(args.to, timeout=args.timeout)
    print(f"switchover done: primary moved from {r['from']} to {r['to']} in {r['seconds']}s")


def _cmd_drain(args: argparse.Namespace, ctl: Ctl) -> None:
    r = ctl.drain(args.uid, drained=not args.undo, timeout=args.timeout)
    if args.undo:
        print(f"keeper {args.uid} is no longer drained")
    elif r["synchronous"]:
        print(f"keeper {args.uid} is drained but still a synchronous standby: no other streaming replica can "
              "take its place, so restarting it stalls commits until it is back")
    else:
        print(f"keeper {args.uid} is drained: not a synchronous standby, no read-only clients are sent to it")


def _cmd_failkeeper(args: argparse.Namespace, ctl: Ctl) -> None:
    ctl.failkeeper(args.uid)
    print(f"requested: keeper {args.uid} will be treated as failed once")


def _cmd_removekeeper(args: argparse.Namespace, ctl: Ctl) -> None:
    ctl.removekeeper(args.uid)
    print(f"requested: keeper {args.uid} will be removed")


def _cmd_backup(args: argparse.Namespace, ctl: Ctl) -> None:
    r = ctl.backup(args.type, timeout=args.timeout, source=args.source)
    if args.format == "json":
        print(json.dumps(r, indent=2, sort_keys=True))
    else:
        src = "" if r["from"] == r["keeper"] else f", files copied from standby {r['from']}"
        print(f"backup {r.get('label')} ({r.get('type')}) done on keeper {r['keeper']}{src} in {r.get('seconds')}s")


def _cmd_backups(args: argparse.Namespace, ctl: Ctl) -> None:
    listed = ctl.backups()
    if args.format == "json":
        print(json.dumps(listed, indent=2, sort_keys=True))
        return
    if not listed:
        print("no backups")
    for b in listed:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b["start"])) if b.get("start") else "-"
        print(f"{b['label']}  {b['type']:<4}  {when}  WAL {b.get('wal_start')}..{b.get('wal_stop')}  "
              f"{b.get('size_bytes')} bytes")


def _args_backup(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--type", choices=BACKUP_TYPES, default="full", help="full (default), diff or incr")
    sp.add_argument("--from", dest="source", choices=BACKUP_SOURCES, default="auto",
                    help="whose files are copied: auto (default) a streaming replica on the primary's machine when "
                         "there is one, else the primary; standby (fail without one); primary")
    sp.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the backup (default 3600)")
    sp.add_argument("--format", choices=("text", "json"), default="text")


def _args_backups(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--format", choices=("text", "json"), default="text")


def _args_init(sp: argparse.ArgumentParser) -> None:
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--spec", help="the spec as JSON")
    g.add_argument("--spec-file", help="read the spec from this JSON file ('-' for stdin)")
    sp.add_argument("--yes", "-y", action="store_true",
                    help="re-initialize an already initialized cluster (with init_mode pitr: restore it in place, "
                         "its keepers discarding their data)")


def _args_status(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--format", choices=["text", "json"], default="text")


def _args_update(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--patch", required=True, help='merge patch, e.g. \'{"fail_interval": "5s"}\'')


def _args_switchover(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--to", help="target keeper uid (default: the best eligible replica)")
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for completion")


def _args_drain(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("uid")
    sp.add_argument("--undo", action="store_true", help="end the drain: the keeper may be synchronous and serve reads again")
    sp.add_argument("--timeout", type=float, default=30.0, help="seconds to wait until the drain settles")


def _args_uid(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("uid")


def _no_args(sp: argparse.ArgumentParser) -> None:
    pass


# ------------------------------------------------------------------ store-auth
# Not a Ctl command: it logs in as etcd's root itself (never with --store-user), so main() runs it
# without opening the store the common flags name.

STORE_AUTH_HELP = "turn etcd authentication on, with a user and a role per component (idempotent)"
STORE_AUTH_DESCRIPTION = """\
Turn etcd authentication on for the cluster, with a user and a role of the same name per component:

  <cluster>-keeper    reads the cluster's keys, writes only the keepers' status (keepers/)
  <cluster>-proxy     reads the cluster's keys, writes only the proxies' status (proxies/)
  <cluster>-sentinel  reads and writes the cluster's keys (cluster data, leader key, commands)
  <cluster>-operator  reads and writes the cluster's keys (pghactl: spec, commands, init)

and etcd's administrator, root. No user may touch another cluster's keys.

Idempotent: it adds what is missing, sets the passwords it is given, corrects the permissions and
turns authentication on; a second run prints "nothing to change". It prints one line per change,
never a password.

Passwords are read from files (first line) in --password-dir: root (required) and keeper,
sentinel, proxy, operator (a user whose file is absent is left as it is). The root password is
used only here: to turn authentication on and, once it is on, to log in. The command connects
with --store-endpoints and the TLS flags (--store-ca-file, --store-cert-file, --store-key-file)
and logs in as root itself: --store-user and --store-password-file are not used.

With --wait SECONDS it keeps trying a store that does not answer yet (a Job that starts before
etcd is ready) for that long.

example:
  pghactl --cluster-name main --store-endpoints https://etcd:2379 --store-ca-file ca.crt \\
    --store-cert-file tls.crt --store-key-file tls.key store-auth --password-dir /run/secrets/store"""

_WAIT_STEP = 1.0  # seconds between two tries of a store that does not answer
_TLS_HINTS = ("(is --store-ca-file", "(etcd wants a client certificate")  # pgha.store.etcd's words


def _args_store_auth(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--password-dir", required=True, metavar="DIR",
                    help="directory of the password files root (required), keeper, sentinel, proxy, operator")
    sp.add_argument("--wait", type=_seconds, default=0.0, metavar="SECONDS",
                    help="keep trying a store that does not answer yet for this long (default 0: fail at once)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _store_auth_passwords(directory: str, components: tuple[str, ...]) -> dict[str, str]:
    """root's password and those of the components whose file is present. Raises StoreError."""
    passwords = {"root": cli.read_secret_file(os.path.join(directory, "root"), "root password file")}
    absent = []
    for component in components:
        path = os.path.join(directory, component)
        if os.path.lexists(path):  # a dangling link is an error, not an absent file
            passwords[component] = cli.read_secret_file(path, f"{component} password file")
        else:
            absent.append(component)
    if len(absent) == len(components):
        raise StoreError(f"--password-dir {directory}: no password file of a component ({', '.join(components)}): "
                         "turning authentication on with root alone would lock every component out")
    if absent:
        print(f"no password file for {', '.join(absent)} in {directory}: "
              f"{'that user is' if len(absent) == 1 else 'those users are'} left as they are", file=sys.stderr)
    return passwords


def _cmd_store_auth(args: argparse.Namespace) -> None:
    from pgha.store import auth
    from pgha.store.etcd import EtcdStore

    # the endpoint rules of every program (https, or --store-insecure; valid URLs; readable TLS
    # files), checked by opening the store without a user: ensure_auth logs in as root itself
    checked = cli.store_from_args(argparse.Namespace(**dict(vars(args), store_user=None, store_password_file=None)))
    checked.close()
    if not isinstance(checked, EtcdStore):
        raise StoreError(f"--store-endpoints {args.store_endpoints}: store-auth needs etcd")
    try:
        passwords = _store_auth_passwords(args.password_dir, tuple(auth.COMPONENTS))
    except StoreError as exc:  # not the store's: a file
        cli.die(str(exc))
    deadline = time.monotonic() + args.wait
    said = False
    while True:
        try:
            changes = auth.ensure_auth(args.store_endpoints, keys(args.store_prefix, args.cluster_name),
                                       args.cluster_name, passwords, ca_file=args.store_ca_file,
                                       cert_file=args.store_cert_file, key_file=args.store_key_file,
                                       timeout=args.store_timeout)
            break
        except StoreError as exc:
            text = str(exc)
            if "the root password given" in text:
                raise StoreError(f"{text} (--password-dir {os.path.join(args.password_dir, 'root')})") from None
            if not text.startswith("store unreachable") or any(hint in text for hint in _TLS_HINTS):
                raise  # an answer, or a TLS setup that waiting does not mend
            if time.monotonic() + _WAIT_STEP > deadline:
                raise StoreError(f"{exc} (waited {args.wait:g}s)" if said else str(exc)) from None
            if not said:
                print(f"the store at {args.store_endpoints} does not answer yet ({exc}); waiting up to "
                      f"{args.wait:g}s for it", file=sys.stderr, flush=True)
                said = True
            time.sleep(_WAIT_STEP)
    for line in changes or ["nothing to change"]:
        print(line)


Handler = Callable[[argparse.Namespace, Ctl], None]
# name -> (help, its arguments, what it does), in the order --help lists them
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {
    "init": ("initialize a new cluster with a spec", _args_init, _cmd_init),
    "status": ("show the cluster, keepers, sentinels and proxies", _args_status, _cmd_status),
    "spec": ("print the current spec with defaults filled in (JSON)", _no_args, _cmd_spec),
    "update": ("change the spec with a JSON merge patch (validated first)", _args_update, _cmd_update),
    "switchover": ("move the primary to another keeper with minimal write downtime", _args_switchover,
                   _cmd_switchover),
    "drain": ("before maintenance of a replica: move the synchronous standby role and read-only clients away "
              "from it, so that restarting it stalls no commit (--undo: end it)", _args_drain, _cmd_drain),
    "failkeeper": ("make the sentinel treat a keeper as failed once (forces failover)", _args_uid, _cmd_failkeeper),
    "removekeeper": ("remove a (dead) keeper from the cluster", _args_uid, _cmd_removekeeper),
    "backup": ("back up the cluster now with pgBackRest (keepers with --backup-repo-path); waits for it",
               _args_backup, _cmd_backup),
    "backups": ("list the backups in the repository", _args_backups, _cmd_backups),
}


def main(argv: list[str] | None = None) -> int:
    p = cli.common_parser(
        "pghactl", "Initialize, inspect and steer a pgha cluster.", require_cluster=False,
        epilog="examples:\n"
               "  pghactl --cluster-name main init --spec '{\"synchronous_replication\": true}'\n"
               "  pghactl --cluster-name main status --format json\n"
               "  pghactl --cluster-name main update --patch '{\"pg_parameters\": {\"work_mem\": \"8MB\"}}'\n"
               "  pghactl --cluster-name main switchover --to keeper1\n"
               "  pghactl --cluster-name main init --yes --spec '{\"init_mode\": \"pitr\", "
               "\"pitr\": {\"target_time\": \"2026-12-01 10:00:00+00\"}}'")
    common = cli.suppressed_common_flags()
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help, add_arguments, _) in SUBCOMMANDS.items():
        add_arguments(sub.add_parser(name, help=help, description=help, parents=[common]))
    _args_store_auth(sub.add_parser("store-auth", help=STORE_AUTH_HELP, description=STORE_AUTH_DESCRIPTION,
                                    parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter))
    args = p.parse_args(argv)
    if not args.cluster_name:
        p.error("the following arguments are required: --cluster-name (or PGHA_CLUSTER_NAME)")

    try:
        if args.command == "store-auth":
            _cmd_store_auth(args)
        else:
            SUBCOMMANDS[args.command][2](args, Ctl(cli.store_from_args(args), args.store_prefix, args.cluster_name))
    except CtlError as exc:
        cli.die(str(exc))
    except StoreError as exc:
        cli.die(f"store: {exc}")
    except OSError as exc:
        cli.die(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
