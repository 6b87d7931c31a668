"""Label a keeper's pod with the keeper's live role, so Kubernetes can follow it.

On Kubernetes ``pgha-labeller``, a container of its own in each keeper pod, sets
``pgha.io/role=primary|replica`` on the pod from what the keeper reports at ``/health`` on loopback
(the label is removed while it is neither): the ``<cluster>-ro`` Service selects the replicas by it,
and the inventory plugin groups pods by it. Only that container mounts the service-account token;
the keeper and PostgreSQL never see it. Standard library only: the pod's service-account token and CA, one JSON
merge patch of the pod's labels (``PATCH /api/v1/namespaces/<ns>/pods/<name>``, the only API call
pgha makes: the keepers' Role grants ``patch`` on their own pods and nothing else).

Outside Kubernetes (no ``KUBERNETES_SERVICE_HOST``, no ``POD_NAME``, no token) nothing happens,
and one debug line says why. Labelling never blocks the caller: ``RoleLabels.observe()`` only
records the wanted role; a daemon thread sends it, retrying with a back-off until it lands or a
newer role replaces it.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

logger = logging.getLogger("pgha.kube")

ROLE_LABEL = "pgha.io/role"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
LABELLED_ROLES = ("primary", "replica")


class KubeError(Exception):
    """The API server refused or could not be reached."""


class PodClient:
    """PATCHes the labels of one pod: the one this process runs in."""

    def __init__(self, api_url: str, namespace: str, pod_name: str, token_file: str | None,
                 ca_file: str | None, timeout: float = 5.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.namespace = namespace
        self.pod_name = pod_name
        self.token_file = token_file
        self.ca_file = ca_file
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None,
                         sa_dir: str = SERVICE_ACCOUNT_DIR) -> "PodClient | None":
        """The client for this pod, or None (with the reason at debug level) outside Kubernetes."""
        env = os.environ if environ is None else environ
        host = env.get("KUBERNETES_SERVICE_HOST", "")
        port = env.get("KUBERNETES_SERVICE_PORT", "443")
        pod = env.get("POD_NAME", "")
        namespace = env.get("POD_NAMESPACE", "")
        token_file = os.path.join(sa_dir, "token")
        if not namespace:
            try:
                with open(os.path.join(sa_dir, "namespace")) as f:
                    namespace = f.read().strip()
            except OSError:
                namespace = ""
        missing = [what for what, ok in (("KUBERNETES_SERVICE_HOST", host), ("POD_NAME", pod),
                                         ("POD_NAMESPACE", namespace),
                                         (token_file, os.path.exists(token_file))) if not ok]
        if missing:
            logger.debug("not labelling the pod with its role: not in Kubernetes (missing %s)", ", ".join(missing))
            return None
        if ":" in host:  # IPv6
            host = f"[{host}]"
        ca_file = os.path.join(sa_dir, "ca.crt")
        return cls(f"https://{host}:{port}", namespace, pod, token_file, ca_file if os.path.exists(ca_file) else None)

    def _context(self) -> ssl.SSLContext | None:
        if not self.api_url.startswith("https://"):
            return None
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=self.ca_file)
        return self._ssl

    def patch_labels(self, labels: Mapping[str, str | None]) -> None:
        """Merge ``labels`` into the pod's labels; a None value removes that label."""
        path = "/api/v1/namespaces/{}/pods/{}".format(urllib.parse.quote(self.namespace, safe=""),
                                                      urllib.parse.quote(self.pod_name, safe=""))
        body = json.dumps({"metadata": {"labels": dict(labels)}}).encode()
        headers = {"Content-Type": "application/merge-patch+json", "Accept": "application/json"}
        if self.token_file:
            try:
                with open(self.token_file) as f:  # read each time: the kubelet rotates it
                    headers["Authorization"] = "Bearer " + f.read().strip()
            except OSError as exc:
                raise KubeError(f"cannot read the service account token {self.token_file}: {exc.strerror}") from exc
        req = urllib.request.Request(self.api_url + path, data=body, method="PATCH", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._context()) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode(errors="replace").strip()
            raise KubeError(f"PATCH pod {self.namespace}/{self.pod_name}: HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise KubeError(f"PATCH pod {self.namespace}/{self.pod_name}: {reason}") from exc


class RoleLabels:
    """Keeps the pod's ``pgha.io/role`` label equal to the last role observed.

    ``observe()`` is cheap, thread safe and never blocks on the network; the first call looks at the
    environment and, in Kubernetes, starts the thread that sends the labels.
    """

    def __init__(self, client: PodClient | None = None, retry_min: float = 0.5, retry_max: float = 30.0,
                 environ: Mapping[str, str] | None = None) -> None:
        self._client = client
        self._environ = environ
        self._resolved = client is not None
        self._lock = threading.Condition()
        self._wanted: str | None = None  # label value (None: no label)
        self._have_wanted = False
        self._sent: tuple[bool, str | None] = (False, None)  # (sent at least once, value)
        self._thread: threading.Thread | None = None
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.patches = 0  # successful PATCHes, for tests and metrics

    @staticmethod
    def label_value(role: str) -> str | None:
        return role if role in LABELLED_ROLES else None

    def observe(self, role: str) -> None:
        try:
            self._observe(role)
        except Exception:  # noqa: BLE001 - labelling must never break the caller's loop
            logger.exception("pod labelling failed; the keeper carries on")

    def _observe(self, role: str) -> None:
        value = self.label_value(role)
        with self._lock:
            if not self._resolved:
                self._resolved = True
                self._client = PodClient.from_environment(self._environ)
            if self._client is None:
                return
            if self._have_wanted and self._wanted == value:
                return
            self._wanted, self._have_wanted = value, True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pod-labels", daemon=True)
                self._thread.start()
            self._lock.notify_all()

    def wait_sent(self, value: str | None, timeout: float) -> bool:
        """For tests: wait until ``value`` has been sent."""
        with self._lock:
            return self._lock.wait_for(lambda: self._sent == (True, value), timeout)

    def _run(self) -> None:
        assert self._client is not None
        delay = self.retry_min
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._sent != (True, self._wanted))
                value = self._wanted
            try:
                self._client.patch_labels({ROLE_LABEL: value})
            except KubeError as exc:
                logger.warning("cannot label our pod %s=%s (retrying in %.1fs): %s", ROLE_LABEL, value, delay, exc)
                with self._lock:
                    self._lock.wait(delay)  # a newer role wakes us at once
                delay = min(self.retry_max, delay * 2)
                continue
            delay = self.retry_min
            with self._lock:
                self._sent = (True, value)
                self.patches += 1
                self._lock.notify_all()
            logger.info("labelled our pod %s=%s", ROLE_LABEL, value if value is not None else "(removed)")


