# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""Offline checks of every object the roles apply (as kubernetes.core sent them to the fake API
server): strict schema validation, and the relations a schema cannot see."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
AGENTS_SRC = ROOT / "files" / "agents" / "src"
WORKLOADS = ("StatefulSet", "Deployment")
VERSIONS = ["1.28", kubernetes_validate.utils.latest_version()]


def pod_templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"]["template"] for o in objects if o["kind"] in WORKLOADS}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def declared_ports(template: dict[str, Any]) -> set[str]:
    return {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(applied: list[dict[str, Any]], version: str) -> None:
    errors = []
    for obj in applied:
        obj = copy.deepcopy(obj)
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_each_service_selects_a_pod_template(applied: list[dict[str, Any]]) -> None:
    templates = pod_templates(applied)
    for svc in (o for o in applied if o["kind"] == "Service"):
        selector = dict(svc["spec"]["selector"])
        # pgha.io/role is set on the keepers' pods at run time by the keepers themselves (pgha.kube)
        runtime = {k: selector.pop(k) for k in list(selector) if k == "pgha.io/role"}
        chosen = [n for n, t in templates.items() if matches(selector, t["metadata"]["labels"])]
        assert len(chosen) == 1, f"Service {svc['metadata']['name']} selects {chosen}"
        if runtime:
            assert chosen == ["main-keeper"] and runtime["pgha.io/role"] == "replica"
        ports = declared_ports(templates[chosen[0]])
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"Service {svc['metadata']['name']} targets undeclared port {p}"


def test_probes_name_declared_ports(applied: list[dict[str, Any]]) -> None:
    for name, t in pod_templates(applied).items():
        for c in t["spec"]["containers"]:
            ports = {p["name"] for p in c.get("ports", [])}
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(kind)
                if probe:
                    handler = probe.get("httpGet") or probe.get("tcpSocket")
                    assert handler["port"] in ports, f"{name}/{c['name']} {kind} uses port {handler['port']}"


def test_pdbs_and_network_policies_select_exactly_one_workload(applied: list[dict[str, Any]]) -> None:
    templates = pod_templates(applied)
    for obj in (o for o in applied if o["kind"] in ("PodDisruptionBudget", "NetworkPolicy")):
        selector = (obj["spec"]["selector"] if obj["kind"] == "PodDisruptionBudget" else obj["spec"]["podSelector"])
        chosen = [n for n, t in templates.items() if matches(selector["matchLabels"], t["metadata"]["labels"])]
        assert chosen == [obj["metadata"]["name"]], f"{obj['kind']} {obj['metadata']['name']} selects {chosen}"
        if obj["kind"] == "NetworkPolicy":
            ports = declared_ports(templates[chosen[0]])
            for rule in obj["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    assert p["port"] in ports


def test_only_agents_reach_etcd_and_only_keepers_proxies_and_the_operator_reach_postgresql(
        applied: list[dict[str, Any]]) -> None:
    etcd = next(o for o in applied if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "main-etcd")
    client_rule = next(r for r in etcd["spec"]["ingress"] if r["ports"] == [{"port": "client", "protocol": "TCP"}])
    [peer] = client_rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"pgha.io/cluster": "main"}
    assert peer["podSelector"]["matchExpressions"][0]["values"] == ["keeper", "sentinel", "proxy", "etcd", "etcd-auth"]
    keeper = next(o for o in applied if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "main-keeper")
    pg_rule = next(r for r in keeper["spec"]["ingress"] if r["ports"] == [{"port": "pg", "protocol": "TCP"}])
    agents, operator = pg_rule["from"]
    assert agents["podSelector"]["matchExpressions"][0]["values"] == ["keeper", "proxy"]
    assert operator == {"podSelector": {"matchLabels": {"pgha.io/operator": "true"}}}
    sentinel = next(o for o in applied if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "main-sentinel")
    assert sentinel["spec"]["ingress"] == []


def test_the_proxy_denies_by_default_and_reaches_only_the_keepers_etcd_and_dns(applied: list[dict[str, Any]]) -> None:
    proxy = next(o for o in applied if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "main-proxy")
    assert proxy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [rule] = proxy["spec"]["ingress"]
    operator, own = rule["from"]  # no client peers given: nobody else
    assert operator == {"podSelector": {"matchLabels": {"pgha.io/operator": "true"}}}
    assert own["podSelector"]["matchExpressions"][0]["values"] == ["keeper", "sentinel"]
    to_keepers, to_etcd, dns = proxy["spec"]["egress"]
    assert to_keepers["to"][0]["podSelector"]["matchExpressions"][0]["values"] == ["keeper"]
    assert to_keepers["ports"] == [{"port": "pg", "protocol": "TCP"}]
    assert to_etcd["to"][0]["podSelector"]["matchExpressions"][0]["values"] == ["etcd"]
    assert to_etcd["ports"] == [{"port": "client", "protocol": "TCP"}]
    assert "to" not in dns and {p["port"] for p in dns["ports"]} == {53}
    templates = pod_templates(applied)
    assert "pg" in declared_ports(templates["main-keeper"]) and "client" in declared_ports(templates["main-etcd"])


def test_client_peers_restrict_the_proxy_but_not_for_the_clusters_own_pods(
        applied_with_client_peers: list[dict[str, Any]]) -> None:
    from conftest import CLIENT_PEERS

    objs = applied_with_client_peers
    proxy = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "main-proxy")
    [rule] = proxy["spec"]["ingress"]
    client, operator, own = rule["from"]
    assert [client] == CLIENT_PEERS
    assert operator == {"podSelector": {"matchLabels": {"pgha.io/operator": "true"}}}
    # site.yml's in-pod proxy check runs in a keeper pod, the drill's workload in a sentinel pod
    templates = pod_templates(objs)
    for pod in ("main-keeper", "main-sentinel"):
        labels = templates[pod]["metadata"]["labels"]
        assert matches(own["podSelector"]["matchLabels"], labels)
        [expr] = own["podSelector"]["matchExpressions"]
        assert expr["operator"] == "In" and labels[expr["key"]] in expr["values"]
    assert "proxy" not in own["podSelector"]["matchExpressions"][0]["values"]
    keeper = next(o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "main-keeper")
    pg_rule = next(r for r in keeper["spec"]["ingress"] if r["ports"] == [{"port": "pg", "protocol": "TCP"}])
    assert CLIENT_PEERS[0] in pg_rule["from"]  # the replicas behind <cluster>-ro
    for version in VERSIONS:
        kubernetes_validate.validate(copy.deepcopy(proxy), version, strict=True)


