# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""The crash of playbooks/failover_drill.yml on Kubernetes, against the kmock fake API server.

The orphan / delete / restore steps (playbooks/tasks/k8s_crash_primary.yml, then
k8s_restore_keepers.yml in `always:`, as tasks/drill_round_kubernetes.yml uses them) run on their
own through tests/kubernetes/playbooks/k8s_crash.yml, on the keepers' StatefulSet exactly as
site.yml applied it (the session's `site` run) plus the fields a real API server adds. What
kubernetes.core sends is read from the fake server's request log. kmock runs no controllers and no
pods: the rest of a round (the workload and the status reads inside a pod over the kubectl
connection, the failover, the rejoin) needs a cluster (molecule/kubernetes).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import NAMESPACE, OUTPUT, ROOT, run_site
from fakeapi import FakeApi

STS_PATH = f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets"
POD_PATH = f"/api/v1/namespaces/{NAMESPACE}/pods"
# What a real API server adds to what it was sent; the restore must not send these back.
SERVER_METADATA = {"uid": "6f1c2a8e-0000-4000-8000-000000000001", "resourceVersion": "4711", "generation": 2,
                   "creationTimestamp": "2026-11-27T06:00:00Z",
                   "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}]}


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The options a client set (the kubernetes client sends the others as null)."""
    return {k: v for k, v in options.items() if v is not None}


def statefulset(applied: list[dict[str, Any]]) -> dict[str, Any]:
    [sts] = [o for o in applied if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "main-keeper"]
    return sts


def as_served(obj: dict[str, Any]) -> dict[str, Any]:
    live = copy.deepcopy(obj)
    live["metadata"].update(copy.deepcopy(SERVER_METADATA))
    live["status"] = {"replicas": 3, "readyReplicas": 3, "currentRevision": "main-keeper-5d4f8"}
    return live


def keeper_pod(sts: dict[str, Any], i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"main-keeper-{i}", "namespace": NAMESPACE,
                         "uid": f"0c0ffee0-0000-4000-8000-00000000000{i}",
                         "labels": copy.deepcopy(sts["spec"]["template"]["metadata"]["labels"]),
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "main-keeper",
                                              "uid": SERVER_METADATA["uid"], "controller": True}]},
            "spec": copy.deepcopy(sts["spec"]["template"]["spec"]),
            "status": {"phase": "Running"}}


def crash_playbook(kubeconfig: str, pod: str, name: str) -> dict[str, Any]:
    """Run tests/kubernetes/playbooks/k8s_crash.yml on ``pod``; its log goes to tests/output."""
    env = dict(os.environ, KUBECONFIG=kubeconfig, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                           "tests/kubernetes/playbooks/k8s_crash.yml",
                           "-e", f"drill_k8s_namespace={NAMESPACE}", "-e", f"drill_k8s_pod={pod}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    log = OUTPUT / f"drill-{name}.log"
    log.write_text(proc.stdout + "\n--- stderr\n" + proc.stderr)
    return {"rc": proc.returncode, "stdout": proc.stdout, "log": str(log)}


def run_crash(applied: list[dict[str, Any]], tmp: Path, pod: str, name: str,
              fail_pod_delete: bool = False) -> dict[str, Any]:
    """Put the keepers' StatefulSet and pods (and an etcd pod) in a fresh fake API server, run the
    crash playbook on ``pod`` and return its result, the calls that change something, in order, and
    the objects left."""
    sts = statefulset(applied)
    with FakeApi() as api:
        kubeconfig = api.write_kubeconfig(str(tmp / "config"), NAMESPACE)
        api.create(as_served(sts))
        for i in range(3):
            api.create(keeper_pod(sts, i))
        api.create({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "main-etcd-0", "namespace": NAMESPACE,
                                 "labels": {"pgha.io/cluster": "main", "pgha.io/component": "etcd"}},
                    "spec": {"containers": [{"name": "etcd", "image": "pgha"}]}})
        if fail_pod_delete:
            api.answer("delete", "", "v1", "pods", 500)
        start = len(api.requests())
        run = crash_playbook(kubeconfig, pod, name)
        run["calls"] = [r for r in api.requests()[start:] if r["method"] not in ("GET", "HEAD")]
        run["objects"] = api.objects()
    run["sts"] = sts
    return run


@pytest.fixture(scope="module")
def crashed(applied: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_crash(applied, tmp_path_factory.mktemp("crash"), "main-keeper-1", "crash")


def test_the_crash_orphans_the_statefulset_deletes_the_pod_then_restores_the_statefulset(crashed: dict[str, Any]) -> None:
    assert crashed["rc"] == 0, crashed["log"]
    assert [(c["method"], c["path"]) for c in crashed["calls"]] == [
        ("DELETE", f"{STS_PATH}/main-keeper"),
        ("DELETE", f"{POD_PATH}/main-keeper-1"),
        ("POST", STS_PATH),
    ]


def test_the_statefulset_is_deleted_with_propagation_policy_orphan(crashed: dict[str, Any]) -> None:
    options = crashed["calls"][0]["data"]
    assert options["kind"] == "DeleteOptions"
    assert options["propagationPolicy"] == "Orphan"
    # refused by the API if the StatefulSet changed since its manifest was kept
    assert given(options["preconditions"]) == {"resourceVersion": SERVER_METADATA["resourceVersion"]}


def test_the_primary_pod_is_deleted_with_grace_period_0(crashed: dict[str, Any]) -> None:
    options = crashed["calls"][1]["data"]
    assert options["kind"] == "DeleteOptions"
    assert options["gracePeriodSeconds"] == 0
    assert given(options["preconditions"]) == {"uid": "0c0ffee0-0000-4000-8000-000000000001"}


def test_the_statefulset_comes_back_as_the_keeper_role_applied_it(crashed: dict[str, Any]) -> None:
    sts = crashed["sts"]
    created = crashed["calls"][2]["data"]
    assert created["spec"] == sts["spec"]
    assert created["metadata"]["labels"] == sts["metadata"]["labels"]
    # the keeper role's apply annotation is kept, so the next site.yml compares against what it rendered
    assert created["metadata"]["annotations"] == sts["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in created["metadata"]["annotations"]
    assert not set(created["metadata"]) & set(SERVER_METADATA)
    assert "status" not in created
    objects = crashed["objects"]
    assert objects[("apps/v1", "StatefulSet", NAMESPACE, "main-keeper")]["spec"] == sts["spec"]
    pods = {k[3] for k in objects if k[1] == "Pod"}
    assert pods == {"main-keeper-0", "main-keeper-2", "main-etcd-0"}


@pytest.mark.parametrize("pod", ["main-etcd-0", "main-keeper-7"])
def test_a_pod_that_is_not_a_keeper_of_the_statefulset_is_refused_and_nothing_is_deleted(
        applied: list[dict[str, Any]], tmp_path: Path, pod: str) -> None:
    run = run_crash(applied, tmp_path, pod, f"refused-{pod}")
    assert run["rc"] != 0, run["log"]
    assert "nothing was deleted" in run["stdout"]
    assert run["calls"] == []


def test_a_failed_pod_delete_still_restores_the_statefulset(applied: list[dict[str, Any]], tmp_path: Path) -> None:
    run = run_crash(applied, tmp_path, "main-keeper-1", "pod-delete-fails", fail_pod_delete=True)
    assert run["rc"] != 0, run["log"]
    assert [(c["method"], c["path"]) for c in run["calls"]] == [
        ("DELETE", f"{STS_PATH}/main-keeper"),
        ("DELETE", f"{POD_PATH}/main-keeper-1"),
        ("POST", STS_PATH),
    ]
    assert run["objects"][("apps/v1", "StatefulSet", NAMESPACE, "main-keeper")]["spec"] == run["sts"]["spec"]


def test_site_yml_after_a_drill_changes_nothing(tmp_path: Path) -> None:
    """The restored StatefulSet keeps the keeper role's last-applied annotation: the next site.yml
    run finds nothing to change."""
    with FakeApi() as api:
        kubeconfig = api.write_kubeconfig(str(tmp_path / "config"), NAMESPACE)
        first = run_site(kubeconfig, [], "drill-1-site")
        assert first["rc"] == 0, first["log"]
        sts = api.objects()[("apps/v1", "StatefulSet", NAMESPACE, "main-keeper")]
        for i in range(3):
            api.create(keeper_pod(sts, i))
        crash = crash_playbook(kubeconfig, "main-keeper-1", "between-site-runs")
        assert crash["rc"] == 0, crash["log"]
        after = run_site(kubeconfig, [], "drill-2-site-after-the-drill")
    assert after["rc"] == 0, after["log"]
    assert after["changed"] == 0, f"site.yml changed something after the drill, see {after['log']}"


def test_freeze_is_refused_on_kubernetes_with_a_message(tmp_path: Path) -> None:
    env = dict(os.environ, KUBECONFIG=str(tmp_path / "none"), ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "inventory/kubernetes.yml",
                           "playbooks/failover_drill.yml", "-e", "drill_mode=freeze"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    said = " ".join(proc.stdout.split())  # the callback wraps long messages
    assert "drill_mode=freeze needs the local platform" in said
    assert "On Kubernetes use drill_mode=crash" in said
