#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: supervisor_programs
short_description: Run one component's programs under a pgha cluster's supervisord
version_added: 0.1.0
description:
  - Writes the programs file of one component (for example C(supervisor.d/keeper.conf)) with the
    given content, lets supervisord apply it (C(supervisorctl update), which restarts only the
    programs whose section changed), starts the programs that do not run, and restarts the ones
    named in O(restart) when nothing else restarted them (the agents after a pgha upgrade).
  - In rolling mode (O(rolling), used by C(playbooks/upgrade.yml)) supervisord only re-reads the
    file (C(supervisorctl reread)) and restarts nothing; the upgrade playbook restarts each program
    in a safe order.
  - One task instead of a template, a status read and conditional commands, so that a rerun of
    C(site.yml) that changes nothing stays fast.
  - Runs on the host of the programs; the cluster's supervisord must be running.
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    details: Reports what it would write, start and restart; only reads the programs' state.
  diff_mode:
    support: full
    details: The programs file before and after.
extends_documentation_fragment:
  - pgha.cluster.attributes
options:
  supervisorctl:
    description: The supervisorctl executable.
    type: path
    required: true
  config:
    description: The cluster's C(supervisord.conf).
    type: path
    required: true
  path:
    description: The programs file of this component (included by C(supervisord.conf)).
    type: path
    required: true
  content:
    description: The programs file's content (rendered from C(roles/pgha/templates/programs.conf.j2)).
    type: str
    required: true
  programs:
    description: Names of the programs the file defines; they are started when they do not run.
    type: list
    elements: str
    required: true
  rolling:
    description: Re-read a changed file without restarting anything (rolling upgrade).
    type: bool
    default: false
  restart:
    description:
      - Programs to restart, unless the file changed (then supervisord restarted what changed) or
        O(rolling) is set.
    type: list
    elements: str
    default: []
  membership_at_once:
    description:
      - In rolling mode, when the file adds or removes programs, apply the whole file at once with
        C(supervisorctl update). Removed programs stop, changed ones restart and new ones start, in
        that order. For programs that share ports (pgha-proxy workers with C(--reuse-port)), where a
        new worker cannot bind beside a running old definition and an old one must stop before the
        last one can bind without it.
      - Without it, rolling mode starts new programs at once and leaves removed ones running, for
        the upgrade playbook to deal with.
      - When the file keeps the same programs, rolling mode still only re-reads it.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Run the keepers
  pgha.cluster.supervisor_programs:
    supervisorctl: /opt/pgha/venv/bin/supervisorctl
    config: /opt/pgha/main/supervisord.conf
    path: /opt/pgha/main/supervisor.d/keeper.conf
    content: "{{ lookup('ansible.builtin.template', 'programs.conf.j2') }}"
    programs: [keeper1, keeper2, keeper3]
"""

RETURN = r"""
file_changed:
  description: Whether the programs file was (or, in check mode, would be) rewritten.
  returned: always
  type: bool
started:
  description: Programs that were not running and were started.
  returned: always
  type: list
  elements: str
  sample: [keeper2]
membership_changed:
  description: Whether the file adds or removes programs (compared with the file it replaces).
  returned: always
  type: bool
restarted:
  description: Programs restarted because of O(restart).
  returned: always
  type: list
  elements: str
states:
  description: Each program's state as supervisorctl reported it before starting the stopped ones.
  returned: always
  type: dict
  sample: {"keeper1": "RUNNING", "keeper2": "STOPPED"}
commands:
  description: The supervisorctl subcommands run (or that would run, in check mode).
  returned: always
  type: list
  elements: str
  sample: ["update", "start keeper2"]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pgha.cluster.plugins.module_utils.local_services import (
    compare_file,
    program_states,
    write_file,
)

RUNNING_STATES = ("RUNNING", "STARTING")


def parse_status(stdout, names):
    """Each named program's state from `supervisorctl status` output; MISSING for one it did not list."""
    states = program_states(stdout)
    return dict((n, states.get(n, "MISSING")) for n in names)


def program_names(content):
    """Names of the [program:NAME] sections of a programs file, in order."""
    out = []
    for line in content.splitlines():
        line = line.strip()
        if line.startswith("[program:") and line.endswith("]"):
            out.append(line[len("[program:"):-1])
    return out


def apply_command(file_changed, rolling, membership_changed, membership_at_once):
    """The supervisorctl subcommand that applies a programs file (None when it did not change)."""
    if not file_changed:
        return None
    if rolling and not (membership_changed and membership_at_once):
        return "reread"
    return "update"


def plan(states, rolling, restart):
    """The supervisorctl subcommands that bring the programs to run: pure, for the unit tests.

    states: each program's state after the file was applied; restart: programs to restart as well
    (empty when the file changed: supervisord restarted what changed).
    """
    cmds = []
    missing = [n for n, s in states.items() if s == "MISSING"]
    stopped = [n for n, s in states.items() if s not in RUNNING_STATES and s != "MISSING"]
    for name in missing:  # new in a re-read file (rolling mode): add it, which starts it
        cmds.append(["add", name])
    if stopped:
        cmds.append(["start"] + stopped)
    todo = [n for n in restart if n not in stopped and n not in missing] if not rolling else []
    if todo:
        cmds.append(["restart"] + todo)
    return cmds


def main():
    module = AnsibleModule(
        argument_spec=dict(
            supervisorctl=dict(type="path", required=True),
            config=dict(type="path", required=True),
            path=dict(type="path", required=True),
            content=dict(type="str", required=True),
            programs=dict(type="list", elements="str", required=True),
            rolling=dict(type="bool", default=False),
            restart=dict(type="list", elements="str", default=[]),
            membership_at_once=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    ctl = [p["supervisorctl"], "-c", p["config"]]

    def run(args, ok=(0,)):
        rc, out, err = module.run_command(ctl + args)
        if rc not in ok:
            module.fail_json(msg="supervisorctl %s failed (rc %d): %s" % (" ".join(args), rc, (err or out).strip()),
                             rc=rc, stdout=out, stderr=err)
        return out

    if not os.path.exists(p["config"]):
        module.fail_json(msg="no supervisord configuration at %s: run the pgha role first" % p["config"])

    content, file_changed, diff = compare_file(p["path"], p["content"])
    if file_changed and not module.check_mode:
        write_file(module, p["path"], content)

    membership_changed = file_changed and set(program_names(diff["before"])) != set(p["programs"])
    sub = apply_command(file_changed, p["rolling"], membership_changed, p["membership_at_once"])
    rolling = p["rolling"] and sub != "update"
    commands = []
    if sub:
        commands.append(sub)
        if not module.check_mode:
            run([sub])

    # rc 3: some program is not running; supervisorctl 4 also exits non-zero for an unknown name
    status_out = run(["status"] + p["programs"], ok=(0, 3, 4))
    states = parse_status(status_out, p["programs"])
    if module.check_mode and sub == "update":
        # update would add the new programs and start them (autostart)
        states = dict((n, "RUNNING" if s == "MISSING" else s) for n, s in states.items())
    started, restarted = [], []
    for cmd in plan(states, rolling, p["restart"] if not file_changed else []):
        commands.append(" ".join(cmd))
        if cmd[0] in ("start", "add"):
            started += cmd[1:]
        elif cmd[0] == "restart":
            restarted = cmd[1:]
        if not module.check_mode:
            run(cmd)

    module.exit_json(changed=bool(commands), file_changed=file_changed, membership_changed=membership_changed,
                     started=started, restarted=restarted,
                     states=states, commands=commands, diff=diff if file_changed else dict(before="", after=""))


if __name__ == "__main__":
    main()
