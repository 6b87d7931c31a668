# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""A fake Kubernetes API server for tests: kmock's in-memory emulator on loopback.

kmock stores what clients create, patch and delete and serves it back (discovery from its bundled
resource list); it runs no controllers, so nothing ever becomes ready. Good for checking which
objects kubernetes.core sends, not how a cluster behaves.

    with FakeApi() as api:
        api.write_kubeconfig(path)
        ... run ansible-playbook with KUBECONFIG=path ...
        api.objects()  # {(api_version, kind, namespace, name): object}
"""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import kmock


class FakeApi:
    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.emulator: Any = None

    def __enter__(self) -> "FakeApi":
        self._thread = threading.Thread(target=self._run, name="fake-k8s-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the fake Kubernetes API did not start within 30 s")
        if self._error:
            raise RuntimeError("the fake Kubernetes API failed to start") from self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def _call(self, fn: Any) -> Any:
        """Run fn() on the server's loop (the emulator is not thread safe)."""
        assert self._loop is not None

        async def wrapper() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    def write_kubeconfig(self, path: str, namespace: str = "default") -> str:
        with open(path, "w") as f:
            f.write(
                "apiVersion: v1\nkind: Config\n"
                f"clusters: [{{name: fake, cluster: {{server: \"{self.url}\"}}}}]\n"
                "users: [{name: fake, user: {token: fake-token}}]\n"
                f"contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: {namespace}}}}}]\n"
                "current-context: fake\n")
        return path

    def objects(self) -> dict[tuple[str, str, str, str], dict[str, Any]]:
        """Every live object: {(apiVersion, kind, namespace, name): object}."""
        def collect() -> dict[tuple[str, str, str, str], dict[str, Any]]:
            out = {}
            for (_resource, namespace, name), obj in self.emulator.objects.items():
                if obj.deleted:
                    continue
                raw = copy.deepcopy(obj.raw)
                out[(raw.get("apiVersion", ""), raw.get("kind", ""), namespace or "", name)] = raw
            return out
        return self._call(collect)

    def requests(self) -> list[dict[str, Any]]:
        """Every request the server received so far, in order: {method, path, params, data} (data: the
        parsed JSON body, e.g. the DeleteOptions of a DELETE)."""
        def collect() -> list[dict[str, Any]]:
            return [{"method": str(r.method.value if hasattr(r.method, "value") else r.method).upper(),
                     "path": r.url.path, "params": dict(r.params), "data": copy.deepcopy(r.data)}
                    for r in self.emulator]
        return self._call(collect)

    def answer(self, action: str, group: str, version: str, plural: str, status: int) -> None:
        """Answer every later ``action`` (create, update, delete...) on ``plural`` with an HTTP error
        ``status``. The emulator still applies the change, as a server that failed after acting would."""
        def add() -> None:
            self.emulator[kmock.action(action), kmock.resource(group, version, plural)] << status
        self._call(add)

    def create(self, obj: dict[str, Any]) -> None:
        """Put an object in place as if a controller had made it (for example a pod)."""
        import json
        import urllib.request
        group_version = obj["apiVersion"]
        plural = obj["kind"].lower() + "s"
        base = "/api/v1" if group_version == "v1" else "/apis/" + group_version
        ns = obj["metadata"].get("namespace")
        path = f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
        req = urllib.request.Request(self.url + path, data=json.dumps(obj).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
