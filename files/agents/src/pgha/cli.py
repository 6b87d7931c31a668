"""Command-line conventions shared by the four programs.

Every flag can also be given as an environment variable ``PGHA_<FLAG_IN_UPPER_SNAKE_CASE>``
(``--store-endpoints`` -> ``PGHA_STORE_ENDPOINTS``); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pgha.store import Store, open_store


def env_name(flag: str) -> str:
    return "PGHA_" + flag.lstrip("-").upper().replace("-", "_")


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class EnvParser(argparse.ArgumentParser):
    """ArgumentParser whose options default to their PGHA_* environment variable."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        argv = sys.argv[1:] if args is None else list(args)
        if self._subparsers is None:
            # name a misspelt flag first, rather than complaining about the required ones it hides
            unknown = [a.split("=", 1)[0] for a in argv
                       if a.startswith("--") and a.split("=", 1)[0] not in self._option_string_actions]
            if unknown:
                self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return super().parse_args(argv, namespace)

    def add_flag(self, flag: str, *, required: bool = False, default: Any = None, help: str = "",
                 **kw: Any) -> None:
        env = env_name(flag)
        env_value = os.environ.get(env)
        if env_value is not None:
            typ = kw.get("type")
            try:
                default = typ(env_value) if typ else env_value
            except (argparse.ArgumentTypeError, ValueError) as exc:
                self.error(f"environment variable {env}: {exc}")
            required = False
        shown = f" (env {env}" + (f"; default {default})" if default not in (None, "") else ")")
        self.add_argument(flag, required=required, default=default, help=help + shown, **kw)


def common_parser(prog: str, description: str, epilog: str | None = None, *,
                  require_cluster: bool = True) -> EnvParser:
    p = EnvParser(prog=prog, description=description, epilog=epilog,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, require_cluster)
    return p


def add_common_flags(p: EnvParser, require_cluster: bool = True) -> None:
    p.add_flag("--cluster-name", required=require_cluster, help="name of the cluster")
    p.add_flag("--store-endpoints", default="http://127.0.0.1:2379",
               help="comma-separated etcd v3 endpoints, http(s)://host:port; tried in order")
    p.add_flag("--store-prefix", default="pgha", help="key prefix in the store")
    p.add_flag("--store-ca-file", help="CA certificate for TLS to etcd")
    p.add_flag("--store-cert-file", help="client certificate for TLS to etcd")
    p.add_flag("--store-key-file", help="client key for TLS to etcd")
    p.add_flag("--store-user", help="etcd user (etcd authentication on): this component's own, which may write "
                                    "only what the component writes")
    p.add_flag("--store-password-file", help="file holding the etcd user's password (never give the password "
                                             "itself on the command line)")
    p.add_flag("--store-insecure", type=parse_bool, default=False,
               help="allow http:// store endpoints: no TLS, so whoever reaches etcd reads and writes the cluster "
                    "(for tests, benchmarks, or an etcd only trusted hosts can reach)")
    p.add_flag("--store-timeout", type=float, default=2.0, help="seconds before a store request fails")
    p.add_flag("--log-level", default="info", choices=["debug", "info", "warning", "error"],
               help="log verbosity")


def suppressed_common_flags() -> argparse.ArgumentParser:
    """The common flags with no defaults, for subcommands: given after the subcommand they override,
    absent they leave the main parser's values alone."""
    p = EnvParser(add_help=False)
    tmp = EnvParser(add_help=False)
    add_common_flags(tmp, require_cluster=False)
    for action in tmp._actions:
        if not action.option_strings:
            continue
        p.add_argument(*action.option_strings, dest=action.dest, default=argparse.SUPPRESS,
                       type=action.type, choices=action.choices, help=argparse.SUPPRESS)
    return p


def read_secret_file(path: str, what: str) -> str:
    """The first line of a secret file. Raises StoreError naming the flag when it cannot be read."""
    from pgha.store import StoreError

    try:
        with open(path, encoding="utf-8") as f:
            value = f.readline().rstrip("\r\n")
    except OSError as exc:
        raise StoreError(f"{what} {path}: {exc.strerror or exc}") from None
    if not value:
        raise StoreError(f"{what} {path}: the file is empty")
    return value


def store_from_args(args: argparse.Namespace) -> Store:
    """The store the common flags name. Raises StoreError with a clear message."""
    from pgha.store import StoreError

    plain = [e.strip() for e in args.store_endpoints.split(",") if e.strip().lower().startswith("http://")]
    if plain and not getattr(args, "store_insecure", False):
        raise StoreError(f"--store-endpoints {', '.join(plain)}: plain HTTP, without TLS whoever reaches etcd can "
                         "make any keeper primary; use https:// (--store-ca-file, --store-cert-file, "
                         "--store-key-file), or say so with --store-insecure (env PGHA_STORE_INSECURE=true)")
    password = None
    if getattr(args, "store_password_file", None):
        password = read_secret_file(args.store_password_file, "--store-password-file")
    return open_store(args.store_endpoints, ca_file=args.store_ca_file, cert_file=args.store_cert_file,
                      key_file=args.store_key_file, timeout=args.store_timeout,
                      user=getattr(args, "store_user", None), password=password)


def store_or_die(args: argparse.Namespace) -> Store:
    """store_from_args, or exit 1 with its message (a program's start)."""
    from pgha.store import StoreError

    try:
        return store_from_args(args)
    except StoreError as exc:
        die(str(exc))


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (systemd's default soft limit
    is 1024: a flood of idle sockets would stop the agent accepting); returns the limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def die(message: str, code: int = 1) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
