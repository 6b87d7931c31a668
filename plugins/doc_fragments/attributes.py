# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations


class ModuleDocFragment:
    # What the attributes mean, once for every module; each module adds its support and details
    # (extends_documentation_fragment: pgha.cluster.attributes), or, when it only reads, takes
    # pgha.cluster.attributes.info_module as well and says nothing more.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and tell what it would change without changing anything.
  diff_mode:
    description: Returns what changed (or, in check mode, what would change) when run with C(--diff).
"""

    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This module only reads.
  diff_mode:
    support: N/A
    details:
      - This module only reads.
"""
