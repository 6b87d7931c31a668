"""pgha.kube against a fake Kubernetes API server (HTTP and HTTPS on loopback, no cluster)."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pgha import kube


class FakeKubeApi:
    """Records every request; answers with the status codes queued in ``codes`` (200 when empty),
    or holds the answer while ``hold`` is set."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.codes: list[int] = []
        self.hold = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                fake.requests.append({"method": "PATCH", "path": self.path, "headers": dict(self.headers),
                                      "body": json.loads(body)})
                while fake.hold.is_set():
                    time.sleep(0.02)
                code = fake.codes.pop(0) if fake.codes else 200
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"kind": "Pod"}' if code == 200 else b'{"kind": "Status", "message": "nope"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.hold.clear()
        self.server.shutdown()


@pytest.fixture
def fake_api() -> Any:
    api = FakeKubeApi()
    yield api
    api.close()


@pytest.fixture
def token(tmp_path: Path) -> str:
    path = tmp_path / "token"
    path.write_text("fake-token\n")
    return str(path)


def client(api: FakeKubeApi, token_file: str, ca_file: str | None = None) -> kube.PodClient:
    return kube.PodClient(api.url, "db", "main-keeper-1", token_file, ca_file, timeout=2)


def test_patch_sends_a_json_merge_patch_of_the_own_pods_labels(fake_api: FakeKubeApi, token: str) -> None:
    client(fake_api, token).patch_labels({"pgha.io/role": "primary"})
    [req] = fake_api.requests
    assert req["method"] == "PATCH"
    assert req["path"] == "/api/v1/namespaces/db/pods/main-keeper-1"
    assert req["headers"]["Content-Type"] == "application/merge-patch+json"
    assert req["headers"]["Authorization"] == "Bearer fake-token"
    assert req["body"] == {"metadata": {"labels": {"pgha.io/role": "primary"}}}


def test_a_refusal_is_an_error_naming_the_pod(fake_api: FakeKubeApi, token: str) -> None:
    fake_api.codes = [403]
    with pytest.raises(kube.KubeError, match=r"db/main-keeper-1: HTTP 403"):
        client(fake_api, token).patch_labels({"pgha.io/role": "replica"})


def test_https_with_the_service_account_ca(tmp_path: Path, token: str) -> None:
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    api = FakeKubeApi(tls=(str(cert), str(key)))
    try:
        client(api, token, str(cert)).patch_labels({"pgha.io/role": "primary"})
        assert len(api.requests) == 1
        # without that CA the server is not trusted
        with pytest.raises(kube.KubeError):
            kube.PodClient(api.url, "db", "main-keeper-1", token, None, timeout=2).patch_labels({"a": "b"})
    finally:
        api.close()


def test_outside_kubernetes_nothing_is_sent_and_debug_says_why(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="pgha.kube")
    assert kube.PodClient.from_environment({}, sa_dir=str(tmp_path)) is None
    assert "not in Kubernetes" in caplog.text
    labels = kube.RoleLabels(environ={})
    labels.observe("primary")
    assert labels._thread is None


def test_in_kubernetes_the_environment_names_the_pod(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("")
    c = kube.PodClient.from_environment({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443",
                                         "POD_NAME": "main-keeper-0", "POD_NAMESPACE": "db"}, sa_dir=str(tmp_path))
    assert c is not None
    assert (c.api_url, c.namespace, c.pod_name) == ("https://10.0.0.1:443", "db", "main-keeper-0")


def test_role_changes_are_labelled_once_each(fake_api: FakeKubeApi, token: str) -> None:
    labels = kube.RoleLabels(client(fake_api, token), retry_min=0.05)
    labels.observe("replica")
    assert labels.wait_sent("replica", 5)
    labels.observe("replica")
    labels.observe("primary")
    assert labels.wait_sent("primary", 5)
    labels.observe("none")  # neither primary nor replica: the label goes
    assert labels.wait_sent(None, 5)
    bodies = [r["body"]["metadata"]["labels"]["pgha.io/role"] for r in fake_api.requests]
    assert bodies == ["replica", "primary", None]


def test_failures_are_retried_until_the_label_lands(fake_api: FakeKubeApi, token: str) -> None:
    fake_api.codes = [500, 503]
    labels = kube.RoleLabels(client(fake_api, token), retry_min=0.05)
    labels.observe("primary")
    assert labels.wait_sent("primary", 5)
    assert len(fake_api.requests) == 3


def test_a_hanging_api_server_never_blocks_the_caller(fake_api: FakeKubeApi, token: str) -> None:
    fake_api.hold.set()
    labels = kube.RoleLabels(client(fake_api, token), retry_min=0.05)
    started = time.monotonic()
    for role in ("replica", "primary", "replica", "primary"):
        labels.observe(role)
    assert time.monotonic() - started < 0.5
    fake_api.hold.clear()
    assert labels.wait_sent("primary", 10)


def test_role_from_the_keepers_health_answer() -> None:
    assert kube.role_from_health(200, b'{"healthy": true, "role": "primary"}') == "primary"
    assert kube.role_from_health(200, b'{"healthy": true, "role": "replica"}') == "replica"
    assert kube.role_from_health(503, b'{"healthy": false, "phase": "starting"}') == "none"
    assert kube.role_from_health(200, b'{"healthy": false, "role": "primary"}') == "none"
    assert kube.role_from_health(200, b"not json") == "none"
    assert kube.role_from_health(200, b'["primary"]') == "none"


def test_the_labeller_follows_the_keepers_api(fake_api: FakeKubeApi, token: str) -> None:
    """pgha-labeller's loop against a real HTTP API standing in for the keeper's, and the fake API server."""
    import threading

    from pgha.http import ApiServer

    answer = {"status": 200, "body": '{"healthy": true, "role": "replica"}'}
    keeper = ApiServer("127.0.0.1", 0, {"/health": lambda q: (answer["status"], "application/json", answer["body"])})
    keeper.start()
    labels = kube.RoleLabels(client(fake_api, token), retry_min=0.05)
    stop = threading.Event()
    loop = threading.Thread(target=kube.label_loop, args=(f"http://127.0.0.1:{keeper.bound_port}/health", labels, stop,
                                                          0.05), daemon=True)
    loop.start()
    try:
        assert labels.wait_sent("replica", 5)
        answer.update(body='{"healthy": true, "role": "primary"}')
        assert labels.wait_sent("primary", 5)
        keeper.stop()  # the keeper's API gone (keeper restarting): no role label
        assert labels.wait_sent(None, 5)
    finally:
        stop.set()
        loop.join(5)
        keeper.stop()
    bodies = [r["body"]["metadata"]["labels"]["pgha.io/role"] for r in fake_api.requests]
    assert bodies == ["replica", "primary", None]


def test_the_labeller_outside_kubernetes_says_so_and_exits(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("KUBERNETES_SERVICE_HOST", "POD_NAME", "POD_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exc:
        kube.labeller_main(["--keeper-api", "http://127.0.0.1:1"])
    assert exc.value.code == 1
    assert "not in a Kubernetes pod" in capsys.readouterr().err
