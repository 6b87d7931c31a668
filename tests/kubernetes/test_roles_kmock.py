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
    ("Secret", "main-etcd-tls"), ("Secret", "main-keeper-tls"), ("Secret", "main-sentinel-tls"),
    ("Secret", "main-proxy-tls"), ("Secret", "main-etcd-auth"), ("Job", "main-etcd-auth"),
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
    rerun = by(list(site["rerun"]["objects"].values()), "Secret", "main-credentials")
    assert rerun["data"] == data
    for run in ("apply", "rerun", "absent"):
        for pw in passwords.values():
            assert pw not in site[run]["stdout"] and pw not in site[run]["stderr"]
    # nor in an annotation (client-side apply copies the whole object into last-applied-configuration),
    # nor any of the TLS Secrets' keys and store passwords
    secret_values = [v for o in applied if o["kind"] == "Secret" for v in o["data"].values()]
    secret_values += [base64.b64decode(v).decode() for v in secret_values]
    secret_values = [v for v in secret_values if "PRIVATE KEY" in v or len(v) < 100]  # not the certificates
    for run in ("apply", "rerun"):
        for obj in site[run]["objects"].values():
            annotations = str(obj.get("metadata", {}).get("annotations", {}))
            assert not [v for v in secret_values if v in annotations], \
                f"a secret in the annotations of {obj['kind']} {obj['metadata']['name']}"
        for v in secret_values:
            assert v not in site[run]["stdout"] and v not in site[run]["stderr"]


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
    # the name the keepers' certificate is for (pgha_pg_tls), the headless Service's record of the pod
    assert args["--pg-advertise-address"] == f"$(POD_NAME).main-keeper.{NAMESPACE}.svc.cluster.local"
    assert args["--pg-tls-cert-file"] == "/etc/pgha/tls/tls.crt"
    assert args["--pg-tls-key-file"] == "/etc/pgha/tls/tls.key"
    assert args["--pg-tls-ca-file"] == "/etc/pgha/tls/ca.crt"
    assert args["--data-dir"].startswith("/var/lib/pgha/data/")
    assert args["--pg-su-password-file"] == "/etc/pgha/secrets/pg_su_password"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["PGHA_CLUSTER_NAME"]["value"] == "main"
    assert env["PGHA_STORE_ENDPOINTS"]["value"].split(",") == [
        f"https://main-etcd-{i}.main-etcd.{NAMESPACE}.svc.cluster.local:12379" for i in range(3)]
    assert "PGHA_STORE_INSECURE" not in env
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/var/lib/pgha/data"] == "data"
    assert mounts["/etc/pgha/secrets"] == "secrets"
    assert mounts["/etc/pgha/tls"] == "tls"


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


# ------------------------------------------------------------------ TLS (pgha_store_tls, pgha_pg_tls)
AGENTS = {"keeper": ("StatefulSet", "main-keeper"), "sentinel": ("Deployment", "main-sentinel"),
          "proxy": ("Deployment", "main-proxy")}


