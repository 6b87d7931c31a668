"""The small HTTP API every agent can serve: health checks and Prometheus metrics.

An agent hands ``ApiServer`` a table of routes, path -> function of the query parameters that returns
``(status, content_type, body)``. The server runs in a daemon thread (one thread per request), so a
route must only read state that is safe to read from another thread (plain attributes, snapshots).
Requests are logged at debug level only.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("pgha.http")

Route = Callable[[dict[str, list[str]]], tuple[int, str, str]]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # SO_REUSEADDR: a restart may bind while old sockets sit in TIME_WAIT

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], family: int) -> None:
        self.address_family = family
        super().__init__(address, handler)


def _handler(routes: dict[str, Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pgha"
        sys_version = ""

        def _serve(self, with_body: bool) -> None:
            parts = urlsplit(self.path)
            route = routes.get(parts.path)
            if route is None:
                status, ctype, body = 404, TEXT_CONTENT_TYPE, f"not found: {parts.path}\n"
            else:
                try:
                    status, ctype, body = route(parse_qs(parts.query, keep_blank_values=True))
                except Exception as exc:  # a broken route must not kill the server thread
                    log.exception("HTTP route %s failed", parts.path)
                    status, ctype, body = 500, TEXT_CONTENT_TYPE, f"internal error: {type(exc).__name__}\n"
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if with_body:
                self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            self._serve(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(False)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base class signature)
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


class ApiServer:
    """Serves ``routes`` over HTTP on ``address:port`` (port 0: any free port, see ``bound_port``)."""

    def __init__(self, address: str, port: int, routes: dict[str, Route]) -> None:
        self.address = address
        self.port = port
        self.routes = dict(routes)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve in a daemon thread. Raises OSError naming the address when it cannot bind."""
        if self._httpd is not None:
            return
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        try:
            httpd = _Server((self.address, self.port), _handler(self.routes), family)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve the HTTP API on {self.address}:{self.port}: "
                                     f"{exc.strerror or exc}") from exc
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"http-api-{self.bound_port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def bound_port(self) -> int:
        """The port actually bound (useful with port 0); the configured port before ``start()``."""
        if self._httpd is not None:
            return int(self._httpd.server_address[1])
        return self.port


# ------------------------------------------------------------------------------------------------
# Prometheus text exposition format


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def prometheus(metrics: list[tuple[str, str, str, dict[str, str], float]]) -> str:
    """Render ``(name, type, help, labels, value)`` samples as Prometheus text.

    Samples are grouped by name (in order of first appearance) under one ``# HELP`` and one
    ``# TYPE`` line; the first sample of a name supplies its type and help.
    """
    groups: dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]] = {}
    for name, mtype, help_text, labels, value in metrics:
        if name not in groups:
            groups[name] = (mtype, help_text, [])
        groups[name][2].append((labels, value))
    lines: list[str] = []
    for name, (mtype, help_text, samples) in groups.items():
        lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} {mtype}")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
                lines.append(f"{name}{{{inner}}} {_format_value(value)}")
            else:
                lines.append(f"{name} {_format_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""
