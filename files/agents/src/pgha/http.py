"""The small HTTP API every agent can serve: health checks and Prometheus metrics.

An agent hands ``ApiServer`` a table of routes, path -> function of the query parameters that returns
``(status, content_type, body)``. The server runs an asyncio event loop in a daemon thread, so a route
runs on that thread and must only read state that is safe to read from another thread (plain
attributes, snapshots) and must not block. Requests are logged at debug level only.

It cannot be starved: an open connection costs a file descriptor, not a thread; a client has
``read_timeout`` seconds to send its request (8 KiB at most) and gets one answer (``Connection:
close``); at ``max_connections`` open connections the one that has waited longest without sending a
request is closed to make room, so a health check gets through a flood of idle sockets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import threading
import time
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("pgha.http")

Route = Callable[[dict[str, list[str]]], tuple[int, str, str]]

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

MAX_REQUEST_BYTES = 8192
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class ApiServer:
    """Serves ``routes`` over HTTP on ``address:port`` (port 0: any free port, see ``bound_port``)."""

    def __init__(self, address: str, port: int, routes: dict[str, Route], *, max_connections: int = 256,
                 read_timeout: float = 5.0) -> None:
        self.address = address
        self.port = port
        self.routes = dict(routes)
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.evicted = 0  # connections closed to make room (read from other threads)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._silent: dict[asyncio.StreamWriter, float] = {}  # no request yet, oldest first

    def start(self) -> None:
        """Bind and serve in a daemon thread. Raises OSError naming the address when it cannot bind."""
        if self._sock is not None:
            return
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        try:
            # SO_REUSEADDR (create_server's default here): a restart may bind while old sockets sit in TIME_WAIT
            sock = socket.create_server((self.address, self.port), family=family, backlog=128)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve the HTTP API on {self.address}:{self.port}: "
                                     f"{exc.strerror or exc}") from exc
        sock.setblocking(False)
        self._sock = sock
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(loop, sock, ready),
                                        name=f"http-api-{self.bound_port}", daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(asyncio.start_server(self._client, sock=sock, limit=MAX_REQUEST_BYTES,
                                                                  backlog=128))
        finally:
            ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for writer in list(self._open):
                writer.transport.abort()
            loop.run_until_complete(server.wait_closed())
            loop.close()

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        sock, self._sock = self._sock, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if sock is not None:
            sock.close()

    @property
    def bound_port(self) -> int:
        """The port actually bound (useful with port 0); the configured port before ``start()``."""
        if self._sock is not None:
            return int(self._sock.getsockname()[1])
        return self.port

    @property
    def open_connections(self) -> int:
        return len(self._open)

    # -- one connection
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        self._silent[writer] = time.monotonic()
        if len(self._open) > self.max_connections:
            oldest = next(iter(self._silent))
            self._silent.pop(oldest)
            self.evicted += 1
            oldest.transport.abort()
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        finally:
            self._silent.pop(writer, None)
            self._open.discard(writer)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # the client does not read its answer: do not wait for it
            else:
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout)
        except asyncio.LimitOverrunError:
            return await self._answer(writer, "?", "", 431, TEXT_CONTENT_TYPE, "request too large\n", True)
        except asyncio.IncompleteReadError:
            return None  # closed before a whole request
        except asyncio.TimeoutError:
            return await self._answer(writer, "?", "", 408, TEXT_CONTENT_TYPE, "no request in time\n", True)
        self._silent.pop(writer, None)
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return await self._answer(writer, "?", line[:80], 400, TEXT_CONTENT_TYPE, "bad request line\n", True)
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return await self._answer(writer, method, target, 405, TEXT_CONTENT_TYPE, "only GET and HEAD\n", True)
        url = urlsplit(target)
        path = unquote(url.path)
        route = self.routes.get(path)
        if route is None:
            status, ctype, body = 404, TEXT_CONTENT_TYPE, f"not found: {path}\n"
        else:
            try:
                status, ctype, body = route(parse_qs(url.query, keep_blank_values=True))
            except Exception as exc:  # a broken route must not kill the server
                log.exception("HTTP route %s failed", path)
                status, ctype, body = 500, TEXT_CONTENT_TYPE, f"internal error: {type(exc).__name__}\n"
        return await self._answer(writer, method, target, status, ctype, body, method == "GET")

    async def _answer(self, writer: asyncio.StreamWriter, method: str, target: str, status: int, ctype: str,
                      body: str, with_body: bool) -> None:
        data = body.encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nServer: pgha\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("latin-1") + (data if with_body else b""))
        await asyncio.wait_for(writer.drain(), self.read_timeout)
        peer = writer.get_extra_info("peername")
        log.debug("%s %s %s %d", peer[0] if isinstance(peer, tuple) else "?", method, target, status)


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
