#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: cluster
short_description: Initialize a pgha cluster or bring its spec to the one given
version_added: 0.1.0
description:
  - On a cluster that has no spec yet, writes O(spec) as C(pghactl init) does; the leading sentinel
    then picks a keeper to run initdb and makes the others replicas.
  - On an initialized cluster, compares the normalized O(spec) (defaults filled in) with the stored
    one and, when they differ, stores O(spec) by compare-and-swap on the revision it read (a spec
    changed by someone else meanwhile is read again, never merged blindly). A rerun with the same
    spec changes nothing.
  - The spec is validated by the pgha library before anything is written; an unknown key or a bad
    value fails naming the key.
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.store
attributes:
  check_mode:
    support: full
    details: Validates the spec and reports what would change, writing nothing.
  diff_mode:
    support: full
    details: Shows the stored and the desired normalized spec.
options:
  spec:
    description:
      - The desired cluster spec (snake_case keys, see docs/operations.md in the collection). Keys left out take their
        default, so removing a key from O(spec) resets it.
      - Durations are seconds or strings such as V(500ms) or V(5s).
    type: dict
    default: {}
  reinit:
    description:
      - Initialize again even when the cluster already has a spec (C(pghactl init --yes)).
        Destroys the cluster's current data. Never needed for a spec change.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Initialize the cluster (or apply a changed spec)
  pgha.cluster.cluster:
    cluster_name: main
    store_endpoints: http://127.0.0.1:12379
    spec:
      synchronous_replication: true
      pg_parameters:
        max_connections: "200"
  diff: true

- name: Set the store connection once for every pgha.cluster module
  module_defaults:
    group/pgha.cluster.store:
      cluster_name: main
      store_endpoints: http://127.0.0.1:12379
  block:
    - name: Apply the spec
      pgha.cluster.cluster:
        spec:
          fail_interval: 5s
"""

RETURN = r"""
action:
  description: What was done (or would be done in check mode).
  returned: success
  type: str
  choices: [init, update, none]
  sample: update
spec:
  description: The normalized spec after the module ran (the desired one in check mode).
  returned: success
  type: dict
  sample:
    fail_interval: 5.0
    synchronous_replication: true
patch:
  description: The merge patch (RFC 7386) from the stored spec to the new one (empty for init and for no change).
  returned: success
  type: dict
  sample:
    fail_interval: 5.0
"""

from ansible_collections.pgha.cluster.plugins.module_utils.client import (
    CtlError,
    StoreError,
    fail_from,
    open_ctl,
    patch_between,
    run_ctl_module,
)


def run(module, ctl):
    """Decide and apply; returns the exit_json arguments."""
    spec = module.params["spec"] or {}
    what = "cluster %s" % module.params["cluster_name"]
    try:
        current = ctl.get_spec()
        # the init keys (init_mode, pitr...) all left out: the stored ones (a restored cluster keeps its)
        # (successor: pgha >= 0.1 with point-in-time recovery; an older library on the host has none)
        successor = getattr(ctl, "successor", None)
        desired = ctl.normalize(spec) if module.params["reinit"] or successor is None else successor(spec)
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, "checking the spec of " + what)

    if current is None or module.params["reinit"]:
        result = dict(changed=True, action="init", spec=desired, patch={},
                      diff=dict(before=current or {}, after=desired))
        if not module.check_mode:
            try:
                result["spec"] = ctl.init(spec, force=module.params["reinit"])
            except (CtlError, StoreError) as exc:
                fail_from(module, exc, "initializing " + what)
            result["diff"]["after"] = result["spec"]
        return result

    if current == desired:
        return dict(changed=False, action="none", spec=current, patch={})
    result = dict(changed=True, action="update", spec=desired, patch=patch_between(current, desired),
                  diff=dict(before=current, after=desired))
    if not module.check_mode:
        try:
            old, new = ctl.set_spec(spec)
        except (CtlError, StoreError) as exc:
            fail_from(module, exc, "updating the spec of " + what)
        result.update(changed=old != new, spec=new, patch=patch_between(old, new), diff=dict(before=old, after=new))
    return result


def main():
    run_ctl_module(run, dict(
        spec=dict(type="dict", default={}),
        reinit=dict(type="bool", default=False),
    ), open_ctl)


if __name__ == "__main__":
    main()
