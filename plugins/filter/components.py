# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""The component definitions of etcd, keepers, sentinels and proxies, built in one place.

A **component definition** is platform neutral: what runs, with which command line, environment,
ports and health check. The local platform writes it into a supervisord program or a systemd unit
(roles/pgha/tasks/programs.yml); the ``k8s_container`` filter writes the same definition into a
container of a pod template. Its keys:

``name``
    unique within the cluster (``keeper1``, ``proxy1_w2``)
``component``
    ``etcd`` | ``keeper`` | ``sentinel`` | ``proxy``
``description``
    one line for humans (supervisord, systemd's Description=)
``agent``
    true for a pgha agent (restarted when pgha is upgraded)
``command``, ``args``
    the program and its arguments
``environment``
    a mapping of environment variables (the agents' PGHA_* settings)
``ports``
    ``[{name, port, address, var, shared_with?}]``: what it listens on; ``var`` names the variable
    that set the port (for error messages), ``shared_with`` the other programs that share it
    (proxy workers with ``--reuse-port``)
``health``
    ``{port, path}``: an HTTP health check (optional)
``stop_signal``, ``stop_wait``
    how to stop it and how long to wait before SIGKILL
``user``, ``directory``, ``stop_as_group``
    optional: the OS user (default: the agents' user), the working directory, whether stopping
    signals the whole process group (supervisord's stopasgroup)

Each filter takes the role's instances and the platform's inputs as arguments (``settings``, a
mapping): the local platform passes the host's addresses and paths, the Kubernetes platform a pod's
(``$(POD_IP)``, the volume's mount, one instance). Nothing here reads a variable.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError


def _need(settings, component, keys):
    if not isinstance(settings, dict):
        raise AnsibleFilterError("%s_components: settings must be a mapping, got %r" % (component, settings))
    missing = [k for k in keys if k not in settings]
    if missing:
        raise AnsibleFilterError("%s_components: settings lack %s" % (component, ", ".join(missing)))
    return settings


def _list(value, what):
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise AnsibleFilterError("%s must be a list, got %r" % (what, value))
    return [str(v) for v in value]


def etcd_initial_cluster(members, tls=False):
    """etcd's --initial-cluster for ``members`` (``[{name, address, peer_port}]``, every member of the
    cluster): ``name=http://address:peer_port,...`` (``https`` with ``tls``)."""
    scheme = "https" if _bool(tls) else "http"
    return ",".join("%s=%s://%s:%s" % (m["name"], scheme, m["address"], m["peer_port"]) for m in members)


def etcd_components(members, settings):
    """One component per etcd member of this host.

    members:  ``[{name, address, client_port, peer_port}]``
    settings: binary, data_root, listen_address, initial_cluster, token, heartbeat_interval,
              election_timeout, quota_backend_bytes, extra_args; optional ``tls``
              ``{ca_file, cert_file, key_file}``: client and peer URLs on HTTPS, client certificates
              required on both (the certificate serves as the member's server and client certificate);
              optional ``metrics_port``: /health and /metrics also on plain HTTP there (for probes that
              have no client certificate, such as the kubelet's), which is then the health check
    """
    s = _need(settings, "etcd", ["binary", "data_root", "listen_address", "initial_cluster", "token",
                                 "heartbeat_interval", "election_timeout", "quota_backend_bytes", "extra_args"])
    listen = s["listen_address"]
    tls = s.get("tls") or {}
    scheme = "https" if tls else "http"
    tls_args = []
    if tls:
        for key in ("ca_file", "cert_file", "key_file"):
            if not tls.get(key):
                raise AnsibleFilterError("etcd_components: settings.tls lacks %s" % key)
        tls_args = ["--cert-file", tls["cert_file"], "--key-file", tls["key_file"],
                    "--trusted-ca-file", tls["ca_file"], "--client-cert-auth=true",
                    "--peer-cert-file", tls["cert_file"], "--peer-key-file", tls["key_file"],
                    "--peer-trusted-ca-file", tls["ca_file"], "--peer-client-cert-auth=true"]
    metrics_port = s.get("metrics_port")
    out = []
    for m in members:
        metrics_args, metrics_ports = [], []
        if metrics_port:
            metrics_args = ["--listen-metrics-urls", "http://%s:%s" % (listen, metrics_port)]
            metrics_ports = [{"name": "metrics", "port": int(metrics_port), "address": listen,
                              "var": "etcd metrics_port (member %s)" % m["name"]}]
        out.append({
            "name": m["name"],
            "component": "etcd",
            "description": "etcd member %s" % m["name"],
            "agent": False,
            "command": s["binary"],
            "args": [
                "--name", m["name"],
                "--data-dir", "%s/%s" % (s["data_root"], m["name"]),
                "--listen-client-urls", "%s://%s:%s" % (scheme, listen, m["client_port"]),
                "--advertise-client-urls", "%s://%s:%s" % (scheme, m["address"], m["client_port"]),
                "--listen-peer-urls", "%s://%s:%s" % (scheme, listen, m["peer_port"]),
                "--initial-advertise-peer-urls", "%s://%s:%s" % (scheme, m["address"], m["peer_port"]),
                "--initial-cluster", s["initial_cluster"],
                "--initial-cluster-state", "new",
                "--initial-cluster-token", s["token"],
                "--heartbeat-interval", str(s["heartbeat_interval"]),
                "--election-timeout", str(s["election_timeout"]),
                # a member that was cut off must not depose the leader when it comes back: without
                # pre-vote its raised term forces an election, and for that second or two no lease
                # can be renewed (primaries fence themselves, proxies stop relaying). A boolean flag
                # takes its value after "=" (a separate "true" is refused as a stray argument).
                "--pre-vote=true",
                "--quota-backend-bytes", str(s["quota_backend_bytes"]),
            ] + tls_args + metrics_args + _list(s["extra_args"], "etcd_extra_args"),
            "environment": {},
            "ports": [
                {"name": "client", "port": m["client_port"], "address": listen,
                 "var": "pgha_etcd_client_port (member %s)" % m["name"]},
                {"name": "peer", "port": m["peer_port"], "address": listen,
                 "var": "pgha_etcd_peer_port (member %s)" % m["name"]},
            ] + metrics_ports,
            "health": {"port": metrics_port or m["client_port"], "path": "/health"},
            "stop_signal": "TERM",
            "stop_wait": 20,
        })
    return out


def keeper_components(instances, settings):
    """One component per keeper of this host.

    instances: ``[{uid, pg_port, api_port, can_be_master?}]``
    settings:  venv_dir, data_root, pg_bin_path, pg_listen_address, pg_advertise_address,
               api_listen_address, su_username, su_password_file, repl_username, repl_password_file,
               can_be_master, extra_args, environment; optional ``app_username``, ``app_password_file``,
               ``app_database`` (the applications' role) and ``tls_cert_file``, ``tls_key_file``,
               ``tls_ca_file`` (PostgreSQL's TLS; pgha-keeper's --pg-* flags of those names; absent or
               empty: none); optional ``backup_repo_path`` (the pgBackRest repository, --backup-repo-path)
    """
    s = _need(settings, "keeper", ["venv_dir", "data_root", "pg_bin_path", "pg_listen_address",
                                   "pg_advertise_address", "api_listen_address", "su_username",
                                   "su_password_file", "repl_username", "repl_password_file", "can_be_master",
                                   "extra_args", "environment"])
    optional = []
    for key in ("app_username", "app_password_file", "app_database", "tls_cert_file", "tls_key_file", "tls_ca_file"):
        if s.get(key):
            optional += ["--pg-" + key.replace("_", "-"), str(s[key])]
    if s.get("backup_repo_path"):
        optional += ["--backup-repo-path", str(s["backup_repo_path"])]
    out = []
    for k in instances:
        uid, pg_port, api_port = k["uid"], int(k["pg_port"]), int(k["api_port"])
        can_be_master = k.get("can_be_master", s["can_be_master"])
        out.append({
            "name": uid,
            "component": "keeper",
            "description": "pgha keeper %s" % uid,
            "agent": True,
            "command": s["venv_dir"] + "/bin/pgha-keeper",
            "args": [
                "--uid", uid,
                "--data-dir", "%s/%s" % (s["data_root"], uid),
                "--pg-bin-path", s["pg_bin_path"],
                "--pg-listen-address", s["pg_listen_address"],
                "--pg-port", str(pg_port),
                "--pg-advertise-address", s["pg_advertise_address"],
                "--pg-advertise-port", str(pg_port),
                "--pg-su-username", s["su_username"],
                "--pg-su-password-file", s["su_password_file"],
                "--pg-repl-username", s["repl_username"],
                "--pg-repl-password-file", s["repl_password_file"],
                "--api-listen-address", s["api_listen_address"],
                "--api-port", str(api_port),
                "--can-be-master", "true" if _bool(can_be_master) else "false",
            ] + optional + _list(s["extra_args"], "keeper_extra_args"),
            "environment": s["environment"],
            "ports": [
                {"name": "pg", "port": pg_port, "address": s["pg_listen_address"],
                 "var": "keeper_pg_port (keeper %s)" % uid},
                {"name": "api", "port": api_port, "address": s["api_listen_address"],
                 "var": "keeper_api_port (keeper %s)" % uid},
            ],
            "health": {"port": api_port, "path": "/health"},
            "stop_signal": "TERM",
            "stop_wait": 60,
        })
    return out


def sentinel_components(instances, settings):
    """One component per sentinel of this host.

    instances: ``[{uid}]``
    settings:  venv_dir, extra_args, environment
    """
    s = _need(settings, "sentinel", ["venv_dir", "extra_args", "environment"])
    return [{
        "name": i["uid"],
        "component": "sentinel",
        "description": "pgha sentinel %s" % i["uid"],
        "agent": True,
        "command": s["venv_dir"] + "/bin/pgha-sentinel",
        "args": ["--uid", i["uid"]] + _list(s["extra_args"], "sentinel_extra_args"),
        "environment": s["environment"],
        "ports": [],
        "stop_signal": "TERM",
        "stop_wait": 20,
    } for i in instances]


def proxy_components(instances, settings):
    """The programs of each proxy of this host: one per worker (``workers``, default ``settings.workers``).

    Worker 1 is named after the proxy and owns its client ports; worker j is ``<uid>_w<j>`` with API
    port ``api_port + j - 1``. With more than one worker they share the client ports
    (``--reuse-port``), so each port lists the other workers in ``shared_with``.

    instances: ``[{uid, port, ro_port, api_port, workers?}]`` (``ro_port`` 0: no read-only port)
    settings:  venv_dir, listen_address, advertise_address, api_listen_address, workers, extra_args,
               environment; optional ``limits`` ``{max_connections, max_connections_per_source,
               startup_timeout}`` (pgha-proxy's flags of those names; absent: its defaults)
    """
    s = _need(settings, "proxy", ["venv_dir", "listen_address", "advertise_address", "api_listen_address",
                                  "workers", "extra_args", "environment"])
    listen, api_listen = s["listen_address"], s["api_listen_address"]
    out = []
    for p in instances:
        workers = int(p.get("workers", s["workers"]))
        if workers < 1:
            raise AnsibleFilterError("proxy %s: workers must be at least 1, got %s" % (p["uid"], workers))
        port, ro_port = int(p["port"]), int(p["ro_port"])
        names = [p["uid"]] + ["%s_w%d" % (p["uid"], j) for j in range(2, workers + 1)]
        for index, name in enumerate(names):
            api_port = int(p["api_port"]) + index
            others = [n for n in names if n != name]
            ports = []
            if index == 0:
                ports.append({"name": "rw", "port": port, "address": listen,
                              "var": "proxy_port (proxy %s)" % p["uid"], "shared_with": others})
                if ro_port > 0:
                    ports.append({"name": "ro", "port": ro_port, "address": listen,
                                  "var": "proxy_ro_port (proxy %s)" % p["uid"], "shared_with": others})
            ports.append({"name": "api", "port": api_port, "address": api_listen,
                          "var": "proxy_api_port (proxy %s)" % name})
            description = "pgha proxy %s" % name
            if workers > 1:
                description += " (worker %d of %d sharing the ports of %s)" % (index + 1, workers, p["uid"])
            args = ["--uid", name, "--listen-address", listen, "--port", str(port)]
            if ro_port > 0:
                args += ["--ro-port", str(ro_port)]
            if s["advertise_address"] != listen:
                args += ["--advertise-address", s["advertise_address"]]
            args += ["--api-listen-address", api_listen, "--api-port", str(api_port)]
            if workers > 1:
                args += ["--reuse-port", "true"]
            for key, value in sorted((s.get("limits") or {}).items()):
                if key not in ("max_connections", "max_connections_per_source", "startup_timeout"):
                    raise AnsibleFilterError("proxy limits: unknown key %r" % (key,))
                args += ["--" + key.replace("_", "-"), str(value)]
            out.append({
                "name": name,
                "component": "proxy",
                "description": description,
                "agent": True,
                "command": s["venv_dir"] + "/bin/pgha-proxy",
                "args": args + _list(s["extra_args"], "proxy_extra_args"),
                "environment": s["environment"],
                "ports": ports,
                "health": {"port": api_port, "path": "/health"},
                "stop_signal": "TERM",
                "stop_wait": 20,
            })
    return out


def _bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise AnsibleFilterError("can_be_master: expected a boolean, got %r" % (value,))


class FilterModule(object):
    def filters(self):
        return {"etcd_initial_cluster": etcd_initial_cluster, "etcd_components": etcd_components, "keeper_components": keeper_components,
                "sentinel_components": sentinel_components, "proxy_components": proxy_components}
