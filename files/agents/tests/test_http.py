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


def test_a_flood_of_idle_connections_does_not_starve_health_checks():
    import resource
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 5000 and hard >= 5000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (5000, hard))
    api = ApiServer("127.0.0.1", 0, {"/health": lambda q: (200, "text/plain", "ok\n")}, max_connections=64,
                    read_timeout=1.0)
    api.start()
    idle = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", api.bound_port), timeout=5))
        started = time.monotonic()
        assert _get(api.bound_port, "/health") == (200, "text/plain", "ok\n")
        print(f"/health answered in {time.monotonic() - started:.3f}s with 2000 idle connections open")
        deadline = time.monotonic() + 10
        while api.open_connections > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert api.open_connections == 0  # evicted to make room, or timed out without a request
        assert api.evicted > 0  # (the others timed out without a request)
        idle[-1].settimeout(3)
        assert idle[-1].recv(200).startswith(b"HTTP/1.1 408 ")  # the newest ones were told why
    finally:
        for s in idle:
            s.close()
        api.stop()


def test_bad_requests_get_an_answer_and_do_not_reach_a_route(server):
    api, seen = server

    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", api.bound_port), timeout=5) as s:
            s.sendall(data)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    assert raw(b"POST /health HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(b"GET /health HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
    head = raw(b"HEAD /health HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
    assert len(seen) == 1
