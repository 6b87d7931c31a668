# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""The roles with pgha_platform=kubernetes against the kmock fake API server: what kubernetes.core
sends, that a rerun changes nothing, that state absent removes everything."""

from __future__ import annotations

from typing import Any

from conftest import NAMESPACE

EXPECTED = {
    ("ServiceAccount", "main-pgha"), ("ServiceAccount", "main-keeper"),
    ("Role", "main-keeper"), ("RoleBinding", "main-keeper"), ("Secret", "main-credentials"),
    ("Service", "main-etcd"), ("Service", "main-etcd-client"), ("StatefulSet", "main-etcd"),
    ("PodDisruptionBudget", "main-etcd"), ("NetworkPolicy", "main-etcd"),
    ("Service", "main-keeper"), ("Service", "main-ro"), ("StatefulSet", "main-keeper"),
    ("PodDisruptionBudget", "main-keeper"), ("NetworkPolicy", "main-keeper"),
    ("Deployment", "main-sentinel"), ("PodDisruptionBudget", "main-sentinel"), ("NetworkPolicy", "main-sentinel"),
    ("Service", "main-rw"), ("Deployment", "main-proxy"), ("PodDisruptionBudget", "main-proxy"),
    ("NetworkPolicy", "main-proxy"),
}


def by(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def test_the_first_run_applies_every_object_in_the_namespace(site: dict[str, Any], applied: list[dict[str, Any]]) -> None:
    assert {(o["kind"], o["metadata"]["name"]) for o in applied} == EXPECTED
    assert {o["metadata"]["namespace"] for o in applied} == {NAMESPACE}
    assert site["apply"]["changed"] and site["apply"]["changed"] > 0


def test_a_rerun_with_unchanged_variables_changes_nothing(site: dict[str, Any]) -> None:
    assert site["rerun"]["rc"] == 0, site["rerun"]["log"]
    assert site["rerun"]["changed"] == 0, f"the rerun changed something, see {site['rerun']['log']}"
    assert site["rerun"]["objects"].keys() == site["apply"]["objects"].keys()


def test_the_passwords_are_generated_kept_and_never_logged(site: dict[str, Any], applied: list[dict[str, Any]]) -> None:
    import base64
    data = by(applied, "Secret", "main-credentials")["data"]
    passwords = {k: base64.b64decode(v).decode() for k, v in data.items()}
    assert sorted(passwords) == ["pg_app_password", "pg_repl_password", "pg_su_password"]
    assert all(len(p) == 32 for p in passwords.values())
    # the rerun kept them
    rerun = [o for k, o in site["rerun"]["objects"].items() if k[1] == "Secret"][0]
    assert rerun["data"] == data
    for run in ("apply", "rerun", "absent"):
        for pw in passwords.values():
            assert pw not in site[run]["stdout"] and pw not in site[run]["stderr"]
    # nor in an annotation (client-side apply copies the whole object into last-applied-configuration)
    for run in ("apply", "rerun"):
        for obj in site[run]["objects"].values():
            annotations = str(obj.get("metadata", {}).get("annotations", {}))
            assert not [v for v in list(passwords.values()) + list(data.values()) if v in annotations], \
                f"a password in the annotations of {obj['kind']} {obj['metadata']['name']}"


def test_state_absent_removes_every_object_and_volume(site: dict[str, Any]) -> None:
    assert site["absent"]["rc"] == 0, site["absent"]["log"]
    assert site["absent"]["objects"] == {}


def test_the_keeper_pod_runs_the_keepers_component_definition(applied: list[dict[str, Any]]) -> None:
    pod = by(applied, "StatefulSet", "main-keeper")["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] != "labeller"]
    assert c["command"] == ["/usr/local/bin/pgha-entrypoint", "/opt/pgha/venv/bin/pgha-keeper"]
    args = dict(zip(c["args"][::2], c["args"][1::2]))
    # the uid comes from the pod (pgha-entrypoint: PGHA_UID from POD_NAME), addresses from the downward API
    assert "--uid" not in args
    assert args["--pg-advertise-address"] == "$(POD_IP)"
    assert args["--data-dir"].startswith("/var/lib/pgha/data/")
    assert args["--pg-su-password-file"] == "/etc/pgha/secrets/pg_su_password"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["PGHA_CLUSTER_NAME"]["value"] == "main"
    assert env["PGHA_STORE_ENDPOINTS"]["value"].split(",") == [
        f"http://main-etcd-{i}.main-etcd.{NAMESPACE}.svc.cluster.local:12379" for i in range(3)]
    assert env["PGHA_STORE_INSECURE"]["value"] == "true"  # plain HTTP to the pods' etcd, said so
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/var/lib/pgha/data"] == "data"
    assert mounts["/etc/pgha/secrets"] == "secrets"


def test_keepers_are_a_parallel_statefulset_with_a_long_grace_period(applied: list[dict[str, Any]]) -> None:
    sts = by(applied, "StatefulSet", "main-keeper")["spec"]
    assert sts["podManagementPolicy"] == "Parallel"
    assert sts["replicas"] == 3
    assert sts["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    pod = sts["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 90
    assert "podAntiAffinity" in pod["affinity"]
    [c] = [c for c in pod["containers"] if c["name"] != "labeller"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "api"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "api"}
    assert c["resources"]["requests"]["memory"] == "512Mi"


def test_replica_counts(applied: list[dict[str, Any]]) -> None:
    assert by(applied, "StatefulSet", "main-etcd")["spec"]["replicas"] == 3
    assert by(applied, "Deployment", "main-sentinel")["spec"]["replicas"] == 2
    assert by(applied, "Deployment", "main-proxy")["spec"]["replicas"] == 2


def test_the_proxy_pod_listens_everywhere_and_advertises_its_pod_ip(applied: list[dict[str, Any]]) -> None:
    [c] = by(applied, "Deployment", "main-proxy")["spec"]["template"]["spec"]["containers"]
    args = dict(zip(c["args"][::2], c["args"][1::2]))
    assert args["--listen-address"] == "0.0.0.0"
    assert args["--advertise-address"] == "$(POD_IP)"
    assert "--reuse-port" not in args  # one relay per pod: proxy_k8s_replicas scales
