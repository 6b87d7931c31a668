# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""pgha.cluster.k8s_container: a component definition becomes a container."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

spec = importlib.util.spec_from_file_location(
    "pgha_k8s_filter", Path(__file__).resolve().parents[2] / "plugins" / "filter" / "k8s.py")
k8s = importlib.util.module_from_spec(spec)
spec.loader.exec_module(k8s)

KEEPER = {
    "name": "keeper", "component": "keeper", "command": "/opt/pgha/venv/bin/pgha-keeper",
    "args": ["--uid", "keeper", "--pg-port", "5433", "--uid=x", "--api-port", "8433"],
    "environment": {"PGHA_STORE_PREFIX": "pgha", "PGHA_CLUSTER_NAME": "main"},
    "ports": [{"name": "pg", "port": 5433}, {"name": "api", "port": 8433}],
    "health": {"port": 8433, "path": "/health"}, "stop_signal": "TERM", "stop_wait": 60,
}


def test_the_command_line_is_the_definitions_without_the_per_pod_flags() -> None:
    c = k8s.k8s_container(KEEPER, "img", entrypoint="/usr/local/bin/pgha-entrypoint", pod_flags=["--uid"])
    assert c["command"] == ["/usr/local/bin/pgha-entrypoint", "/opt/pgha/venv/bin/pgha-keeper"]
    assert c["args"] == ["--pg-port", "5433", "--api-port", "8433"]
    assert c["name"] == "keeper" and c["image"] == "img"


def test_env_has_the_downward_api_first_then_the_definitions_environment() -> None:
    env = k8s.k8s_container(KEEPER, "img")["env"]
    assert [e["name"] for e in env] == ["POD_NAME", "POD_NAMESPACE", "POD_IP", "PGHA_CLUSTER_NAME", "PGHA_STORE_PREFIX"]


def test_ports_and_probes_use_the_port_names() -> None:
    c = k8s.k8s_container(KEEPER, "img", liveness={"port": 8433, "path": "/metrics"})
    assert c["ports"] == [{"name": "pg", "containerPort": 5433, "protocol": "TCP"},
                          {"name": "api", "containerPort": 8433, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "api"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "api"}
    tcp = k8s.k8s_container(KEEPER, "img", liveness={"port": 5433})
    assert tcp["livenessProbe"]["tcpSocket"] == {"port": "pg"}


def test_a_health_check_on_an_undeclared_port_is_refused() -> None:
    with pytest.raises(AnsibleFilterError, match="not one of its ports"):
        k8s.k8s_container(dict(KEEPER, health={"port": 9999, "path": "/health"}), "img")


def test_a_stop_signal_other_than_term_is_refused() -> None:
    with pytest.raises(AnsibleFilterError, match="SIGTERM"):
        k8s.k8s_container(dict(KEEPER, stop_signal="INT"), "img")


@pytest.mark.parametrize("value,expected", [("main", "main"), ("my_db", "my-db"), ("Prod_1", "prod-1")])
def test_k8s_name(value: str, expected: str) -> None:
    assert k8s.k8s_name(value) == expected


def test_k8s_agent_pods_selects_the_clusters_components() -> None:
    assert k8s.k8s_agent_pods("main", ["keeper", "proxy"]) == {"podSelector": {
        "matchLabels": {"pgha.io/cluster": "main"},
        "matchExpressions": [{"key": "pgha.io/component", "operator": "In", "values": ["keeper", "proxy"]}]}}
