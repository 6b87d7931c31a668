"""pgha-sentinel: elects a leader among sentinels; the leader computes the desired cluster.

Loop: keep our lease and status alive -> campaign for the leader key -> (leader only) read the
whole cluster prefix -> ``decide()`` -> compare-and-swap the cluster data, guarded by our leader
key -> log each decision -> wait for the next store change or ``sleep_interval``.

What wakes the loop: a follower waits on the leader key only. The leader wakes at once on any
change while something is under way (initialization, a transition, a command, an unhealthy keeper)
and, in steady state, on any change but a status refresh (a keeper, proxy or sentinel re-putting its
status): deletes (an expired lease: a keeper or proxy gone), the cluster data, the spec, commands.
Status refreshes in steady state are coalesced to one check per ``STEADY_GAP`` of the sleep
interval, so the leader's reads (the whole prefix, which grows with the cluster) do not grow with
the number of keepers times their report rate.

The leader's **prober** thread connects to the primary keeper's API every ``PROBE_EVERY``; when it
is refused and a confirmation round proves a crash (``pgha.sentinel.crash``), it revokes the
keeper's lease, and the next check fails over as for an expired lease, without waiting for the TTL.
"""

from __future__ import annotations

import errno
import logging
import math
import signal
import socket
import threading
import time
import uuid
from typing import Any

from pgha import cli, log as pglog
from pgha.model import (
    PHASE_NORMAL,
    ROLE_PRIMARY,
    STATUS_PREFIXES,
    ClusterData,
    Command,
    FormatError,
    KeeperStatus,
    Keys,
    ProxyStatus,
    SentinelStatus,
    keys,
    load_status,
    loads,
)
from pgha.sentinel import crash
from pgha.sentinel.context import Revocation
from pgha.sentinel.decide import Decision, Memory, Snapshot, decide
from pgha.sentinel.placement import store_leader_move
from pgha.spec import Spec, SpecError, default, normalize
from pgha.store import Store, StoreError, WatchEvent
from pgha.store.lease import Lease

logger = logging.getLogger("pgha.sentinel")

MIN_LOOP_GAP = 0.05  # seconds between two checks when store changes wake us, in steady state
BUSY_LOOP_GAP = 0.005  # ... while something is under way (a transition waits on every step)
STEADY_GAP = 0.5  # fraction of sleep_interval between two checks woken by status refreshes only
STORE_LEADER_CHECK = 5.0  # seconds between two looks at where the store's leader runs (steady state)


def urgent(events: list[WatchEvent], base: str) -> bool:
    """Whether these changes need a check at once even in steady state: anything but status
    refreshes (puts of keeper, proxy or sentinel status documents)."""
    for ev in events:
        if ev.kind != "put" or not ev.key.startswith(base) or not ev.key[len(base):].startswith(STATUS_PREFIXES):
            return True
    return False


