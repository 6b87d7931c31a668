#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: switchover
short_description: Move the primary of a pgha cluster to another keeper
version_added: 0.1.0
description:
  - Asks the leading sentinel for a planned switchover (C(pghactl switchover)) and waits for it
    to finish - the proxies hold new writes, the target catches up with the old primary's last
    WAL position, is promoted, and the old primary rejoins as a replica. No acknowledged commit
    is lost.
  - With O(to) naming the keeper that is already primary, nothing changes.
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.store
attributes:
  check_mode:
    support: full
    details: Reports whether a switchover would happen, without asking for it.
  diff_mode:
    support: full
    details: Shows the primary before and after.
options:
  to:
    description:
      - Uid of the keeper to promote. When left out, the sentinel picks the most advanced healthy
        replica.
    type: str
  timeout:
    description:
      - Seconds to wait for the switchover to finish before failing.
    type: float
    default: 60.0
"""

EXAMPLES = r"""
- name: Switch over to keeper2
  pgha.cluster.switchover:
    store_endpoints: http://127.0.0.1:12379
    to: keeper2

- name: Switch over to the best replica
  pgha.cluster.switchover:
    store_endpoints: http://127.0.0.1:12379
    timeout: 120
  register: pgha_switchover
"""

RETURN = r"""
from:
  description: Uid of the primary before the switchover.
  returned: success
  type: str
  sample: keeper1
to:
  description: Uid of the primary after the switchover (in check mode, the requested one or null).
  returned: success
  type: str
  sample: keeper2
state:
  description: V(done) after a switchover, V(unchanged) when O(to) already was primary,
    V(planned) in check mode.
  returned: success
  type: str
  sample: done
"""

from ansible_collections.pgha.cluster.plugins.module_utils.client import (
    CtlError,
    StoreError,
    fail_from,
    open_ctl,
    run_ctl_module,
)


def run(module, ctl):
    to = module.params["to"]
    what = "switchover of cluster %s" % module.params["cluster_name"]
    try:
        primary = (ctl.status().get("cluster") or {}).get("primary")
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, what)
    if to is not None and to == primary:
        return {"changed": False, "from": primary, "to": primary, "state": "unchanged"}
    if module.check_mode:
        return {"changed": True, "from": primary, "to": to, "state": "planned",
                "diff": {"before": {"primary": primary}, "after": {"primary": to or "(best replica)"}}}
    try:
        done = ctl.switchover(to=to, timeout=module.params["timeout"])
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, what)
    return {"changed": True, "from": done.get("from", primary), "to": done.get("to"),
            "state": done.get("state", "done"),
            "diff": {"before": {"primary": done.get("from", primary)}, "after": {"primary": done.get("to")}}}


def main():
    run_ctl_module(run, dict(
        to=dict(type="str"),
        timeout=dict(type="float", default=60.0),
    ), open_ctl)


if __name__ == "__main__":
    main()
