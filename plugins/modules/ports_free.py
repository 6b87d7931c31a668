#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: ports_free
short_description: Fail when a port a pgha program is about to listen on is taken by another process
version_added: 0.1.0
description:
  - For each port whose program does not run yet (under the cluster's supervisord or as its systemd
    unit), tries to connect to it; a port that accepts a connection belongs to another process and
    the module fails, naming the variable that chose the port.
  - A port of a program that already runs is its own and is not probed, so a rerun passes.
  - Changes nothing.
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.attributes.info_module
options:
  ports:
    description: The ports to check.
    type: list
    elements: dict
    required: true
    suboptions:
      var:
        description: The variable that chose the port, for the error message.
        type: str
        required: true
      address:
        description: The address the program listens on (V(0.0.0.0) is probed on loopback).
        type: str
        required: true
      port:
        description: The port.
        type: int
        required: true
      program:
        description: The program that will listen on it.
        type: str
        required: true
      shared_with:
        description:
          - Other programs that listen on the same port (pgha-proxy workers with C(--reuse-port)); the
            port is not probed when any of them runs.
        type: list
        elements: str
        default: []
  service_manager:
    description: How the cluster's programs run.
    type: str
    choices: [supervisord, systemd]
    default: supervisord
  supervisorctl:
    description: The supervisorctl executable (O(service_manager=supervisord)); missing means nothing runs yet.
    type: path
  config:
    description: The cluster's C(supervisord.conf) (O(service_manager=supervisord)).
    type: path
  unit_prefix:
    description: Prefix of the cluster's systemd units (O(service_manager=systemd)), for example V(pgha-main-).
    type: str
    default: ""
  timeout:
    description: Seconds to wait for each connection attempt.
    type: float
    default: 1.0
"""

EXAMPLES = r"""
- name: Check the keeper ports are free
  pgha.cluster.ports_free:
    supervisorctl: /opt/pgha/venv/bin/supervisorctl
    config: /opt/pgha/main/supervisord.conf
    ports:
      - {var: keeper_pg_port, address: 127.0.0.1, port: 5433, program: keeper1}
      - {var: keeper_api_port, address: 127.0.0.1, port: 8433, program: keeper1}
      - {var: proxy_port, address: 127.0.0.1, port: 25432, program: proxy1, shared_with: [proxy1_w2]}
"""

RETURN = r"""
running:
  description: The cluster's programs found running (their ports were not probed).
  returned: always
  type: list
  elements: str
  sample: [etcd1, etcd2, etcd3]
probed:
  description: The ports probed (their programs do not run yet).
  returned: always
  type: list
  elements: int
  sample: [5433, 8433]
"""

import os
import socket

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.local_services import program_states

UP_STATES = ("RUNNING", "STARTING", "BACKOFF")


def running_programs(service_manager, stdout, unit_prefix=""):
    """Names of the running programs from `supervisorctl status` or `systemctl list-units` output."""
    if service_manager != "systemd":
        return [n for n, state in program_states(stdout).items() if state in UP_STATES]
    out = []
    for line in stdout.splitlines():
        f = line.split()
        if f and f[0].startswith(unit_prefix) and f[0].endswith(".service"):
            out.append(f[0][len(unit_prefix):-len(".service")])
    return out


def owned(port, running):
    """Whether a program that listens on ``port`` runs (then the port is its own)."""
    return any(name in running for name in [port["program"]] + list(port.get("shared_with") or []))


def conflicts(ports, running, is_taken):
    """The ports (as messages) taken by something other than their program: pure, for the unit tests."""
    msgs = []
    for p in ports:
        if owned(p, running):
            continue
        if is_taken(p["address"], p["port"]):
            msgs.append("%s=%d (%s, for %s)" % (p["var"], p["port"], p["address"], p["program"]))
    return msgs


def main():
    module = AnsibleModule(
        argument_spec=dict(
            ports=dict(type="list", elements="dict", required=True, options=dict(
                var=dict(type="str", required=True),
                address=dict(type="str", required=True),
                port=dict(type="int", required=True),
                program=dict(type="str", required=True),
                shared_with=dict(type="list", elements="str", default=[]),
            )),
            service_manager=dict(type="str", choices=["supervisord", "systemd"], default="supervisord"),
            supervisorctl=dict(type="path"),
            config=dict(type="path"),
            unit_prefix=dict(type="str", default=""),
            timeout=dict(type="float", default=1.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    stdout = ""
    if p["service_manager"] == "systemd":
        cmd = ["systemctl", "list-units", "--type=service", "--state=active", "--no-legend", "--plain",
               p["unit_prefix"] + "*"]
        stdout = module.run_command(cmd)[1]
    elif p["supervisorctl"] and p["config"] and os.path.exists(p["supervisorctl"]) and os.path.exists(p["config"]):
        # rc 3: some program is not running; any other failure (no supervisord yet): nothing runs
        stdout = module.run_command([p["supervisorctl"], "-c", p["config"], "status"])[1]
    running = running_programs(p["service_manager"], stdout or "", p["unit_prefix"])

    def is_taken(address, port):
        host = "127.0.0.1" if address in ("0.0.0.0", "") else ("::1" if address == "::" else address)
        try:
            with socket.create_connection((host, port), timeout=p["timeout"]):
                return True
        except OSError:
            return False

    probed = [q["port"] for q in p["ports"] if not owned(q, running)]
    taken = conflicts(p["ports"], running, is_taken)
    if taken:
        module.fail_json(msg="Port already in use by another process: %s. Stop that process or choose other ports."
                         % "; ".join(taken), running=running, probed=probed)
    module.exit_json(changed=False, running=running, probed=probed)


if __name__ == "__main__":
    main()
