# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""The pgha agents that the roles install must carry the collection's version: the roles reinstall
pgha only when the installed version differs from files/agents, so the two move together."""

from __future__ import annotations

import os
import re

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_agents_version_follows_the_collection_version():
    collection = yaml.safe_load(read("galaxy.yml"))["version"]
    pyproject = re.search(r'(?m)^version\s*=\s*"([^"]+)"', read("files", "agents", "pyproject.toml")).group(1)
    init = re.search(r'(?m)^__version__\s*=\s*"([^"]+)"', read("files", "agents", "src", "pgha", "__init__.py")).group(1)
    assert pyproject == collection, "files/agents/pyproject.toml version must equal galaxy.yml's"
    assert init == collection, "pgha.__version__ must equal galaxy.yml's version"
