# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
name: members
short_description: The members of a live pgha cluster as hosts
version_added: 0.1.0
description:
  - Reads a pgha cluster's status from its store (etcd) and yields every keeper, sentinel and proxy,
    and every etcd member of the store, as a host with its addresses.
  - Groups hosts by component (C(pgha_keepers), C(pgha_sentinels), C(pgha_proxies), C(pgha_etcd)) and
    by live role (C(pgha_primary), C(pgha_replica), C(pgha_sentinel_leader), C(pgha_etcd_leader)).
  - Accepts only configuration files whose name ends in C(.pgha.yml) or C(.pgha.yaml).
  - With O(source=kubernetes), lists the cluster's pods instead (with the kubernetes Python client);
    every pod becomes a host reached with the C(kubernetes.core.kubectl) connection, grouped by
    component and by the live role its keeper labels it with (C(pgha.io/role)).
  - Every value read from the store is marked unsafe, so it is never templated.
  - Hosts are agents, not machines - several may share one address. Use the groups to target, for
    example, the machine that runs the primary (C(ansible_host)).
author:
  - pgha developers (!UNKNOWN)
requirements:
  - The C(pgha) Python package (C(pip install ./files/agents)) importable by the controller's Python
    (O(source=store)).
  - The C(kubernetes) Python package (O(source=kubernetes)).
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Token that makes this a configuration file for this plugin.
    type: str
    required: true
    choices: [pgha.cluster.members]
  cluster_name:
    description: Name of the pgha cluster.
    type: str
    default: main
    env:
      - name: PGHA_CLUSTER_NAME
  source:
    description:
      - V(store) reads the cluster's status from its store; V(kubernetes) lists the cluster's pods.
    type: str
    default: store
    choices: [store, kubernetes]
  kubeconfig:
    description: Kubeconfig file (O(source=kubernetes)); unset uses the client's defaults, or the in-cluster configuration.
    type: path
    env:
      - name: K8S_AUTH_KUBECONFIG
  context:
    description: Kubeconfig context (O(source=kubernetes)); unset uses the current one.
    type: str
    env:
      - name: K8S_AUTH_CONTEXT
  namespace:
    description: Namespace of the cluster's pods (O(source=kubernetes)).
    type: str
    default: pgha
  store_endpoints:
    description: Comma-separated etcd v3 endpoints, C(http(s)://host:port). Required with O(source=store).
    type: str
    env:
      - name: PGHA_STORE_ENDPOINTS
  store_prefix:
    description: Key prefix in the store.
    type: str
    default: pgha
    env:
      - name: PGHA_STORE_PREFIX
  store_ca_file:
    description: CA certificate for TLS to etcd.
    type: path
  store_cert_file:
    description: Client certificate for TLS to etcd.
    type: path
  store_key_file:
    description: Key of O(store_cert_file).
    type: path
  store_user:
    description: etcd user, when etcd authentication is on (the proxy's or the operator's user can read the cluster).
    type: str
    env:
      - name: PGHA_STORE_USER
  store_password_file:
    description: File holding O(store_user)'s password.
    type: path
    env:
      - name: PGHA_STORE_PASSWORD_FILE
  store_timeout:
    description: Seconds before one store request fails.
    type: float
    default: 2.0
  include_etcd:
    description: Add the etcd members of the store as hosts.
    type: bool
    default: true
"""

EXAMPLES = r"""
# inventory/live.pgha.yml
plugin: pgha.cluster.members
cluster_name: main
store_endpoints: http://127.0.0.1:12379,http://127.0.0.1:12381,http://127.0.0.1:12383
# Group by the keepers' timeline, and flag lagging replicas.
keyed_groups:
  - key: pgha_timeline
    prefix: timeline
groups:
  lagging: pgha_role == 'replica' and (pgha_lag | default(0, true)) > 1048576
compose:
  pgha_is_primary: pgha_role == 'primary'

# ansible-inventory -i inventory/live.pgha.yml --graph
#   @pgha_primary:
#     |--keeper1
---
# inventory/k8s.pgha.yml: the pods of cluster main in namespace pgha
plugin: pgha.cluster.members
source: kubernetes
cluster_name: main
namespace: pgha
# ansible-inventory -i inventory/k8s.pgha.yml --graph
#   @pgha_primary:
#     |--main-keeper-1
"""

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable

try:
    from ansible.utils.unsafe_proxy import wrap_var as make_unsafe
except ImportError:  # pragma: no cover - future ansible-core without unsafe_proxy
    def make_unsafe(value):
        return value

try:
    from pgha.ctl import Ctl, CtlError
    from pgha.store import StoreError, open_store
    from pgha.store.etcd import EtcdStore
    HAS_PGHA = True
except ImportError:
    HAS_PGHA = False


def split_address(address):
    """('host', port) for 'host:port' or '[v6]:port'; (address, None) when there is no port."""
    if not address:
        return None, None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, None
    return host.strip("[]"), int(port)


def etcd_host_name(endpoint):
    rest = endpoint.split("://", 1)[-1].rstrip("/")
    host, port = split_address(rest)
    return "etcd_%s_%s" % (host.replace(".", "_").replace(":", "_"), port or 2379)


class InventoryModule(BaseInventoryPlugin, Constructable):
    NAME = "pgha.cluster.members"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith((".pgha.yml", ".pgha.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        if self.get_option("source") == "kubernetes":
            self.populate_pods(self._fetch_pods())
            return
        status, etcd_members = self._fetch()
        self.populate(status, etcd_members)

    def _fetch(self):
        if not HAS_PGHA:
            raise AnsibleError("the pgha.cluster.members inventory needs the pgha Python package on the "
                               "controller: pip install ./files/agents (from the pgha.cluster collection)")
        opts = dict(ca_file=self.get_option("store_ca_file"), cert_file=self.get_option("store_cert_file"),
                    key_file=self.get_option("store_key_file"), timeout=self.get_option("store_timeout"))
        if self.get_option("store_user"):
            path = self.get_option("store_password_file")
            try:
                with open(path or "", encoding="utf-8") as f:
                    opts.update(user=self.get_option("store_user"), password=f.readline().strip())
            except OSError as exc:
                raise AnsibleParserError("pgha.cluster.members: store_password_file %s: %s" % (path, exc)) from None
        endpoints = self.get_option("store_endpoints")
        if not endpoints:
            raise AnsibleParserError("pgha.cluster.members: store_endpoints is required with source: store")
        try:
            ctl = Ctl(open_store(endpoints, **opts), prefix=self.get_option("store_prefix"),
                      cluster=self.get_option("cluster_name"))
            status = ctl.status()
            etcd_members = EtcdStore(endpoints, **opts).member_health() if self.get_option("include_etcd") else []
        except (CtlError, StoreError) as exc:
            raise AnsibleParserError("pgha.cluster.members: cannot read cluster %s from %s: %s"
                                     % (self.get_option("cluster_name"), endpoints, exc)) from exc
        return status, etcd_members

    # ------------------------------------------------------------------ building the inventory
    def _add(self, name, group, hostvars):
        name = self.inventory.add_host(make_unsafe(name), group=group)
        for key, value in hostvars.items():
            self.inventory.set_variable(name, key, make_unsafe(value))
        return name

    def _construct(self, name, hostvars):
        strict = self.get_option("strict")
        self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
        self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)

    def populate(self, status, etcd_members):
        """Fill self.inventory from a status document (Ctl.status()) and etcd member health."""
        for group in ("pgha_keepers", "pgha_sentinels", "pgha_proxies", "pgha_etcd",
                      "pgha_primary", "pgha_replica", "pgha_sentinel_leader", "pgha_etcd_leader"):
            self.inventory.add_group(group)
        cluster = status.get("cluster") or {}
        cluster_name = cluster.get("name") or self.get_option("cluster_name")
        primary = cluster.get("primary")
        common = {"pgha_cluster": cluster_name, "pgha_cluster_phase": cluster.get("phase")}

        for k in status.get("keepers") or []:
            host, port = split_address(k.get("address"))
            hv = dict(common, pgha_component="keeper", pgha_uid=k.get("uid"), pgha_address=k.get("address"),
                      pgha_pg_host=host, pgha_pg_port=port, pgha_role=k.get("role"), pgha_healthy=k.get("healthy"),
                      pgha_timeline=k.get("timeline"), pgha_lsn=k.get("lsn"), pgha_synchronous=k.get("synchronous"),
                      pgha_streaming=k.get("streaming"), pgha_lag=k.get("lag"),
                      pgha_elected_primary=k.get("uid") == primary)
            if host:
                hv["ansible_host"] = host
            name = self._add(k.get("uid"), "pgha_keepers", hv)
            if k.get("uid") == primary and k.get("role") == "primary":
                self.inventory.add_child("pgha_primary", name)
            elif k.get("role") == "replica":
                self.inventory.add_child("pgha_replica", name)
            self._construct(name, hv)

        for s in status.get("sentinels") or []:
            hv = dict(common, pgha_component="sentinel", pgha_uid=s.get("uid"), pgha_leader=bool(s.get("leader")))
            name = self._add(s.get("uid"), "pgha_sentinels", hv)
            if s.get("leader"):
                self.inventory.add_child("pgha_sentinel_leader", name)
            self._construct(name, hv)

        for p in status.get("proxies") or []:
            host, port = split_address(p.get("address"))
            hv = dict(common, pgha_component="proxy", pgha_uid=p.get("uid"), pgha_address=p.get("address"),
                      pgha_ro_address=p.get("ro_address") or None, pgha_port=port, pgha_target=p.get("target"))
            if host:
                hv["ansible_host"] = host
            name = self._add(p.get("uid"), "pgha_proxies", hv)
            self._construct(name, hv)

        for m in etcd_members or []:
            endpoint = m.get("endpoint") or ""
            host, port = split_address(endpoint.split("://", 1)[-1].rstrip("/"))
            is_leader = bool(m.get("member_id")) and m.get("member_id") == m.get("leader")
            hv = dict(common, pgha_component="etcd", pgha_uid=m.get("member_id"), pgha_endpoint=endpoint,
                      pgha_healthy=bool(m.get("healthy")), pgha_leader=is_leader, pgha_etcd_version=m.get("version"),
                      pgha_error=m.get("error") or None)
            if host:
                hv["ansible_host"] = host
            name = self._add(etcd_host_name(endpoint), "pgha_etcd", hv)
            if is_leader:
                self.inventory.add_child("pgha_etcd_leader", name)
            self._construct(name, hv)

    # ------------------------------------------------------------------ source: kubernetes
    def _fetch_pods(self):
        """The cluster's pods, as dicts (the API's JSON form)."""
        try:
            from kubernetes import client, config
            from kubernetes.config.config_exception import ConfigException
        except ImportError as exc:
            raise AnsibleError("pgha.cluster.members with source: kubernetes needs the kubernetes Python "
                               "package on the controller (pip install kubernetes)") from exc
        kubeconfig, context = self.get_option("kubeconfig"), self.get_option("context")
        namespace = self.get_option("namespace")
        selector = "pgha.io/cluster=%s" % self._k8s_cluster()
        try:
            try:
                api = config.new_client_from_config(config_file=kubeconfig, context=context)
            except ConfigException:
                if kubeconfig or context:
                    raise
                config.load_incluster_config()
                api = client.ApiClient()
            pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector)
            items = api.sanitize_for_serialization(pods).get("items") or []
        except Exception as exc:  # the client raises many types: ApiException, urllib3 errors, ConfigException
            raise AnsibleParserError("pgha.cluster.members: cannot list the pods of cluster %s in namespace %s: %s"
                                     % (self.get_option("cluster_name"), namespace, exc)) from exc
        # the selector again, for API servers (and fakes) that ignore it
        return [p for p in items if (p.get("metadata", {}).get("labels") or {}).get("pgha.io/cluster") == self._k8s_cluster()]

    def _k8s_cluster(self):
        return str(self.get_option("cluster_name")).lower().replace("_", "-")

    def populate_pods(self, pods):
        """Fill self.inventory from the cluster's pods (labels set by the roles and, for the role, by the keepers)."""
        groups = {"keeper": "pgha_keepers", "sentinel": "pgha_sentinels", "proxy": "pgha_proxies", "etcd": "pgha_etcd"}
        for group in list(groups.values()) + ["pgha_primary", "pgha_replica"]:
            self.inventory.add_group(group)
        kubeconfig, context = self.get_option("kubeconfig"), self.get_option("context")
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
            labels = meta.get("labels") or {}
            component = labels.get("pgha.io/component")
            if component not in groups:
                continue
            containers = [c.get("name") for c in spec.get("containers") or []]
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
            hv = {
                "ansible_connection": "kubernetes.core.kubectl",
                "ansible_kubectl_pod": meta["name"],
                "ansible_kubectl_namespace": meta.get("namespace") or self.get_option("namespace"),
                "ansible_kubectl_container": component if component in containers else (containers or [None])[0],
                "pgha_cluster": self.get_option("cluster_name"),
                "pgha_component": component,
                "pgha_uid": meta["name"].replace("-", "_").replace(".", "_") if component != "etcd" else meta["name"],
                "pgha_role": labels.get("pgha.io/role") if component == "keeper" else None,
                "pgha_pod_ip": status.get("podIP"),
                "pgha_node": spec.get("nodeName"),
                "pgha_phase": status.get("phase"),
                "pgha_ready": ready,
            }
            if kubeconfig:
                hv["ansible_kubectl_kubeconfig"] = kubeconfig
            if context:
                hv["ansible_kubectl_context"] = context
            name = self._add(meta["name"], groups[component], hv)
            if hv["pgha_role"] == "primary":
                self.inventory.add_child("pgha_primary", name)
            elif hv["pgha_role"] == "replica":
                self.inventory.add_child("pgha_replica", name)
            self._construct(name, hv)
