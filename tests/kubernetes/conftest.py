# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""Runs playbooks/site.yml with pgha_platform=kubernetes against the kmock fake API server.

Once per session: apply (run 1), apply again (run 2, must change nothing), then state absent
(run 3, with the volumes a real StatefulSet would have made put in place first). The objects the
fake server holds after each run are kept for the tests. Waiting, the in-pod verification and the
cluster initialization need a real cluster (molecule/kubernetes) and are off here; kmock cannot
create namespaces, so the namespace is not created either.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from fakeapi import FakeApi  # noqa: E402

NAMESPACE = "pgha-test"
OFFLINE_VARS = ["pgha_k8s_wait=false", "pgha_k8s_verify=false", "sentinel_manage_spec=false",
                "pgha_k8s_create_namespace=false", "pgha_k8s_namespace=" + NAMESPACE]
OUTPUT = ROOT / "tests" / "output" / "kubernetes"


def controller_dir(kubeconfig: str) -> Path:
    """The controller's CA and credentials of the runs against one fake API server (by default
    ~/.pgha/<namespace>.<cluster>): next to its kubeconfig."""
    return Path(kubeconfig).parent / "controller"


def run_site(kubeconfig: str, extra: list[str], name: str) -> dict[str, Any]:
    env = dict(os.environ, KUBECONFIG=kubeconfig, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "inventory/kubernetes.yml",
           "playbooks/site.yml"]
    for v in OFFLINE_VARS + ["pgha_controller_dir=" + str(controller_dir(kubeconfig))] + extra:
        cmd += ["-e", v]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{name}.log").write_text(proc.stdout + "\n--- stderr\n" + proc.stderr)
    recap = re.findall(r"^localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                       proc.stdout, re.M)
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
            "changed": int(recap[-1][1]) if recap else None, "log": str(OUTPUT / f"{name}.log")}


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    with FakeApi() as api:
        kubeconfig = api.write_kubeconfig(str(tmp_path_factory.mktemp("kube") / "config"), NAMESPACE)
        controller = controller_dir(kubeconfig)
        runs["apply"] = run_site(kubeconfig, [], "1-apply")
        runs["apply"]["objects"] = api.objects()
        runs["controller_files"] = {str(p.relative_to(controller)): p.stat().st_mode & 0o777
                                    for p in [controller, *controller.rglob("*")]}
        runs["rerun"] = run_site(kubeconfig, [], "2-rerun")
        runs["rerun"]["objects"] = api.objects()
        # What the StatefulSets' volumeClaimTemplates would have made on a real cluster.
        for sts in ("main-etcd", "main-keeper"):
            for i in range(3):
                api.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": f"data-{sts}-{i}", "namespace": NAMESPACE},
                            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
        runs["absent"] = run_site(kubeconfig, ["pgha_k8s_state=absent"], "3-absent")
        runs["controller_left"] = controller.exists()
        runs["absent"]["objects"] = api.objects()
    return runs


@pytest.fixture(scope="session")
def applied(site: dict[str, Any]) -> list[dict[str, Any]]:
    assert site["apply"]["rc"] == 0, f"site.yml failed, see {site['apply']['log']}"
    return list(site["apply"]["objects"].values())


CLIENT_PEERS = [{"namespaceSelector": {"matchLabels": {"team": "app"}}}]


@pytest.fixture(scope="session")
def applied_with_client_peers(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The objects of one apply with pgha_k8s_client_peers set (NetworkPolicies restrict the clients)."""
    import json

    with FakeApi() as api:
        kubeconfig = api.write_kubeconfig(str(tmp_path_factory.mktemp("kube-peers") / "config"), NAMESPACE)
        run = run_site(kubeconfig, [json.dumps({"pgha_k8s_client_peers": CLIENT_PEERS})], "4-client-peers")
        assert run["rc"] == 0, f"site.yml failed, see {run['log']}"
        return list(api.objects().values())
