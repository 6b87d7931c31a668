"""The chaos loop with a fake platform and a fake clock."""

from __future__ import annotations

from pgha.chaos import Target, run

TARGETS = [Target("keeper1", "keeper"), Target("keeper2", "keeper"), Target("sentinel1", "sentinel"),
           Target("proxy1", "proxy"), Target("etcd1", "etcd")]


class FakePlatform:
    """Stands in for supervisord: a killed target comes back ``restart`` seconds later."""

    def __init__(self, clock: "Clock", restart: float) -> None:
        self.clock = clock
        self.restart = restart
        self.killed: dict[str, float] = {}

    def kill(self, target: Target) -> str:
        self.killed[target.name] = self.clock()
        return f"killed {target.name}"

    def is_up(self, target: Target) -> bool:
        return self.clock() - self.killed.get(target.name, -1e9) >= self.restart


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(s, 0.05)


def test_kills_every_interval_and_never_etcd_by_default() -> None:
    clock = Clock()
    res = run(TARGETS, FakePlatform(clock, restart=1), interval=5, duration=60, max_down=1, seed=1,
              clock=clock, sleep=clock.sleep)
    assert 11 <= len(res.kills) <= 13
    assert all(k["component"] != "etcd" for k in res.kills)


def test_etcd_only_when_asked() -> None:
    clock = Clock()
    res = run(TARGETS, FakePlatform(clock, restart=0.5), interval=1, duration=200, max_down=1, seed=3,
              include_etcd=True, clock=clock, sleep=clock.sleep)
    assert any(k["component"] == "etcd" for k in res.kills)


def test_never_more_than_max_down() -> None:
    clock = Clock()
    platform = FakePlatform(clock, restart=12)  # slow restarts: kills must wait
    res = run(TARGETS, platform, interval=2, duration=60, max_down=2, seed=2, clock=clock, sleep=clock.sleep)
    times = [k["at"] for k in res.kills]
    for t in times:
        overlapping = [u for u in times if u <= t < u + 12]  # down until restarted
        assert len(overlapping) <= 2
    assert res.skipped > 0


def test_failovers_counted_from_primary_changes() -> None:
    clock = Clock()
    seq = iter(["k1"] * 5 + [None] * 3 + ["k2"] * 5 + ["k3"] * 100)
    res = run(TARGETS, FakePlatform(clock, restart=1), interval=5, duration=10, max_down=1, seed=1,
              observe=lambda: next(seq), clock=clock, sleep=clock.sleep)
    assert res.failovers == 2
