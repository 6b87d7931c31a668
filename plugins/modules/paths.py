#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: paths
short_description: Ensure the directories and files of a pgha cluster have their owner and mode
version_added: 0.1.0
description:
  - For each entry, creates the directory when it is missing (V(state=directory)) and sets its
    owner, group and mode; for V(state=file), sets the owner, group and mode of an existing file
    (a missing file is reported in RV(missing), not created).
  - One task for the whole layout of a cluster instead of one M(ansible.builtin.file) call per
    path, so that a rerun of C(site.yml) that changes nothing stays fast.
  - Parent directories of a new directory are created owned by root with mode 0755.
  - Never follows a symbolic link at a path. One there is an error, and owner and mode are set
    through a descriptor opened with C(O_NOFOLLOW), so a link swapped in after the check fails too.
author:
  - pgha developers (!UNKNOWN)
attributes:
  check_mode:
    support: full
    details: Reports what it would create or change.
  diff_mode:
    support: full
    details: Each changed path's owner, group and mode before and after.
extends_documentation_fragment:
  - pgha.cluster.attributes
options:
  paths:
    description: The paths.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      state:
        description: A directory to create, or an existing file.
        type: str
        choices: [directory, file]
        default: directory
      owner:
        description: User name.
        type: str
        default: root
      group:
        description: Group name.
        type: str
        default: root
      mode:
        description: Octal mode as a string, for example V("0700").
        type: str
        required: true
"""

EXAMPLES = r"""
- name: Lay out the cluster directory
  pgha.cluster.paths:
    paths:
      - {path: /opt/pgha/main, mode: "0755"}
      - {path: /opt/pgha/main/data, owner: pgha, group: pgha, mode: "0700"}
      - {path: /opt/pgha/main/secrets/pg_su_password, state: file, owner: pgha, group: pgha, mode: "0600"}
"""

RETURN = r"""
changed_paths:
  description: The paths created or changed.
  returned: always
  type: list
  elements: str
missing:
  description: Files (V(state=file)) that do not exist.
  returned: always
  type: list
  elements: str
"""

import errno
import grp
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule


def wanted_ids(entry):
    """(uid, gid, mode) wanted for an entry; KeyError names an unknown user or group."""
    try:
        uid = pwd.getpwnam(entry["owner"]).pw_uid
    except KeyError:
        raise KeyError("no user %s" % entry["owner"]) from None
    try:
        gid = grp.getgrnam(entry["group"]).gr_gid
    except KeyError:
        raise KeyError("no group %s" % entry["group"]) from None
    return uid, gid, int(entry["mode"], 8)


def set_owner_and_mode(path, directory, uid, gid, mode):
    """chown and chmod through a descriptor opened without following a link at ``path``: a link put
    there after the check above (by a user who may write the parent) fails instead of handing its
    target to that user."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if directory:
        flags |= os.O_DIRECTORY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(exc.errno, "is a symbolic link or not a %s: refusing to follow it"
                          % ("directory" if directory else "file")) from None
        raise
    try:
        st = os.fstat(fd)
        if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
            raise OSError(errno.EINVAL, "is not a %s" % ("directory" if directory else "regular file"))
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def describe(st):
    if st is None:
        return "absent"
    return "%s:%s %04o" % (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type="list", elements="dict", required=True, options=dict(
                path=dict(type="path", required=True),
                state=dict(type="str", choices=["directory", "file"], default="directory"),
                owner=dict(type="str", default="root"),
                group=dict(type="str", default="root"),
                mode=dict(type="str", required=True),
            )),
        ),
        supports_check_mode=True,
    )
    changed, missing, before, after = [], [], {}, {}
    for entry in module.params["paths"]:
        path = entry["path"]
        if not os.path.isabs(path):
            module.fail_json(msg="%s is not an absolute path" % path)
        try:
            uid, gid, mode = wanted_ids(entry)
        except (KeyError, ValueError) as exc:
            module.fail_json(msg="%s: %s" % (path, exc.args[0] if exc.args else exc))
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is None and entry["state"] == "file":
            missing.append(path)
            continue
        if st is not None:
            want_dir = entry["state"] == "directory"
            if not (stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)):
                kind = "directory" if want_dir else "regular file"
                module.fail_json(msg="%s exists but is not a %s" % (path, kind))
            if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode):
                continue
        changed.append(path)
        before[path] = describe(st)
        after[path] = "%s:%s %04o" % (uid, gid, mode)
        if module.check_mode:
            continue
        try:
            if st is None:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                os.mkdir(path, mode)
            set_owner_and_mode(path, entry["state"] == "directory", uid, gid, mode)
        except OSError as exc:
            module.fail_json(msg="%s: %s" % (path, exc.strerror or exc), changed_paths=changed)
    module.exit_json(changed=bool(changed), changed_paths=changed, missing=missing,
                     diff=dict(before=before, after=after) if changed else {})


if __name__ == "__main__":
    main()