def test_pods_fit_the_restricted_security_profile(applied: list[dict[str, Any]]) -> None:
    """OpenShift restricted-v2 / Pod Security "restricted": non-root, no escalation, no capabilities,
    RuntimeDefault seccomp, no host namespaces or host paths; any UID works (no runAsUser)."""
    for name, t in pod_templates(applied).items():
        spec = t["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert "runAsUser" not in spec["securityContext"], name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), name
        assert all("hostPath" not in v for v in spec.get("volumes", [])), name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert "runAsUser" not in sc, name
            assert c["resources"]["requests"] and c["resources"]["limits"], name


class RecordingApi:
    """Stands in for the API server: records what pgha.kube asks for."""

    def __init__(self) -> None:
        import http.server
        import threading
        self.calls: list[tuple[str, str]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                fake.calls.append(("PATCH", self.path))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_the_keepers_role_grants_exactly_the_calls_the_agents_make(applied: list[dict[str, Any]], tmp_path: Path) -> None:
    sys.path.insert(0, str(AGENTS_SRC))
    from pgha import kube

    api = RecordingApi()
    token = tmp_path / "token"
    token.write_text("t")
    ns = applied[0]["metadata"]["namespace"]
    sts = next(o for o in applied if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "main-keeper")
    pods = [f"main-keeper-{i}" for i in range(sts["spec"]["replicas"])]
    for pod in pods:
        labels = kube.RoleLabels(kube.PodClient(api.url, ns, pod, str(token), None), retry_min=0.05)
        labels.observe("primary")
        assert labels.wait_sent("primary", 5)
    api.server.shutdown()
    # every call an agent makes, as (verb, resource, name)
    verbs = {"PATCH": "patch", "GET": "get", "PUT": "update", "POST": "create", "DELETE": "delete"}
    needed = set()
    for method, path in api.calls:
        parts = path.strip("/").split("/")  # api v1 namespaces <ns> pods <name>
        assert parts[:3] == ["api", "v1", "namespaces"] and parts[3] == ns
        needed.add((verbs[method], parts[4], parts[5]))
    [role] = [o for o in applied if o["kind"] == "Role"]
    granted = {(verb, res, name) for rule in role["rules"] for verb in rule["verbs"] for res in rule["resources"]
               for name in rule["resourceNames"]}
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    assert granted == needed == {("patch", "pods", p) for p in pods}
    # only the keepers hold a token for that Role
    [binding] = [o for o in applied if o["kind"] == "RoleBinding"]
    assert [s["name"] for s in binding["subjects"]] == ["main-keeper"]
    # and in the keepers' pods only the labeller container mounts it: not the one running PostgreSQL
    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    for name, t in pod_templates(applied).items():
        assert t["spec"]["automountServiceAccountToken"] is False, name
        assert (t["spec"]["serviceAccountName"] == "main-keeper") is (name == "main-keeper"), name
        token_volumes = {v["name"] for v in t["spec"].get("volumes", [])
                         if any("serviceAccountToken" in src for src in v.get("projected", {}).get("sources", []))}
        holders = {c["name"] for c in t["spec"]["containers"]
                   if any(m["name"] in token_volumes or m["mountPath"].startswith(sa_dir) for m in c.get("volumeMounts", []))}
        assert holders == ({"labeller"} if name == "main-keeper" else set()), (name, holders)
    keeper = pod_templates(applied)["main-keeper"]["spec"]
    labeller = next(c for c in keeper["containers"] if c["name"] == "labeller")
    assert labeller["command"] == ["/opt/pgha/venv/bin/pgha-labeller", "--keeper-api", "http://127.0.0.1:8433"]
    assert labeller["securityContext"]["readOnlyRootFilesystem"] is True


def test_objects_are_json(applied: list[dict[str, Any]]) -> None:
    json.dumps(applied)
