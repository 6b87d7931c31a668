"""The proxy's rules, as a pure function of what it knows, what it just read and the clock.

``decide(state, observation, now)`` returns the next state and what to do: which connections to
close (fencing), whether to listen, whether to acknowledge. The agent executes the actions; this
module does no I/O, so every rule is a table test away.

Rules:

* A read that fails, or returns data this proxy cannot trust (bad JSON, unknown format version),
  changes nothing: the proxy keeps its routes and does not acknowledge.
* If no trusted read happened for ``proxy_timeout`` seconds (monotonic clock), or the proxy's lease
  is past its deadline (``lease_deadline``: shortly before the server could expire it, when the
  sentinel stops waiting for this proxy), the proxy fences itself: every connection is closed and
  it stops listening. The next trusted read while the lease is valid re-opens it. Without a lease
  (before the first grant) it does not listen: the sentinel cannot see a proxy that has none.
* When the read-write target changes (to another keeper, another address, or to none), every
  connection to the old target is closed before the new generation is acknowledged.
* The read-only targets are ``proxy.ro_targets``; when there is none, read-only traffic goes to the
  primary. A read-only target that leaves the list has its connections closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pgha.model import ClusterData
from pgha.spec import Spec, default

_DEFAULT = default()

# A route: (keeper uid, "host:port" of its PostgreSQL)
Route = tuple[str, str]


@dataclass(frozen=True)
class Observation:
    """One attempt to read the cluster data.

    ``at`` is the monotonic time the read *started* (data is at least that fresh). Exactly one of
    ``cd`` (parsed cluster data), ``absent`` (no cluster data yet) or ``error`` (why the store cannot
    be trusted) describes the outcome.
    """

    at: float
    cd: ClusterData | None = None
    absent: bool = False
    error: str | None = None


@dataclass(frozen=True)
class ProxyState:
    check_interval: float = _DEFAULT.proxy_check_interval
    timeout: float = _DEFAULT.proxy_timeout
    last_good: float | None = None  # monotonic time of the last trusted read (None: never)
    trusted: bool = False  # the last read was trusted
    distrust: str = "no store read yet"  # why the store is not trusted (when not trusted)
    listening: bool = False
    generation: int = -1  # the cd.proxy.generation applied (connections already closed)
    rw: Route | None = None
    ro: tuple[Route, ...] = ()  # read-only routes (the primary when ro_fallback)
    ro_fallback: bool = False
    ro_enabled: bool = True  # False when the read-only port is off: no read-only routes at all
    lease_deadline: float = float("-inf")  # monotonic time the proxy's lease stops covering it

    @property
    def read_deadline(self) -> float:
        """Monotonic time after which the last trusted read is too old to relay on."""
        return float("-inf") if self.last_good is None else self.last_good + self.timeout

    @property
    def deadline(self) -> float:
        """Monotonic time after which nothing may be relayed: no trusted read since, or no lease."""
        return min(self.read_deadline, self.lease_deadline)


@dataclass(frozen=True)
class Actions:
    state: ProxyState
    close_rw: frozenset[str] = frozenset()  # keeper uids whose read-write connections to close
    close_ro: frozenset[str] = frozenset()  # keeper uids whose read-only connections to close
    close_all: bool = False
    ack: bool = False  # write the status now (a trusted read was applied)
    messages: tuple[str, ...] = field(default=())  # what was decided and why (one INFO line each)


def _timings(spec: Spec) -> tuple[float, float]:
    return spec.proxy_check_interval, spec.proxy_timeout


def routes(cd: ClusterData | None) -> tuple[int, Route | None, tuple[Route, ...], list[str]]:
    """(generation, rw route, ro routes, problems) from the cluster data."""
    if cd is None:
        return -1, None, (), []
    problems: list[str] = []
    rw: Route | None = None
    target = cd.proxy.target
    if target is not None:
        keeper = cd.keepers.get(target)
        if keeper is None or not keeper.address:
            problems.append(f"target {target} has no known address")
        else:
            rw = (target, keeper.address)
    ro: list[Route] = []
    for uid in cd.proxy.ro_targets:
        keeper = cd.keepers.get(uid)
        if keeper is None or not keeper.address:
            problems.append(f"read-only target {uid} has no known address")
        elif (uid, keeper.address) not in ro:
            ro.append((uid, keeper.address))
    return cd.proxy.generation, rw, tuple(ro), problems


def _show(route: Route | None) -> str:
    return "nowhere" if route is None else f"{route[0]} ({route[1]})"


def decide(state: ProxyState, obs: Observation | None, now: float) -> Actions:
    """The next state and the actions to take; ``obs`` is None on a timer tick."""
    messages: list[str] = []
    close_rw: set[str] = set()
    close_ro: set[str] = set()
    ack = False
    st = state

    if obs is not None and obs.error is not None:
        if st.trusted or st.distrust != obs.error:
            messages.append(f"cannot trust the store: {obs.error}; not acting on it")
        st = replace(st, trusted=False, distrust=obs.error)
    elif obs is not None:
        if obs.cd is not None:
            check, timeout = _timings(obs.cd.spec)
        else:
            check, timeout = _timings(_DEFAULT)
        last_good = obs.at if st.last_good is None else max(st.last_good, obs.at)
        if not st.trusted and st.last_good is not None:
            messages.append(f"store readable again (was: {st.distrust})")
        st = replace(st, trusted=True, distrust="", last_good=last_good, check_interval=check, timeout=timeout)
        generation, rw, ro, problems = routes(obs.cd)
        if obs.absent and state.generation == -1 and state.last_good is None:
            messages.append("no cluster data yet: not routing")
        if not st.ro_enabled:
            ro = ()
        ro_fallback = st.ro_enabled and not ro and rw is not None
        if ro_fallback:
            ro = (rw,)
        if rw != state.rw or generation != state.generation:
            if rw != state.rw:
                text = f"routing rw to {_show(rw)}, generation {generation}"
                if state.rw is not None:
                    close_rw.add(state.rw[0])
                    text += f"; closing connections to {state.rw[0]}"
                if problems:
                    text += " (" + "; ".join(problems) + ")"
                messages.append(text)
            elif generation != state.generation and state.generation != -1:
                messages.append(f"generation {generation}: rw still {_show(rw)}")
        if ro != state.ro:
            gone = [r for r in state.ro if r not in ro]
            close_ro.update(uid for uid, _ in gone)
            shown = ", ".join(_show(r) for r in ro) or "nowhere"
            text = f"routing ro to {shown}"
            if gone:
                text += "; closing read-only connections to " + ", ".join(uid for uid, _ in gone)
            messages.append(text)
        if ro_fallback != state.ro_fallback and ro_fallback:
            messages.append("no read-only targets: read-only traffic goes to the primary")
        st = replace(st, generation=generation, rw=rw, ro=ro, ro_fallback=ro_fallback)
        ack = True

    fresh = st.last_good is not None and now <= st.deadline
    if fresh and not st.listening:
        st = replace(st, listening=True)
        messages.append("listening: the store is readable")
    elif not fresh and st.listening:
        if now > st.read_deadline:
            age = now - st.last_good if st.last_good is not None else float("inf")
            why = st.distrust or "no successful read in time"
            messages.append(f"store unreadable for {age:.1f}s (> proxy_timeout {st.timeout:.1f}s; {why}): "
                            "closing all connections, stopped listening")
        else:
            messages.append("lease not renewed in time (the sentinel may stop waiting for this proxy): "
                            "closing all connections, stopped listening")
        st = replace(st, listening=False)
        return Actions(st, close_all=True, ack=False, messages=tuple(messages))
    elif not fresh:
        return Actions(st, close_all=True, ack=False, messages=tuple(messages))
    return Actions(st, frozenset(close_rw), frozenset(close_ro), False, ack, tuple(messages))
