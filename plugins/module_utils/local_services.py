# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""Shared by the modules that run a cluster's programs on its hosts (supervisord, supervisor_programs,
ports_free): reading `supervisorctl status`, and writing a configuration file only when its content
changes."""

from __future__ import annotations

import os
import tempfile


def program_states(stdout):
    """Each program's state from `supervisorctl status` output, in its order. A name supervisord does
    not know ("keeper9: ERROR (no such process)") is MISSING."""
    states = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        if fields[0].endswith(":"):
            states[fields[0][:-1]] = "MISSING"
        else:
            states[fields[0]] = fields[1]
    return states


def compare_file(path, content):
    """(content ending in a newline, whether the file at path differs, diff for Ansible)."""
    if not content.endswith("\n"):
        content += "\n"
    before = ""
    if os.path.exists(path):
        with open(path) as f:
            before = f.read()
    diff = dict(before=before, after=content, before_header=path, after_header=path)
    return content, before != content, diff


def write_file(module, path, content, mode=0o644):
    """Replace the file at path with content atomically (a reader never sees half of it)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".pgha-")
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chmod(tmp, mode)
    module.atomic_move(tmp, path)