# ------------------------------------------------------------------------------------------------
# pgha-labeller: the labelling in a container of its own, so that the service-account token is not
# in the container that runs PostgreSQL and the keeper.

def role_from_health(status: int, body: bytes) -> str:
    """The keeper's role from its /health answer: 'primary' or 'replica' when healthy, else 'none'."""
    if status != 200:
        return "none"
    try:
        doc = json.loads(body)
    except ValueError:
        return "none"
    role = doc.get("role") if isinstance(doc, dict) and doc.get("healthy") is True else None
    return role if isinstance(role, str) else "none"


def read_role(health_url: str, timeout: float = 2.0) -> str:
    """GET the keeper's /health; 'none' when it does not answer."""
    try:
        with urllib.request.urlopen(health_url, timeout=timeout) as resp:
            return role_from_health(resp.status, resp.read(4096))
    except urllib.error.HTTPError as exc:
        return role_from_health(exc.code, b"")
    except (urllib.error.URLError, OSError, ValueError):
        return "none"


def label_loop(health_url: str, labels: RoleLabels, stop: threading.Event, interval: float = 0.5) -> None:
    """Until ``stop``: read the keeper's role every ``interval`` seconds and keep the label equal to it."""
    last = None
    while not stop.is_set():
        role = read_role(health_url)
        if role != last:
            logger.info("keeper role %s", role)
            last = role
        labels.observe(role)
        stop.wait(interval)


def labeller_main(argv: list[str] | None = None) -> None:
    import argparse
    import signal

    from pgha import log as pgha_log

    p = argparse.ArgumentParser(
        prog="pgha-labeller",
        description="Keep this pod's pgha.io/role label equal to the role its keeper reports at /health. "
                    "Runs in a container of the keeper's pod that alone holds the service-account token "
                    "(the keeper's Role allows patching its own pod and nothing else).")
    p.add_argument("--keeper-api", default=os.environ.get("PGHA_KEEPER_API", "http://127.0.0.1:8008"),
                   help="base URL of the keeper's HTTP API in this pod (env PGHA_KEEPER_API)")
    p.add_argument("--interval", type=float, default=float(os.environ.get("PGHA_LABELLER_INTERVAL", "0.5")),
                   help="seconds between two reads of the keeper's role (env PGHA_LABELLER_INTERVAL)")
    p.add_argument("--log-level", default=os.environ.get("PGHA_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    args = p.parse_args(argv)
    if not 0.05 <= args.interval <= 60:
        p.error(f"--interval must be between 0.05 and 60 seconds, got {args.interval}")
    pgha_log.setup("labeller", args.log_level)
    client = PodClient.from_environment()
    if client is None:
        logger.error("not in a Kubernetes pod with a service-account token: nothing to label")
        raise SystemExit(1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logger.info("labelling pod %s/%s from %s every %.2fs", client.namespace, client.pod_name, args.keeper_api,
                args.interval)
    label_loop(args.keeper_api.rstrip("/") + "/health", RoleLabels(client), stop, args.interval)
