"""Table tests for the proxy's pure rules (pgha.proxy.decide)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from pgha.model import ClusterData, KeeperSpec, ProxySpec
from pgha.proxy.decide import Observation, ProxyState, decide
from pgha.spec import normalize

SPEC = normalize({"proxy_check_interval": 0.5, "proxy_timeout": 3})
K1 = ("keeper1", "127.0.0.1:5432")
K2 = ("keeper2", "127.0.0.1:5433")
K3 = ("keeper3", "127.0.0.1:5434")


def cd(target: str | None, generation: int, ro: tuple[str, ...] = (), spec: dict | None = None,
       addresses: dict[str, str] | None = None) -> ClusterData:
    addrs = addresses or {K1[0]: K1[1], K2[0]: K2[1], K3[0]: K3[1]}
    return ClusterData(uid="c1", name="main", spec=spec or SPEC,
                       keepers={uid: KeeperSpec(address=a) for uid, a in addrs.items()},
                       proxy=ProxySpec(target=target, generation=generation, ro_targets=ro))


# a proxy that holds a lease (renewed by the agent's store thread, which sets lease_deadline)
LEASED = ProxyState(lease_deadline=float("inf"))


def routed(rw=K1, ro=(K2,), generation=7, last_good=100.0, ro_fallback=False,
           lease_deadline=float("inf")) -> ProxyState:
    return ProxyState(check_interval=0.5, timeout=3.0, last_good=last_good, trusted=True, distrust="",
                      listening=True, generation=generation, rw=rw, ro=ro, ro_fallback=ro_fallback,
                      lease_deadline=lease_deadline)


@dataclass
class Case:
    name: str
    state: ProxyState
    obs: Observation | None
    now: float
    listening: bool
    close_rw: frozenset = frozenset()
    close_ro: frozenset = frozenset()
    close_all: bool = False
    ack: bool = True
    generation: int | None = None
    rw: tuple | None | str = "same"
    ro: tuple | str = "same"
    message: str = ""


CASES = [
    Case("first read routes and listens", LEASED, Observation(100.0, cd=cd("keeper1", 1, ("keeper2",))),
         100.1, True, generation=1, rw=K1, ro=(K2,), message="routing rw to keeper1 (127.0.0.1:5432), generation 1"),
    Case("no cluster data yet: listen, route nowhere", LEASED, Observation(100.0, absent=True), 100.1, True,
         generation=-1, rw=None, ro=(), message="no cluster data yet"),
    Case("never read the store: do not listen", LEASED, None, 100.0, False, close_all=True, ack=False),
    Case("no lease yet: a trusted read does not open the ports (the sentinel cannot see this proxy)",
         ProxyState(), Observation(100.0, cd=cd("keeper1", 1, ("keeper2",))), 100.1, False, close_all=True,
         ack=False, generation=1, rw=K1),
    Case("lease past its deadline: fenced although the last read is fresh", routed(lease_deadline=101.0),
         Observation(101.0, cd=cd("keeper1", 7, ("keeper2",))), 101.2, False, close_all=True, ack=False,
         message="lease not renewed in time"),
    Case("lease deadline before the read deadline: relaying stops at the lease's", routed(lease_deadline=102.0),
         None, 102.1, False, close_all=True, ack=False, message="lease not renewed in time"),
    Case("same generation: nothing to close", routed(), Observation(101.0, cd=cd("keeper1", 7, ("keeper2",))),
         101.1, True, generation=7, rw=K1, ro=(K2,)),
    Case("target change closes the old target", routed(), Observation(101.0, cd=cd("keeper2", 8, ("keeper3",))),
         101.1, True, close_rw=frozenset({"keeper1"}), close_ro=frozenset({"keeper2"}), generation=8, rw=K2,
         ro=(K3,), message="routing rw to keeper2 (127.0.0.1:5433), generation 8; closing connections to keeper1"),
    Case("target none closes all rw connections", routed(), Observation(101.0, cd=cd(None, 8, ("keeper2",))),
         101.1, True, close_rw=frozenset({"keeper1"}), generation=8, rw=None, ro=(K2,),
         message="routing rw to nowhere, generation 8"),
    Case("target address change closes connections", routed(),
         Observation(101.0, cd=cd("keeper1", 8, ("keeper2",), addresses={"keeper1": "10.0.0.9:5432",
                                                                           "keeper2": K2[1]})),
         101.1, True, close_rw=frozenset({"keeper1"}), generation=8, rw=("keeper1", "10.0.0.9:5432")),
    Case("target without an address routes nowhere", routed(),
         Observation(101.0, cd=cd("keeper9", 8, ("keeper2",))), 101.1, True, close_rw=frozenset({"keeper1"}),
         generation=8, rw=None, message="target keeper9 has no known address"),
    Case("unknown format refuses and keeps routes", routed(),
         Observation(101.0, error="clusterdata: unsupported format_version 2"), 101.1, True, ack=False,
         generation=7, rw=K1, ro=(K2,), message="cannot trust the store: clusterdata: unsupported format_version 2"),
    Case("store unreadable within proxy_timeout keeps serving", routed(),
         Observation(102.0, error="store unreadable: refused"), 102.5, True, ack=False, rw=K1),
    Case("store stale stops listening and closes all", routed(), None, 103.2, False, close_all=True, ack=False,
         rw=K1, message="store unreadable for 3.2s (> proxy_timeout 3.0s"),
    Case("untrusted data for proxy_timeout stops listening", replace(routed(), trusted=False, distrust="bad json"),
         Observation(103.0, error="bad json"), 103.5, False, close_all=True, ack=False,
         message="closing all connections, stopped listening"),
    Case("stale read result does not revive", routed(last_good=100.0), Observation(99.0, cd=cd("keeper1", 7)),
         103.5, False, close_all=True, ack=False),
    Case("recovered store listens again", replace(routed(last_good=90.0), listening=False, trusted=False,
                                                  distrust="store unreadable: refused"),
         Observation(101.0, cd=cd("keeper1", 7, ("keeper2",))), 101.1, True, generation=7, rw=K1,
         message="listening: the store is readable"),
    Case("ro target removed closes its ro connections", routed(ro=(K2, K3)),
         Observation(101.0, cd=cd("keeper1", 8, ("keeper3",))), 101.1, True, close_ro=frozenset({"keeper2"}),
         generation=8, rw=K1, ro=(K3,), message="closing read-only connections to keeper2"),
    Case("ro empty falls back to the primary", routed(), Observation(101.0, cd=cd("keeper1", 8, ())), 101.1, True,
         close_ro=frozenset({"keeper2"}), generation=8, rw=K1, ro=(K1,),
         message="no read-only targets: read-only traffic goes to the primary"),
    Case("ro fallback follows the primary", routed(ro=(K1,), ro_fallback=True),
         Observation(101.0, cd=cd("keeper2", 8, ())), 101.1, True, close_rw=frozenset({"keeper1"}),
         close_ro=frozenset({"keeper1"}), generation=8, rw=K2, ro=(K2,)),
    Case("ro empty and no primary routes ro nowhere", routed(), Observation(101.0, cd=cd(None, 8, ())), 101.1,
         True, close_rw=frozenset({"keeper1"}), close_ro=frozenset({"keeper2"}), generation=8, rw=None, ro=()),
    Case("ro port off: no read-only routes", replace(LEASED, ro_enabled=False),
         Observation(100.0, cd=cd("keeper1", 1, ("keeper2",))), 100.1, True, generation=1, rw=K1, ro=()),
    Case("spec timings are taken from the cluster data", LEASED,
         Observation(100.0, cd=cd("keeper1", 1, spec=normalize({"proxy_check_interval": 0.2, "proxy_timeout": 1}))),
         101.05, False, close_all=True, ack=False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    actions = decide(case.state, case.obs, case.now)
    st = actions.state
    assert st.listening is case.listening
    assert actions.close_all is case.close_all
    assert actions.close_rw == case.close_rw
    assert actions.close_ro == case.close_ro
    assert actions.ack is case.ack
    if case.generation is not None:
        assert st.generation == case.generation
    if case.rw != "same":
        assert st.rw == case.rw
    if case.ro != "same":
        assert st.ro == case.ro
    if case.message:
        assert case.message in " | ".join(actions.messages)


def test_deadline_follows_the_last_trusted_read_and_the_lease() -> None:
    st = decide(LEASED, Observation(50.0, cd=cd("keeper1", 1)), 50.0).state
    assert st.deadline == 53.0
    st = decide(st, Observation(51.0, error="store unreadable: timeout"), 51.5).state
    assert st.deadline == 53.0  # an untrusted read does not extend it
    assert replace(st, lease_deadline=52.0).deadline == 52.0  # the lease can end it sooner
    assert ProxyState().deadline == float("-inf")


def test_distrust_is_logged_once_per_reason() -> None:
    st = routed()
    a1 = decide(st, Observation(101.0, error="store unreadable: refused"), 101.0)
    a2 = decide(a1.state, Observation(101.5, error="store unreadable: refused"), 101.5)
    assert a1.messages and not a2.messages
