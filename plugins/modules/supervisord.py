#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: supervisord
short_description: Configure and start the supervisord of one pgha cluster on a host
version_added: 0.1.0
description:
  - Writes the cluster's C(supervisord.conf) with the given content and starts supervisord when it
    does not run, waiting until it answers.
  - A running supervisord is not restarted when its configuration changed (that would restart every
    program of the cluster at once); the module warns and returns RV(restart_needed). Programs are
    managed by M(pgha.cluster.supervisor_programs), which supervisord picks up from its include
    directory.
  - One task instead of a template, a status command and a conditional start, so that a rerun of
    C(site.yml) that changes nothing stays fast.
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    details: Reports whether it would write the configuration or start supervisord.
  diff_mode:
    support: full
    details: The configuration before and after.
extends_documentation_fragment:
  - pgha.cluster.attributes
options:
  supervisord:
    description: The supervisord executable.
    type: path
    required: true
  supervisorctl:
    description: The supervisorctl executable.
    type: path
    required: true
  config:
    description: Path of the cluster's C(supervisord.conf).
    type: path
    required: true
  content:
    description: Its content (rendered from C(roles/pgha/templates/supervisord.conf.j2)).
    type: str
    required: true
  timeout:
    description: Seconds to wait for a started supervisord to answer.
    type: float
    default: 15
"""

EXAMPLES = r"""
- name: Run the cluster's supervisord
  pgha.cluster.supervisord:
    supervisord: /opt/pgha/venv/bin/supervisord
    supervisorctl: /opt/pgha/venv/bin/supervisorctl
    config: /opt/pgha/main/supervisord.conf
    content: "{{ lookup('ansible.builtin.template', 'supervisord.conf.j2') }}"
"""

RETURN = r"""
pid:
  description: The pid of the running supervisord (0 in check mode when it would be started).
  returned: success
  type: int
  sample: 4711
started:
  description: Whether supervisord was (or would be) started.
  returned: success
  type: bool
config_changed:
  description: Whether the configuration was (or would be) rewritten.
  returned: success
  type: bool
restart_needed:
  description: The configuration changed under a running supervisord, which keeps its old settings until restarted.
  returned: success
  type: bool
"""

import os
import re
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.local_services import compare_file, write_file


def main():
    module = AnsibleModule(
        argument_spec=dict(
            supervisord=dict(type="path", required=True),
            supervisorctl=dict(type="path", required=True),
            config=dict(type="path", required=True),
            content=dict(type="str", required=True),
            timeout=dict(type="float", default=15),
        ),
        supports_check_mode=True,
    )
    p = module.params
    for exe in ("supervisord", "supervisorctl"):
        if not os.access(p[exe], os.X_OK):
            module.fail_json(msg="%s=%s is not an executable: the agents' venv lacks supervisor" % (exe, p[exe]))

    content, config_changed, diff = compare_file(p["config"], p["content"])

    def running_pid():
        if not os.path.exists(p["config"]):
            return 0
        rc, out, dummy = module.run_command([p["supervisorctl"], "-c", p["config"], "pid"])
        out = out.strip()
        return int(out) if rc == 0 and re.match(r"^[0-9]+$", out) else 0

    pid = running_pid()
    if module.check_mode:
        module.exit_json(changed=config_changed or not pid, pid=pid, started=not pid, config_changed=config_changed,
                         restart_needed=bool(pid and config_changed), diff=diff if config_changed else {})

    if config_changed:
        write_file(module, p["config"], content)

    started = False
    if not pid:
        rc, out, err = module.run_command([p["supervisord"], "-c", p["config"]])
        if rc != 0:
            module.fail_json(msg="supervisord -c %s failed (rc %d): %s" % (p["config"], rc, (err or out).strip()))
        started = True
        deadline = time.monotonic() + p["timeout"]
        while not pid:
            pid = running_pid()
            if not pid:
                if time.monotonic() > deadline:
                    module.fail_json(msg="supervisord -c %s started but does not answer after %gs; see its log"
                                     % (p["config"], p["timeout"]))
                time.sleep(0.2)
    elif config_changed:
        module.warn("supervisord (pid %d) runs with its previous configuration; restart it to apply %s "
                    "(this restarts every program of the cluster)" % (pid, p["config"]))

    module.exit_json(changed=config_changed or started, pid=pid, started=started, config_changed=config_changed,
                     restart_needed=bool(config_changed and not started), diff=diff if config_changed else {})


if __name__ == "__main__":
    main()