def pod_of(applied: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return by(applied, kind, name)["spec"]["template"]["spec"]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    [c] = [c for c in pod["containers"] if c["name"] == name]
    return c


def secret_volumes(pod: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}


def cert(secret: dict[str, Any], key: str = "tls.crt") -> Any:
    import base64

    from cryptography import x509
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"][key]))


def test_etcd_serves_tls_wants_client_certificates_and_is_probed_on_its_metrics_port(
        applied: list[dict[str, Any]]) -> None:
    pod = pod_of(applied, "StatefulSet", "main-etcd")
    c = container(pod, "etcd")
    args = c["args"]
    kv = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--") and "=" not in a}
    assert kv["--listen-client-urls"] == "https://0.0.0.0:12379"
    assert kv["--advertise-client-urls"].startswith("https://$(POD_NAME).main-etcd.")
    assert "--client-cert-auth=true" in args and "--peer-client-cert-auth=true" in args
    assert kv["--trusted-ca-file"] == "/etc/pgha/tls/ca.crt" and kv["--cert-file"] == "/etc/pgha/tls/tls.crt"
    assert all(m.split("=", 1)[1].startswith("https://") for m in kv["--initial-cluster"].split(","))
    # the kubelet has no client certificate: /health in plain HTTP on a port of its own
    assert kv["--listen-metrics-urls"] == "http://0.0.0.0:2381"
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert secret_volumes(pod) == {"tls": "main-etcd-tls"}
    policy = by(applied, "NetworkPolicy", "main-etcd")
    assert {"port": "metrics", "protocol": "TCP"} not in [p for r in policy["spec"]["ingress"] for p in r["ports"]]


def test_each_agent_logs_in_to_etcd_as_its_own_user_with_its_own_secret(applied: list[dict[str, Any]]) -> None:
    for component, (kind, name) in AGENTS.items():
        pod = pod_of(applied, kind, name)
        env = {e["name"]: e.get("value") for e in container(pod, component)["env"]}
        assert env["PGHA_STORE_USER"] == f"main-{component}"
        assert env["PGHA_STORE_PASSWORD_FILE"] == "/etc/pgha/tls/store-password"
        assert env["PGHA_STORE_CA_FILE"] == "/etc/pgha/tls/ca.crt"
        assert env["PGHA_STORE_CERT_FILE"] == "/etc/pgha/tls/tls.crt"
        assert all(e.startswith("https://") for e in env["PGHA_STORE_ENDPOINTS"].split(","))
        assert "PGHA_STORE_INSECURE" not in env
        # its own Secret, never etcd's root password (main-etcd-auth)
        assert secret_volumes(pod)["tls"] == f"main-{component}-tls"
        assert "main-etcd-auth" not in secret_volumes(pod).values()
        [volume] = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["defaultMode"] == 0o440
    proxy_env = {e["name"]: e.get("value") for e in container(pod_of(applied, *AGENTS["proxy"]), "proxy")["env"]}
    assert proxy_env["PGHA_PG_TLS_CA_FILE"] == "/etc/pgha/tls/ca.crt"


def test_the_certificates_name_the_pods_and_only_the_servers_may_serve(applied: list[dict[str, Any]]) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    def names(c: Any) -> list[str]:
        return c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)

    def usages(c: Any) -> set[Any]:
        return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    secrets = {c: by(applied, "Secret", f"main-{c}-tls") for c in ("etcd", "keeper", "sentinel", "proxy")}
    ca = cert(secrets["etcd"], "ca.crt")
    for component, secret in secrets.items():
        c = cert(secret)
        assert c.issuer == ca.subject
        c.verify_directly_issued_by(ca)
        assert cert(secret, "ca.crt") == ca
        server = ExtendedKeyUsageOID.SERVER_AUTH in usages(c)
        assert server == (component in ("etcd", "keeper")), component
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages(c)
    assert f"*.main-etcd.{NAMESPACE}.svc.cluster.local" in names(cert(secrets["etcd"]))
    assert f"*.main-keeper.{NAMESPACE}.svc.cluster.local" in names(cert(secrets["keeper"]))
    # the CA key stays on the controller
    for obj in applied:
        if obj["kind"] == "Secret":
            assert "ca.key" not in obj["data"]


def test_the_store_passwords_reach_only_their_component_and_the_auth_job(
        site: dict[str, Any], applied: list[dict[str, Any]]) -> None:
    auth = by(applied, "Secret", "main-etcd-auth")["data"]
    assert {"root", "keeper", "sentinel", "proxy", "operator", "ca.crt", "tls.crt", "tls.key"} == set(auth)
    for component in ("keeper", "sentinel", "proxy"):
        data = by(applied, "Secret", f"main-{component}-tls")["data"]
        assert data["store-password"] == auth[component]
        assert "root" not in data
    assert len({auth[c] for c in ("root", "keeper", "sentinel", "proxy", "operator")}) == 5
    assert "store-password" not in by(applied, "Secret", "main-etcd-tls")["data"]
    # the rerun made no new ones
    for name in ("main-etcd-auth", "main-keeper-tls", "main-etcd-tls"):
        assert by(list(site["rerun"]["objects"].values()), "Secret", name)["data"] == by(applied, "Secret", name)["data"]


def test_a_job_turns_etcd_authentication_on(applied: list[dict[str, Any]]) -> None:
    job = by(applied, "Job", "main-etcd-auth")
    pod = job["spec"]["template"]["spec"]
    c = container(pod, "etcd-auth")
    assert c["command"] == ["/usr/local/bin/pgha-entrypoint", "/opt/pgha/venv/bin/pghactl"]
    assert c["args"][:3] == ["store-auth", "--password-dir", "/etc/pgha/tls"]
    assert secret_volumes(pod) == {"auth": "main-etcd-auth"}
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["spec"]["template"]["metadata"]["labels"]["pgha.io/component"] == "etcd-auth"
    assert len(job["metadata"]["annotations"]["pgha.io/template-digest"]) == 16
    etcd = by(applied, "NetworkPolicy", "main-etcd")
    [client_rule] = [r for r in etcd["spec"]["ingress"] if r["ports"] == [{"port": "client", "protocol": "TCP"}]]
    assert "etcd-auth" in client_rule["from"][0]["podSelector"]["matchExpressions"][0]["values"]


def test_the_controller_keeps_the_ca_and_the_operators_files_and_absent_removes_them(site: dict[str, Any]) -> None:
    files = site["controller_files"]
    for name in ("ca.crt", "operator.crt", "operator.key", "operator.password", "pghactl.env", "pki/ca.key"):
        assert files.get(name) == 0o600, (name, files)
    assert files["."] == 0o700 and files["pki"] == 0o700
    assert site["controller_left"] is False
