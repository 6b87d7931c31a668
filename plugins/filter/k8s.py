# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""Turn a pgha component definition into a Kubernetes container.

A component definition (roles/*/vars/main.yml, documented in roles/pgha/tasks/programs.yml) is
platform neutral: command, args, environment, ports, health, stop_signal, stop_wait. The local
platform writes it into a supervisord program or a systemd unit; this filter writes the same
definition into a container of a pod template, so a pod runs the same command line as a local
service. What only a pod can know (its name, its IP) reaches the command line through the
downward API: POD_NAME, POD_NAMESPACE and POD_IP are set in every container and may appear in
args as $(POD_IP), which the kubelet expands.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

DOWNWARD_ENV = [
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
]


def _drop_flags(args, flags):
    """args without each flag of flags and its value (--flag VALUE or --flag=VALUE)."""
    out = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def _port_name(component, port):
    for p in component.get("ports", []):
        if int(p["port"]) == int(port):
            return p["name"]
    raise AnsibleFilterError(
        "component %s: its health check uses port %s, which is not one of its ports %s"
        % (component.get("name"), port, [p["port"] for p in component.get("ports", [])]))


def _probe(component, spec, defaults):
    if "path" in spec:
        handler = {"httpGet": {"path": spec["path"], "port": _port_name(component, spec["port"])}}
    else:
        handler = {"tcpSocket": {"port": _port_name(component, spec["port"])}}
    probe = dict(handler)
    for key in ("periodSeconds", "timeoutSeconds", "failureThreshold", "successThreshold", "initialDelaySeconds"):
        value = spec.get(key, defaults.get(key))
        if value is not None:
            probe[key] = int(value)
    return probe


def k8s_container(component, image, entrypoint=None, pod_flags=(), liveness=None, image_pull_policy="IfNotPresent",
                  extra_env=None):
    """The container that runs ``component``.

    image:        the container image
    entrypoint:   a wrapper the command runs under (the pgha image's pgha-entrypoint); None runs the
                  command directly
    pod_flags:    flags whose value is per pod and comes from the pod instead of the definition (for
                  the agents, --uid: pgha-entrypoint sets PGHA_UID from POD_NAME, and every flag is
                  also read from PGHA_<FLAG>)
    liveness:     {port, path} (HTTP) or {port} (TCP) of the liveness probe; None: no liveness probe.
                  The readiness probe is the definition's health check.
    extra_env:    more env entries (Kubernetes form), e.g. secrets
    """
    if not isinstance(component, dict):
        raise AnsibleFilterError("k8s_container expects a component definition (a dict), got %r" % (component,))
    for key in ("name", "component", "command"):
        if key not in component:
            raise AnsibleFilterError("component definition without %r: %r" % (key, component))
    if component.get("stop_signal", "TERM") != "TERM":
        raise AnsibleFilterError("component %s stops with SIG%s; the kubelet stops containers with SIGTERM"
                                 % (component["name"], component["stop_signal"]))
    command = [str(component["command"])]
    if entrypoint:
        command = [str(entrypoint)] + command
    env = list(DOWNWARD_ENV)
    for key, value in sorted((component.get("environment") or {}).items()):
        env.append({"name": str(key), "value": str(value)})
    env.extend(extra_env or [])
    container = {
        "name": str(component["component"]),
        "image": str(image),
        "imagePullPolicy": str(image_pull_policy),
        "command": command,
        "args": [str(a) for a in _drop_flags(component.get("args") or [], set(pod_flags))],
        "env": env,
        "ports": [{"name": str(p["name"]), "containerPort": int(p["port"]), "protocol": "TCP"}
                  for p in component.get("ports") or []],
    }
    if component.get("health"):
        container["readinessProbe"] = _probe(component, component["health"],
                                             {"periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3})
    if liveness:
        container["livenessProbe"] = _probe(component, liveness,
                                            {"periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6})
    return container


def k8s_name(value):
    """A DNS-1123 label from a pgha name (cluster names may hold _)."""
    name = str(value).lower().replace("_", "-").strip("-")
    if not name or len(name) > 63:
        raise AnsibleFilterError("%r cannot be a Kubernetes name (1-63 characters)" % (value,))
    return name


def k8s_agent_pods(cluster, components):
    """A NetworkPolicy peer: the pods of pgha cluster ``cluster`` that run one of ``components``."""
    return {"podSelector": {"matchLabels": {"pgha.io/cluster": str(cluster)},
                            "matchExpressions": [{"key": "pgha.io/component", "operator": "In",
                                                  "values": [str(c) for c in components]}]}}


class FilterModule(object):
    def filters(self):
        return {"k8s_container": k8s_container, "k8s_name": k8s_name, "k8s_agent_pods": k8s_agent_pods}
