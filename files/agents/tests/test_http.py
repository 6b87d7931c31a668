"""The shared HTTP API server and the Prometheus text renderer."""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

import pytest

from pgha.http import PROMETHEUS_CONTENT_TYPE, ApiServer, prometheus


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def server():
    seen: list[dict[str, list[str]]] = []

    def health(query: dict[str, list[str]]) -> tuple[int, str, str]:
        seen.append(query)
        return 200, "text/plain", "ok\n"

    def sick(query: dict[str, list[str]]) -> tuple[int, str, str]:
        return 503, "text/plain", "store unreadable\n"

    def broken(query: dict[str, list[str]]) -> tuple[int, str, str]:
        raise RuntimeError("boom")

    api = ApiServer("127.0.0.1", 0, {"/health": health, "/sick": sick, "/broken": broken})
    api.start()
    yield api, seen
    api.stop()


def test_route_gets_query_parameters(server):
    api, seen = server
    assert _get(api.bound_port, "/health?verbose=1&x=a&x=b") == (200, "text/plain", "ok\n")
    assert seen == [{"verbose": ["1"], "x": ["a", "b"]}]


def test_route_status_is_passed_through(server):
    api, _ = server
    assert _get(api.bound_port, "/sick")[:2] == (503, "text/plain")


def test_unknown_path_is_404(server):
    api, _ = server
    assert _get(api.bound_port, "/nope")[0] == 404


def test_failing_route_is_500_and_server_survives(server):
    api, _ = server
    assert _get(api.bound_port, "/broken")[0] == 500
    assert _get(api.bound_port, "/health")[0] == 200


def test_requests_are_not_logged_at_info(server, caplog, capfd):
    api, _ = server
    with caplog.at_level(logging.INFO):
        _get(api.bound_port, "/health")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    assert "GET /health" not in capfd.readouterr().err


def test_port_taken_raises_clear_oserror():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        api = ApiServer("127.0.0.1", port, {})
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            api.start()


def test_constructor_does_no_io_and_stop_is_idempotent():
    api = ApiServer("127.0.0.1", 1, {})  # port 1 would need root: nothing may bind here
    assert api.bound_port == 1
    api.stop()


def test_stop_frees_the_port():
    api = ApiServer("127.0.0.1", 0, {})
    api.start()
    port = api.bound_port
    api.stop()
    again = ApiServer("127.0.0.1", port, {})
    again.start()
    again.stop()


def test_prometheus_groups_by_name_with_one_help_and_type():
    text = prometheus([
        ("pgha_connections", "gauge", "Open connections.", {"port": "rw"}, 3),
        ("pgha_up", "gauge", "Up.", {}, 1.0),
        ("pgha_connections", "gauge", "Open connections.", {"port": "ro"}, 0),
        ("pgha_age_seconds", "gauge", "Age.", {}, 0.25),
    ])
    assert text == (
        "# HELP pgha_connections Open connections.\n"
        "# TYPE pgha_connections gauge\n"
        'pgha_connections{port="rw"} 3\n'
        'pgha_connections{port="ro"} 0\n'
        "# HELP pgha_up Up.\n"
        "# TYPE pgha_up gauge\n"
        "pgha_up 1\n"
        "# HELP pgha_age_seconds Age.\n"
        "# TYPE pgha_age_seconds gauge\n"
        "pgha_age_seconds 0.25\n"
    )


def test_prometheus_escapes_labels_and_help():
    text = prometheus([("m", "gauge", "a\\b\nc", {"l": 'x"y\\z\n'}, float("inf"))])
    assert "# HELP m a\\\\b\\nc\n" in text
    assert 'm{l="x\\"y\\\\z\\n"} +Inf\n' in text


def test_prometheus_empty():
    assert prometheus([]) == ""


def test_content_type_constant():
    assert PROMETHEUS_CONTENT_TYPE.startswith("text/plain; version=0.0.4")
