# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""pgha.cluster.*_components: the component definitions, built from explicit inputs."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.pgha.cluster.plugins.filter import components as c

ENV = {"PGHA_CLUSTER_NAME": "main"}
PROXY = {"venv_dir": "/opt/pgha/venv", "listen_address": "10.0.0.1", "advertise_address": "10.0.0.1",
         "api_listen_address": "10.0.0.1", "workers": 2, "extra_args": [], "environment": ENV}
KEEPER = {"venv_dir": "/v", "data_root": "/d", "pg_bin_path": "/pg", "pg_listen_address": "0.0.0.0",
          "pg_advertise_address": "$(POD_IP)", "api_listen_address": "$(POD_IP)", "su_username": "postgres",
          "su_password_file": "/s/su", "repl_username": "replicator", "repl_password_file": "/s/repl",
          "can_be_master": "true", "extra_args": ["--log-level", "debug"], "environment": ENV}


def test_proxy_workers_share_the_client_ports_and_each_has_its_own_api_port():
    out = c.proxy_components([{"uid": "proxy1", "port": 25432, "ro_port": 25433, "api_port": 25434}], PROXY)
    assert [p["name"] for p in out] == ["proxy1", "proxy1_w2"]
    first, second = out
    assert [(p["name"], p["port"], p["shared_with"]) for p in first["ports"][:2]] == [
        ("rw", 25432, ["proxy1_w2"]), ("ro", 25433, ["proxy1_w2"])]
    assert [(p["name"], p["port"]) for p in second["ports"]] == [("api", 25435)]
    assert "--reuse-port" in first["args"] and second["health"] == {"port": 25435, "path": "/health"}
    assert "--advertise-address" not in first["args"]  # the same as the listen address
    assert second["description"] == "pgha proxy proxy1_w2 (worker 2 of 2 sharing the ports of proxy1)"


def test_one_proxy_worker_without_a_read_only_port_advertising_another_address():
    out = c.proxy_components([{"uid": "proxy", "port": 5432, "ro_port": 0, "api_port": 8080, "workers": 1}],
                             dict(PROXY, listen_address="0.0.0.0", advertise_address="$(POD_IP)"))
    assert len(out) == 1
    assert out[0]["args"] == ["--uid", "proxy", "--listen-address", "0.0.0.0", "--port", "5432",
                              "--advertise-address", "$(POD_IP)", "--api-listen-address", "10.0.0.1",
                              "--api-port", "8080"]
    assert [p["name"] for p in out[0]["ports"]] == ["rw", "api"]


def test_proxy_limits_become_flags_and_unknown_ones_are_refused():
    limits = {"max_connections": 10, "startup_timeout": 2.5, "max_connections_per_source": 3}
    out = c.proxy_components([{"uid": "p", "port": 1, "ro_port": 0, "api_port": 2, "workers": 1}],
                             dict(PROXY, limits=limits))
    assert out[0]["args"][-6:] == ["--max-connections", "10", "--max-connections-per-source", "3",
                                   "--startup-timeout", "2.5"]
    with pytest.raises(AnsibleFilterError, match="unknown key 'max_conns'"):
        c.proxy_components([{"uid": "p", "port": 1, "ro_port": 0, "api_port": 2}], dict(PROXY, limits={"max_conns": 1}))


def test_proxy_workers_below_one_are_refused():
    with pytest.raises(AnsibleFilterError, match="workers"):
        c.proxy_components([{"uid": "p", "port": 1, "ro_port": 0, "api_port": 2, "workers": 0}], PROXY)


def test_keeper_command_line_and_per_keeper_can_be_master():
    out = c.keeper_components([{"uid": "k1", "pg_port": "5433", "api_port": 8433},
                               {"uid": "k2", "pg_port": 5434, "api_port": 8434, "can_be_master": False}], KEEPER)
    assert out[0]["args"][:4] == ["--uid", "k1", "--data-dir", "/d/k1"]
    assert out[0]["args"][-4:] == ["--can-be-master", "true", "--log-level", "debug"]
    assert "false" in out[1]["args"] and out[1]["ports"][0] == {
        "name": "pg", "port": 5434, "address": "0.0.0.0", "var": "keeper_pg_port (keeper k2)"}
    with pytest.raises(AnsibleFilterError, match="can_be_master"):
        c.keeper_components([{"uid": "k", "pg_port": 1, "api_port": 2}], dict(KEEPER, can_be_master="maybe"))


