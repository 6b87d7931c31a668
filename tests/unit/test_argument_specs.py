# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""Each role's meta/argument_specs.yml documents exactly the variables of its defaults/main.yml."""

from __future__ import annotations

import os

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ROLES = sorted(os.listdir(os.path.join(ROOT, "roles")))


def load(role, *parts):
    with open(os.path.join(ROOT, "roles", role, *parts)) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_mirror_defaults(role):
    defaults = load(role, "defaults", "main.yml")
    options = load(role, "meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)
    for name, spec in options.items():
        assert spec.get("description"), "%s: %s has no description" % (role, name)
        if "default" in spec:
            assert spec["default"] == defaults[name], "%s: %s default differs from defaults/main.yml" % (role, name)


@pytest.mark.parametrize("role", ROLES)
def test_public_variables_carry_the_role_prefix(role):
    for name in load(role, "defaults", "main.yml"):
        assert name.startswith(role + "_"), name
