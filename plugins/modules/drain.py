#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: drain
short_description: Drain a pgha replica before maintenance, or end the drain
version_added: 0.1.0
description:
  - O(drained=true) asks the leading sentinel (C(pghactl drain)) to move the synchronous standby
    role away from the keeper, when another streaming replica can take it, and to stop sending
    read-only clients to it; waits until the primary runs the new C(synchronous_standby_names) and
    every proxy follows. Restarting a drained replica then stalls no commit.
  - When no other replica can take its place the keeper stays a synchronous standby (commits are
    never acknowledged unreplicated); RV(synchronous) says so and the module warns.
  - O(drained=false) ends the drain.
  - The primary cannot be drained (switch over first).
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.store
attributes:
  check_mode:
    support: full
    details: Reports whether the drain flag would change.
  diff_mode:
    support: full
    details: The keeper's drain flag before and after.
options:
  keeper:
    description: Uid of the keeper.
    type: str
    required: true
  drained:
    description: Drain (V(true)) or end the drain (V(false)).
    type: bool
    default: true
  timeout:
    description: Seconds to wait until the drain settles.
    type: float
    default: 30.0
"""

EXAMPLES = r"""
- name: Drain keeper2 before restarting it
  pgha.cluster.drain:
    store_endpoints: http://127.0.0.1:12379
    keeper: keeper2

- name: Put it back once it has caught up
  pgha.cluster.drain:
    store_endpoints: http://127.0.0.1:12379
    keeper: keeper2
    drained: false
"""

RETURN = r"""
drained:
  description: The keeper's drain flag after the module ran.
  returned: success
  type: bool
synchronous:
  description: Whether the keeper is still a synchronous standby (no other replica could take its place).
  returned: success
  type: bool
read_only_target:
  description: Whether proxies still send read-only clients to it.
  returned: success
  type: bool
"""

from ansible_collections.pgha.cluster.plugins.module_utils.client import (
    CtlError,
    StoreError,
    fail_from,
    open_ctl,
    run_ctl_module,
)


def run(module, ctl):
    uid = module.params["keeper"]
    want = module.params["drained"]
    what = "drain of keeper %s" % uid
    try:
        keepers = dict((k["uid"], k) for k in ctl.status()["keepers"])
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, what)
    if uid not in keepers:
        module.fail_json(msg="no keeper %s in cluster %s (keepers: %s)"
                         % (uid, module.params["cluster_name"], ", ".join(sorted(keepers)) or "none"))
    before = keepers[uid].get("drained", False)
    diff = {"before": {"drained": before}, "after": {"drained": want}}
    if module.check_mode:
        return {"changed": before != want, "drained": want, "synchronous": keepers[uid]["synchronous"],
                "read_only_target": None, "diff": diff}
    try:
        # also when the flag is already set: wait until the drain has settled
        state = ctl.drain(uid, drained=want, timeout=module.params["timeout"])
    except (CtlError, StoreError) as exc:
        fail_from(module, exc, what)
    if want and state["synchronous"]:
        module.warn("keeper %s stays a synchronous standby: no other streaming replica can take its place, "
                    "so restarting it stalls commits until it is back" % uid)
    return {"changed": before != want, "drained": want, "synchronous": state["synchronous"],
            "read_only_target": state.get("read_only_target"), "diff": diff}


def main():
    run_ctl_module(run, dict(
        keeper=dict(type="str", required=True),
        drained=dict(type="bool", default=True),
        timeout=dict(type="float", default=30.0),
    ), open_ctl)


if __name__ == "__main__":
    main()