def test_keeper_application_role_and_tls_flags_only_when_set():
    out = c.keeper_components([{"uid": "k1", "pg_port": 5433, "api_port": 8433}], dict(
        KEEPER, app_username="app", app_password_file="/s/app", app_database="", tls_cert_file="/t/host.crt",
        tls_key_file="/t/host.key", tls_ca_file="/t/ca.crt"))
    args = out[0]["args"]
    assert args[args.index("--can-be-master") + 2:-2] == [
        "--pg-app-username", "app", "--pg-app-password-file", "/s/app", "--pg-tls-cert-file", "/t/host.crt",
        "--pg-tls-key-file", "/t/host.key", "--pg-tls-ca-file", "/t/ca.crt"]
    plain = c.keeper_components([{"uid": "k1", "pg_port": 5433, "api_port": 8433}], dict(KEEPER, tls_cert_file=""))
    assert not [a for a in plain[0]["args"] if a.startswith(("--pg-app", "--pg-tls", "--backup"))]
    repo = c.keeper_components([{"uid": "k1", "pg_port": 5433, "api_port": 8433}], dict(KEEPER, backup_repo_path="/r"))
    assert repo[0]["args"][-4:-2] == ["--backup-repo-path", "/r"]


def test_missing_inputs_are_named():
    with pytest.raises(AnsibleFilterError, match="settings lack extra_args, environment"):
        c.sentinel_components([{"uid": "s"}], {"venv_dir": "/v"})
    with pytest.raises(AnsibleFilterError, match="must be a list"):
        c.sentinel_components([{"uid": "s"}], {"venv_dir": "/v", "extra_args": "--x", "environment": {}})


def test_etcd_members_and_initial_cluster():
    members = [{"name": "e0", "address": "a0", "client_port": 2379, "peer_port": 2380},
               {"name": "e1", "address": "a1", "client_port": 2379, "peer_port": 2380}]
    assert c.etcd_initial_cluster(members) == "e0=http://a0:2380,e1=http://a1:2380"
    out = c.etcd_components(members[:1], {
        "binary": "/usr/bin/etcd", "data_root": "/d", "listen_address": "0.0.0.0",
        "initial_cluster": c.etcd_initial_cluster(members), "token": "t", "heartbeat_interval": 100,
        "election_timeout": 1000, "quota_backend_bytes": 1, "extra_args": []})
    assert out[0]["args"][out[0]["args"].index("--advertise-client-urls") + 1] == "http://a0:2379"
    assert out[0]["args"][out[0]["args"].index("--listen-peer-urls") + 1] == "http://0.0.0.0:2380"
    assert out[0]["agent"] is False and out[0]["environment"] == {}
    # a member that comes back from a partition must not force an election (leases would lapse)
    assert "--pre-vote=true" in out[0]["args"]


def test_etcd_with_tls_and_a_metrics_port_is_probed_there():
    members = [{"name": "e0", "address": "a0", "client_port": 2379, "peer_port": 2380}]
    settings = {"binary": "/usr/bin/etcd", "data_root": "/d", "listen_address": "0.0.0.0",
                "initial_cluster": c.etcd_initial_cluster(members, True), "token": "t", "heartbeat_interval": 100,
                "election_timeout": 1000, "quota_backend_bytes": 1, "extra_args": [],
                "tls": {"ca_file": "/t/ca.crt", "cert_file": "/t/tls.crt", "key_file": "/t/tls.key"}}
    [plain] = c.etcd_components(members, settings)
    assert plain["health"] == {"port": 2379, "path": "/health"} and "--listen-metrics-urls" not in plain["args"]
    [member] = c.etcd_components(members, dict(settings, metrics_port=2381))
    args = member["args"]
    assert args[args.index("--listen-client-urls") + 1] == "https://0.0.0.0:2379"
    assert "--client-cert-auth=true" in args and "--peer-client-cert-auth=true" in args
    # the kubelet's probe has no client certificate: /health in plain HTTP on a port of its own
    assert args[args.index("--listen-metrics-urls") + 1] == "http://0.0.0.0:2381"
    assert member["health"] == {"port": 2381, "path": "/health"}
    assert [p["name"] for p in member["ports"]] == ["client", "peer", "metrics"]
