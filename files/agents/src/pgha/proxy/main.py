"""pgha-proxy command line."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import ssl
import sys
from collections.abc import Callable

from pgha import log as pgha_log
from pgha.cli import EnvParser, common_parser, die, parse_bool, raise_open_files_limit, store_from_args
from pgha.model import keys
from pgha.proxy.agent import ProxyAgent, advertised_host
from pgha.proxy.relay import Limits
from pgha.spec import valid_uid
from pgha.store.base import StoreError

DESCRIPTION = """\
Routes client TCP connections to the elected PostgreSQL primary (--port) and, optionally, read-only
connections to healthy replicas (--ro-port), as decided by the leading pgha-sentinel in the store.

Fencing: when the primary changes, every connection to the old one is closed before the proxy
acknowledges the change in the store (the sentinel waits for that acknowledgement before promoting).
When the store cannot be read for proxy_timeout (cluster spec), the proxy closes every connection
and stops listening until it can read the store again. A client that connects while there is no
primary (during a failover) is held for up to proxy_timeout, then relayed or answered with the
error "no primary elected".

Starvation: no PostgreSQL connection is opened before the client has sent its startup message, a
client that sends none is closed after --startup-timeout, and connection limits (total and per
source address) turn clients away with "connection limit reached".
"""

EPILOG = """\
Every flag can also be set with an environment variable PGHA_<FLAG>, e.g. PGHA_STORE_ENDPOINTS.

example:
  pgha-proxy --cluster-name main --store-endpoints http://10.0.0.1:2379 --port 5432 --ro-port 5433 \\
      --listen-address 0.0.0.0 --api-port 8009
"""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, got {value:g}")
    return value


def build_parser() -> EnvParser:
    p = common_parser("pgha-proxy", DESCRIPTION, EPILOG)
    p.add_flag("--uid", help="unique id of this proxy in the store (letters a-z, digits, _); "
                             "random 8 hex digits when not given")
    p.add_flag("--listen-address", default="127.0.0.1", help="address the client ports listen on")
    p.add_flag("--port", type=_port, default=25432,
               help="read-write port: relayed to the primary (0: any free port, see the status in the store)")
    p.add_flag("--ro-port", type=_port, default=0,
               help="read-only port: relayed round-robin to the replicas fit for reads, or to the primary when "
                    "there is none, its sessions then started with default_transaction_read_only=on and without "
                    "TLS (0: off)")
    p.add_flag("--advertise-address",
               help="host the proxy reports in the store for clients, drills and the inventory (default: "
                    "--listen-address; when that is a wildcard such as 0.0.0.0, the local address this host "
                    "reaches the first store endpoint from)")
    p.add_flag("--api-listen-address", help="address of the HTTP API (default: --listen-address)")
    p.add_flag("--api-port", type=_port, default=0,
               help="HTTP API port serving /health and /metrics (0: off)")
    p.add_flag("--reuse-port", type=parse_bool, default=False,
               help="open the client ports with SO_REUSEPORT, so that several proxies (each with its own --uid "
                    "and --api-port) share them and the kernel spreads connections over them: one proxy process "
                    "relays on one core")
    p.add_flag("--max-connections", type=_count, default=Limits.max_connections,
               help="client connections this proxy keeps open on both ports together; one more is answered with "
                    "'connection limit reached' (0: no limit; keep it under the file-descriptor limit / 2)")
    p.add_flag("--max-connections-per-source", type=_count, default=Limits.max_per_source,
               help="client connections from one source address (0: no limit)")
    p.add_flag("--startup-timeout", type=_seconds, default=Limits.startup_timeout,
               help="seconds a client may stay connected without sending its startup message before the proxy "
                    "closes it (no PostgreSQL connection is opened before that message)")
    p.add_flag("--pg-tls-ca-file", help="the CA of the keepers' certificates: when the read-only port stands in the "
                                         "primary for missing replicas, the proxy itself speaks TLS to it and checks "
                                         "its certificate (the client's own TLS is declined there: the proxy must "
                                         "read its StartupMessage). Without it, that leg is in clear")
    p.add_flag("--event-loop", default="auto", choices=("auto", "uvloop", "asyncio"),
               help="event loop that relays the bytes: uvloop (libuv-based, less CPU per relayed message; "
                    "see docs/benchmarks.md), asyncio (the standard library's), or auto (uvloop when installed)")
    return p


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """(event loop factory for asyncio.Runner, its name) for --event-loop ``choice``."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                die("--event-loop uvloop: uvloop is not installed (pip install uvloop)")
        else:
            return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"
    return None, "asyncio"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    uid = args.uid or secrets.token_hex(4)
    if not valid_uid(uid):
        die(f"--uid {uid!r}: use 1-63 characters among a-z, 0-9 and _")
    logger = pgha_log.setup("proxy", args.log_level)
    try:
        store = store_from_args(args)
    except StoreError as exc:
        die(str(exc))
    upstream_tls = None
    if args.pg_tls_ca_file:
        try:
            upstream_tls = ssl.create_default_context(cafile=args.pg_tls_ca_file)
        except (OSError, ssl.SSLError) as exc:
            die(f"--pg-tls-ca-file {args.pg_tls_ca_file}: {getattr(exc, 'strerror', None) or exc}")
    factory, loop_name = loop_factory(args.event_loop)
    open_files = raise_open_files_limit()
    max_connections = args.max_connections
    room = (open_files - 64) // 2  # each relayed client holds two descriptors
    if not max_connections:
        max_connections = max(room, 1)
    elif max_connections > room:
        logger.warning("the open files limit (%d) allows about %d client connections: --max-connections %d "
                       "instead of %d", open_files, room, room, max_connections)
        max_connections = max(room, 1)
    agent = ProxyAgent(store, keys(args.store_prefix, args.cluster_name), uid,
                       listen_address=args.listen_address, port=args.port, ro_port=args.ro_port,
                       api_address=args.api_listen_address or args.listen_address, api_port=args.api_port,
                       reuse_port=args.reuse_port, upstream_tls=upstream_tls,
                       limits=Limits(max_connections, args.max_connections_per_source, args.startup_timeout),
                       advertise_address=args.advertise_address
                       or advertised_host(args.listen_address, args.store_endpoints.split(",")))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda s=sig: (logger.info("received %s: shutting down", s.name),
                                                        stop.set()))
        await agent.run(stop)

    logger.info("relaying with the %s event loop", loop_name)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run())
    except OSError as exc:
        logger.error("%s", exc.strerror or exc)
        sys.exit(1)
    finally:
        store.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