def probe(address: tuple[str, int], timeout: float = crash.PROBE_TIMEOUT) -> str:
    """Connect to ``address`` and close: "accepted", "refused" (a reset from a live kernel),
    "timeout", "unreachable", or "error <errno>"."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return "accepted"
    except ConnectionRefusedError:
        return crash.REFUSED
    except (socket.timeout, TimeoutError):
        return "timeout"
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
            return "unreachable"
        return f"error {errno.errorcode.get(exc.errno or 0, exc.errno)}"


def read_spec(raw: bytes) -> tuple[Spec, str]:
    doc = loads(raw, "spec")
    try:
        return normalize(doc.get("spec")), str(doc["uid"])
    except (SpecError, KeyError) as exc:
        raise FormatError(f"spec: {exc}") from None


class Sentinel:
    def __init__(self, store: Store, prefix: str, cluster: str, uid: str) -> None:
        self.store = store
        self.keys: Keys = keys(prefix, cluster)
        self.cluster = cluster
        self.uid = uid
        self.lease = Lease(store)
        self.host = socket.gethostname()
        self.leader = False
        self.memory = Memory()
        self.stopping = threading.Event()
        spec = default()  # until the spec key is read
        self.interval = spec.sleep_interval
        self.fail_interval = spec.fail_interval
        self._last_problem = ""
        self._ignoring: set[str] = set()  # status documents ignored at the last check, and why
        self._last_heartbeat = 0.0
        self.steady = False  # the leader's last check found nothing under way (see the module doc)
        self._store_leader_checked = 0.0
        self._store_leader_problem = ""
        # the prober (see pgha.sentinel.crash): the primary to watch, as the last check saw it:
        # (uid, lease of its status key, status)
        self.probe_target: tuple[str, int, KeeperStatus] | None = None
        # keeper -> the crash its lease was revoked for; kept until it registers under another lease
        self.revoked: dict[str, Revocation] = {}
        self._revoked_lock = threading.Lock()
        self._reached: tuple[tuple[str, int], set[str]] = (("", 0), set())  # endpoints that accepted, per lease
        self._probe_problem = ""

    # ------------------------------------------------------------------ lease and election
    def _ttl(self) -> int:
        return max(2, math.ceil(self.fail_interval))

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if self.lease.id and now - self._last_heartbeat < self.interval:
            return  # our own status put would wake every watcher: once per sleep_interval is enough
        self._last_heartbeat = now
        previous = self.lease.id
        if self.lease.renew(self._ttl()):
            if previous and self.lease.superseded:
                logger.info("lease ttl %ss -> %ss (fail_interval changed): moving our keys to a new lease",
                            self.lease.superseded_ttl, self.lease.ttl)
                if self.leader:
                    self._move_leader_key(previous)
            elif previous:
                logger.warning("our lease expired: re-registering (leadership, if any, is lost)")
                self.leader = False
        self.store.put(self.keys.sentinel(self.uid), SentinelStatus(self.uid, time.time(), self.host).dumps(),
                       lease=self.lease.id)
        self.lease.release_superseded()

    def _move_leader_key(self, old_lease: int) -> None:
        """Keep leadership across a TTL change: the leader key moves to the new lease (by CAS, so a
        leader key that changed meanwhile is left alone)."""
        kv = self.store.get(self.keys.leader)
        if kv is None or kv.value.decode() != self.uid or kv.lease != old_lease:
            self.leader = False
            return
        if not self.store.cas(self.keys.leader, self.uid, kv.mod_revision, lease=self.lease.id):
            self.leader = False

    def _holds(self, leader: Any) -> bool:
        """Whether the leader key ``leader`` (a KV, or None when absent) is ours, under our lease."""
        return leader is not None and leader.value.decode() == self.uid and leader.lease == self.lease.id

    def _campaign(self) -> bool:
        kv = self.store.get(self.keys.leader)
        if kv is None:
            self.store.cas(self.keys.leader, self.uid, 0, lease=self.lease.id)
            kv = self.store.get(self.keys.leader)
        is_leader = self._holds(kv)
        if is_leader and not self.leader:
            logger.info("became the leading sentinel: timers start afresh (a keeper is declared unhealthy only "
                        "after fail_interval from now)")
            self.memory = Memory()
        elif not is_leader and self.leader:
            logger.info("no longer the leading sentinel")
        self.leader = is_leader
        return is_leader

    # ------------------------------------------------------------------ one check
    def snapshot(self) -> tuple[Snapshot | None, int, int]:
        kvs, revision = self.store.get_prefix(self.keys.base)
        spec = spec_uid = None
        cd: ClusterData | None = None
        cd_rev = 0
        keepers: dict[str, KeeperStatus] = {}
        keeper_leases: dict[str, int] = {}
        proxies: dict[str, ProxyStatus] = {}
        commands: dict[str, Command] = {}
        problems = []
        for kv in kvs:
            name = kv.key[len(self.keys.base):]
            try:
                if name == "spec":
                    spec, spec_uid = read_spec(kv.value)
                elif name == "clusterdata":
                    cd_rev = kv.mod_revision
                    cd = ClusterData.loads(kv.value)
                elif name.startswith("keepers/"):
                    st = load_status(KeeperStatus, name, kv.value, kv.lease)
                    keepers[st.uid] = st
                    keeper_leases[st.uid] = kv.lease
                elif name.startswith("proxies/"):
                    p = load_status(ProxyStatus, name, kv.value, kv.lease)
                    proxies[p.uid] = p
                elif name.startswith("commands/"):
                    cmd = Command.loads(name[len("commands/"):], kv.value)
                    commands[cmd.name] = cmd
            except FormatError as exc:
                if name.startswith("commands/"):
                    logger.error("removing %s: %s", name, exc)
                    self.store.delete(kv.key)  # a request nobody can carry out: never retried
                    continue
                if name in ("spec", "clusterdata"):
                    problem = f"refusing to act: {exc}"
                    if problem != self._last_problem:
                        logger.error(problem)
                        self._last_problem = problem
                    return None, revision, cd_rev
                problems.append(f"ignoring {name}: {exc}")
        for p in sorted(set(problems) - self._ignoring):
            logger.warning(p)  # once: the same document is ignored silently until it changes
        self._ignoring = set(problems)
        self._last_problem = ""
        if spec is not None:
            self.interval = spec.sleep_interval
            self.fail_interval = spec.fail_interval
        with self._revoked_lock:
            for uid in [u for u, r in self.revoked.items() if keeper_leases.get(u, r.lease) != r.lease]:
                del self.revoked[uid]  # registered again, under another lease
            revoked = dict(self.revoked)
        snap = Snapshot(now=time.time(), mono=time.monotonic(), cluster_name=self.cluster, spec=spec,
                        spec_uid=spec_uid, cd=cd, keepers=keepers, proxies=proxies, commands=commands,
                        keeper_leases=keeper_leases, leases_alive=self._absent_leases(cd, keepers),
                        revoked=revoked)
        primary = keepers.get(cd.primary) if cd is not None and cd.primary else None
        self.probe_target = (primary.uid, keeper_leases[primary.uid], primary) if (
            primary is not None and cd is not None and cd.phase == PHASE_NORMAL and cd.transition is None
            and primary.role == ROLE_PRIMARY and primary.cluster_uid == cd.uid) else None
        return snap, revision, cd_rev

    def _absent_leases(self, cd: ClusterData | None, keepers: dict[str, KeeperStatus]) -> dict[str, bool]:
        """For the primary (and a transition's old primary) when its status key is gone: whether the
        lease that key had when we last saw it still exists. A key deleted while its lease lives is
        not a keeper that lost its lease: decide() does not promote past it."""
        if cd is None:
            return {}
        out: dict[str, bool] = {}
        for uid in {cd.primary, cd.transition.old if cd.transition else None} - {None}:
            lid = self.memory.keeper_leases.get(uid)  # type: ignore[arg-type]
            if uid not in keepers and lid:
                out[uid] = self.store.lease_alive(lid)  # type: ignore[index]
        return out

    def check(self) -> int:
        """One iteration; returns the store revision it read at."""
        self._heartbeat()
        self.steady = False
        if not self._campaign():
            self.probe_target = None
            kvs, revision = self.store.get_prefix(self.keys.leader)
            return revision
        snap, revision, cd_rev = self.snapshot()
        if snap is None:
            return revision
        decision: Decision = decide(snap, self.memory)
        cd = snap.cd  # steady only when this check changed nothing
        self.steady = (decision.cd is None and cd is not None and cd.phase == PHASE_NORMAL and cd.transition is None
                       and cd.primary is not None and not snap.commands and not self.memory.unhealthy_since)
        if decision.cd is not None:
            ok = self.store.cas(self.keys.clusterdata, decision.cd.dumps(), cd_rev,
                                guard=(self.keys.leader, self.uid))
            if not ok:
                logger.warning("cluster data changed under us or leadership lost: discarding this decision")
                return revision
        for event in decision.events:
            logger.info(event)
        for name in decision.consumed:
            self.store.delete(self.keys.command(name))
        if self.steady and snap.spec is not None and snap.spec.store_leader_off_primary:
            self._place_store_leader(snap)
        return revision

    def _place_store_leader(self, snap: Snapshot) -> None:
        """Keep the store's leader off the primary's host (pgha.sentinel.placement); at most every
        STORE_LEADER_CHECK seconds, in steady state only. A failure is logged and changes nothing."""
        now = time.monotonic()
        if now - self._store_leader_checked < STORE_LEADER_CHECK or snap.cd is None or snap.cd.primary is None:
            return
        self._store_leader_checked = now
        primary = snap.keepers.get(snap.cd.primary)
        if primary is None:
            return
        try:
            target, why = store_leader_move(self.store.members(), primary.address)
            if target is None:
                return
            self.store.move_leader(target)
            logger.info("%s", why)
            self._store_leader_problem = ""
        except StoreError as exc:
            if str(exc) != self._store_leader_problem:
                logger.warning("could not move the store's leader off the primary's host: %s", exc)
                self._store_leader_problem = str(exc)

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        logger.info("sentinel %s starting for cluster %s", self.uid, self.cluster)
        revision = 0
        store_down_since: float | None = None
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                revision = self.check()
                if store_down_since is not None:
                    logger.info("store reachable again")
                    store_down_since = None
            except StoreError as exc:
                if store_down_since is None:
                    store_down_since = started
                    logger.warning("store error: %s", exc)
                self.leader = False
                self.probe_target = None
                self.stopping.wait(self.interval)
                continue
            try:
                self._wait(started, revision)
            except StoreError:
                self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))
            if self.stopping.wait(MIN_LOOP_GAP if self.steady or not self.leader else BUSY_LOOP_GAP):
                break
        self.shutdown()

    # ------------------------------------------------------------------ the prober
    def prober_loop(self) -> None:
        """Watch the primary for a crash (pgha.sentinel.crash), as the leader only."""
        while not self.stopping.wait(crash.PROBE_EVERY):
            try:
                self.probe_primary()
            except StoreError as exc:
                if str(exc) != self._probe_problem:
                    logger.debug("prober: %s", exc)
                    self._probe_problem = str(exc)
            except Exception as exc:  # noqa: BLE001 - the prober must live: log and go on
                logger.exception("prober: %s", exc)

    def _same_target(self, uid: str, lease: int) -> bool:
        t = self.probe_target
        return t is not None and (t[0], t[1]) == (uid, lease)

    def probe_primary(self, probe: Any = probe) -> None:
        """One look at the primary (``probe``: the connection test, replaceable in tests). Every
        accepted connection is remembered for the keeper's lease; a refused one starts a
        confirmation (pgha.sentinel.crash.confirm), and a confirmed crash revokes the lease."""
        target = self.probe_target
        if not self.leader or target is None:
            return
        uid, lease, st = target
        addrs = crash.probe_targets(st, self.host)
        if addrs is None:
            return
        pg, api = addrs
        if self._reached[0] != (uid, lease):
            self._reached = ((uid, lease), set())
        reached = self._reached[1]
        suspected = time.time()
        first = probe(api)
        if first != crash.REFUSED:
            if first == "accepted":
                reached.add("api")
                if "pg" not in reached and probe(pg) == "accepted":
                    reached.add("pg")
            return
        kv = self.store.get(self.keys.keeper(uid))
        if kv is None or kv.lease != lease:
            return
        t0 = time.monotonic()
        rounds = []
        for i in range(crash.CONFIRM_ROUNDS):
            if i and self.stopping.wait(crash.CONFIRM_GAP):
                return
            rounds.append((probe(pg), probe(api)))
        span = time.monotonic() - t0
        after = self.store.get(self.keys.keeper(uid))
        ev = crash.Evidence(uid=uid, pg=pg, api=api, key_before=(kv.mod_revision, kv.lease),
                            key_after=(after.mod_revision, after.lease) if after is not None else None,
                            rounds=tuple(rounds), span=span, reached=frozenset(reached))
        ok, why = crash.confirm(ev)
        if not ok:
            text = f"keeper {uid} (the primary): its API refused a connection, no crash confirmed: {why}"
            if text != self._probe_problem:
                logger.info("%s", text)
                self._probe_problem = text
            return
        # still the leader (the key, not only our flag) and still the same primary under the same lease
        if not (self.leader and self._same_target(uid, lease) and self._holds(self.store.get(self.keys.leader))):
            return
        logger.warning("keeper %s (the primary) crashed: %s; revoking its lease %x so that the failover starts "
                       "now instead of when the lease expires", uid, why, lease)
        with self._revoked_lock:
            self.revoked[uid] = Revocation(why=why, suspected=suspected, confirmed=time.time(), lease=lease)
        self.probe_target = None
        self.store.revoke(lease)

    def _wait(self, started: float, revision: int) -> None:
        """Until the next check: see the module doc for what wakes it. At most sleep_interval."""
        deadline = started + self.interval
        if not self.leader:
            left = deadline - time.monotonic()
            if left > 0:
                self.store.wait(self.keys.leader, revision, left)
            return
        earliest = started + self.interval * STEADY_GAP if self.steady else started
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            events = self.store.wait_events(self.keys.base, revision, left)
            if not events or urgent(events, self.keys.base):
                return
            revision = max([revision] + [ev.revision for ev in events])
            if time.monotonic() >= earliest:
                return
            # a status refresh in steady state: keep watching (for anything urgent) until earliest
            deadline = min(deadline, earliest)

    def shutdown(self) -> None:
        try:
            self.lease.revoke()  # frees leadership at once for the other sentinels
        except StoreError:
            pass
        logger.info("sentinel %s stopped", self.uid)


def main(argv: list[str] | None = None) -> int:
    p = cli.common_parser("pgha-sentinel", "Watch keepers and proxies; the elected leader computes the "
                                           "desired cluster (failure detection, election, fencing, "
                                           "synchronous standbys).")
    p.add_flag("--uid", help="sentinel id (random when absent)")
    args = p.parse_args(argv)
    pglog.setup("sentinel", args.log_level)
    logger.debug("open files limit: %d", cli.raise_open_files_limit())
    uid = args.uid or uuid.uuid4().hex[:8]
    store = cli.store_or_die(args)
    s = Sentinel(store, args.store_prefix, args.cluster_name, uid)

    def stop(signum: int, frame: Any) -> None:
        s.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=s.prober_loop, name="prober", daemon=True).start()
    s.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
