#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
module: http_health
short_description: Wait until every given pgha agent's HTTP endpoint answers 200
version_added: 0.1.0
description:
  - Polls each URL (a keeper's C(/metrics) or C(/health), a proxy's C(/health)) until all of them
    answer with status 200, or fails after O(timeout) seconds naming the ones that did not and what
    they answered.
  - One task for all the agents of a host, instead of one request per agent.
author:
  - pgha developers (!UNKNOWN)
extends_documentation_fragment:
  - pgha.cluster.attributes
  - pgha.cluster.attributes.info_module
options:
  urls:
    description: The URLs, as a mapping from a name (the agent's uid) to its URL.
    type: dict
    required: true
  timeout:
    description: Seconds to wait for all of them.
    type: float
    default: 60
  interval:
    description: Seconds between rounds of requests.
    type: float
    default: 0.5
"""

EXAMPLES = r"""
- name: Wait until every keeper answers on its API
  pgha.cluster.http_health:
    urls:
      keeper1: http://127.0.0.1:8433/metrics
      keeper2: http://127.0.0.1:8434/metrics
    timeout: 60
"""

RETURN = r"""
status:
  description: The last HTTP status of each URL (0 when it did not answer).
  returned: always
  type: dict
  sample: {"keeper1": 200, "keeper2": 200}
elapsed:
  description: Seconds until all answered.
  returned: success
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url


def fetch(url, timeout):
    """The HTTP status of url, with the reason when it did not answer 200."""
    try:
        resp = open_url(url, timeout=timeout, validate_certs=False)
        return resp.getcode(), ""
    except Exception as exc:  # HTTPError carries a code; anything else did not answer
        return getattr(exc, "code", 0) or 0, str(exc)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            urls=dict(type="dict", required=True),
            timeout=dict(type="float", default=60),
            interval=dict(type="float", default=0.5),
        ),
        supports_check_mode=True,
    )
    urls = dict((k, str(v)) for k, v in module.params["urls"].items())
    start = time.monotonic()
    deadline = start + module.params["timeout"]
    status = dict((k, 0) for k in urls)
    reasons = {}
    pending = dict(urls)
    while True:
        for name, url in list(pending.items()):
            code, reason = fetch(url, min(3.0, max(0.5, deadline - time.monotonic())))
            status[name] = code
            if code == 200:
                del pending[name]
                reasons.pop(name, None)
            else:
                reasons[name] = reason or "HTTP %d" % code
        if not pending:
            module.exit_json(changed=False, status=status, elapsed=round(time.monotonic() - start, 3))
        if time.monotonic() >= deadline:
            module.fail_json(msg="no healthy answer within %gs from: %s" % (
                module.params["timeout"], "; ".join("%s %s (%s)" % (n, u, reasons.get(n, "")) for n, u in pending.items())),
                status=status)
        time.sleep(module.params["interval"])


if __name__ == "__main__":
    main()
