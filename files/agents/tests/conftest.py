"""Fixtures for the engine's tests.

Integration tests (``@pytest.mark.integration``) are skipped, with the reason, when etcd, PostgreSQL,
the agent user or the agent programs are missing. A test that needs less than the whole set says so
with ``@pytest.mark.needs("etcd", "user")`` (components: etcd, postgres, user, agents).

``cluster_factory(**kw)`` makes and starts a ``harness.PghaCluster`` (pass ``start=False`` to start it
yourself); ``pgha_tmp`` is a fresh directory the agent user can reach. At teardown every cluster is
stopped and its logs checked for tracebacks. The logs of a failed test are copied to
``tests/output/<test name>/`` and its directories are kept; those of a passed test are deleted.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import harness

OUTPUT_DIR = Path(__file__).parent / "output"
ALL_COMPONENTS = ("etcd", "postgres", "user", "agents")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*components): what an integration test needs "
                            "(etcd, postgres, user, agents); default all")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons: dict[tuple[str, ...], str | None] = {}
    for item in items:
        if item.get_closest_marker("integration") is None:
            continue
        needs = item.get_closest_marker("needs")
        components = tuple(sorted(needs.args)) if needs else ALL_COMPONENTS
        if components not in reasons:
            reasons[components] = harness.missing_requirements(components)
        if reasons[components]:
            item.add_marker(pytest.mark.skip(reason=reasons[components]))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item so fixtures can tell whether the test failed."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session", autouse=True)
def _stop_leftover_agents() -> Iterator[None]:
    yield
    harness.stop_all_agents()


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


def _safe_name(nodeid: str) -> str:
    name = nodeid.split("::", 1)[-1] if "::" in nodeid else nodeid
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:120] or "test"


def _keep_logs(request: pytest.FixtureRequest, label: str, logs: list[Path]) -> Path:
    dest = OUTPUT_DIR / _safe_name(request.node.nodeid) / label
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for log in logs:
        if log.is_file():
            shutil.copy2(log, dest / log.name)
    return dest


@pytest.fixture
def pgha_tmp(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory reachable by the agent user; deleted when the test passes, kept when it fails."""
    path = harness.make_tmp_dir(f"pgha-{_safe_name(request.node.name)[:40]}-")
    yield path
    if _test_failed(request):
        print(f"\nkept {path} of failed test {request.node.nodeid}")
    else:
        harness.remove_tree(path)


@pytest.fixture
def cluster_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., harness.PghaCluster]]:
    """``cluster_factory(keepers=3, sentinels=2, proxies=1, spec=None, etcd_members=1, start=True)``."""
    made: list[harness.PghaCluster] = []

    def factory(*, start: bool = True, **kw: Any) -> harness.PghaCluster:
        tmp = harness.make_tmp_dir(f"pgha-{_safe_name(request.node.name)[:40]}-")
        cluster = harness.PghaCluster(tmp, **kw)
        made.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield factory

    problems: list[str] = []
    for cluster in made:
        try:
            cluster.stop()
        except Exception as exc:  # noqa: BLE001 - keep stopping the others, report below
            problems.append(f"stopping {cluster.cluster_name}: {exc!r}")
        try:
            cluster.check_logs()
        except AssertionError as exc:
            problems.append(str(exc))
    failed = bool(problems) or _test_failed(request)
    for cluster in made:
        if failed:
            dest = _keep_logs(request, cluster.cluster_name, cluster.all_logs())
            print(f"\nlogs of {cluster.cluster_name}: {dest} (directory kept: {cluster.tmp})")
        else:
            harness.remove_tree(cluster.tmp)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def etcd_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., harness.EtcdCluster]]:
    """``etcd_factory(n=1, start=True)``: an etcd cluster alone, stopped and cleaned up like clusters."""
    made: list[harness.EtcdCluster] = []

    def factory(n: int = 1, *, start: bool = True) -> harness.EtcdCluster:
        tmp = harness.make_tmp_dir(f"pgha-etcd-{_safe_name(request.node.name)[:40]}-")
        etcd = harness.EtcdCluster(tmp, n)
        made.append(etcd)
        if start:
            etcd.start()
        return etcd

    yield factory

    for etcd in made:
        etcd.stop()
    failed = _test_failed(request)
    for etcd in made:
        if failed:
            dest = _keep_logs(request, f"etcd-{etcd.token}", sorted((etcd.tmp / "logs").glob("*.log")))
            print(f"\netcd logs: {dest} (directory kept: {etcd.tmp})")
        else:
            harness.remove_tree(etcd.tmp)
