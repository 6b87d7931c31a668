# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

import json

import pytest
from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes


class ExitJson(Exception):
    pass


class FailJson(Exception):
    pass


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise ExitJson(kwargs)


def _fail_json(self, **kwargs):
    kwargs["failed"] = True
    raise FailJson(kwargs)


@pytest.fixture
def run_module(monkeypatch):
    """run_module(module, args, check_mode=False, diff=False) -> (result dict, failed bool)."""
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", _exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", _fail_json)

    def run(module, args, check_mode=False, diff=False):
        args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
        payload = json.dumps({"ANSIBLE_MODULE_ARGS": args})
        try:
            from ansible.module_utils.testing import patch_module_args
        except ImportError:  # ansible-core < 2.19
            monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(payload))
            ctx = None
        else:
            ctx = patch_module_args(args)
        try:
            if ctx is not None:
                with ctx:
                    module.main()
            else:
                module.main()
        except ExitJson as e:
            return e.args[0], False
        except FailJson as e:
            return e.args[0], True
        raise AssertionError("the module returned without exit_json or fail_json")

    return run
