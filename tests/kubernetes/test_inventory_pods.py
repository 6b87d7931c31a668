# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""The pgha.cluster.members inventory plugin with source: kubernetes, against kmock serving pods."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeApi

ROOT = Path(__file__).resolve().parents[2]


def pod(name: str, component: str, role: str | None = None, cluster: str = "main", ready: bool = True) -> dict[str, Any]:
    labels = {"pgha.io/cluster": cluster, "pgha.io/component": component}
    if role:
        labels["pgha.io/role"] = role
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "db", "labels": labels},
            "spec": {"nodeName": "node1", "containers": [{"name": component, "image": "pgha"}]},
            "status": {"phase": "Running", "podIP": "10.1.0.%d" % (len(name) % 200),
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("inv")
    with FakeApi() as api:
        kubeconfig = api.write_kubeconfig(str(tmp / "config"))
        for p in [pod("main-keeper-0", "keeper", "replica"), pod("main-keeper-1", "keeper", "primary"),
                  pod("main-keeper-2", "keeper", None, ready=False), pod("main-sentinel-5d8-abc", "sentinel"),
                  pod("main-proxy-7f9-xyz", "proxy"), pod("main-etcd-0", "etcd"),
                  pod("other-keeper-0", "keeper", "primary", cluster="other")]:
            api.create(p)
        config = tmp / "k8s.pgha.yml"
        config.write_text("plugin: pgha.cluster.members\nsource: kubernetes\ncluster_name: main\nnamespace: db\n"
                          f"kubeconfig: {kubeconfig}\n"
                          "keyed_groups:\n  - key: pgha_node\n    prefix: node\n")
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_INVENTORY_ENABLED="pgha.cluster.members", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
        proc = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(config), "--list"],
                              env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def plain(value: Any) -> Any:
    """ansible-inventory shows the values the plugin marked unsafe as {"__ansible_unsafe": value}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    return value


def hosts(inv: dict[str, Any], group: str) -> list[str]:
    return sorted(inv.get(group, {}).get("hosts", []))


def test_every_pod_of_the_cluster_is_a_host_grouped_by_component(inventory: dict[str, Any]) -> None:
    assert hosts(inventory, "pgha_keepers") == ["main-keeper-0", "main-keeper-1", "main-keeper-2"]
    assert hosts(inventory, "pgha_sentinels") == ["main-sentinel-5d8-abc"]
    assert hosts(inventory, "pgha_proxies") == ["main-proxy-7f9-xyz"]
    assert hosts(inventory, "pgha_etcd") == ["main-etcd-0"]
    assert "other-keeper-0" not in inventory["_meta"]["hostvars"]


def test_the_live_role_label_makes_the_role_groups(inventory: dict[str, Any]) -> None:
    assert hosts(inventory, "pgha_primary") == ["main-keeper-1"]
    assert hosts(inventory, "pgha_replica") == ["main-keeper-0"]


def test_hosts_are_reached_with_kubectl_in_their_pod_and_container(inventory: dict[str, Any]) -> None:
    hv = plain(inventory["_meta"]["hostvars"]["main-keeper-1"])
    assert hv["ansible_connection"] == "kubernetes.core.kubectl"
    assert (hv["ansible_kubectl_pod"], hv["ansible_kubectl_namespace"], hv["ansible_kubectl_container"]) == (
        "main-keeper-1", "db", "keeper")
    assert hv["ansible_kubectl_kubeconfig"].endswith("config")
    assert hv["pgha_uid"] == "main_keeper_1" and hv["pgha_role"] == "primary" and hv["pgha_ready"] is True
    assert plain(inventory["_meta"]["hostvars"]["main-keeper-2"])["pgha_ready"] is False
    assert hosts(inventory, "node_node1")  # constructed options apply
