# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""Shared glue between the pgha.cluster modules and the installed ``pgha`` library.

Nothing here reasons about the cluster: it parses connection options, opens the store, and turns
the library's exceptions into ``fail_json`` with a clear message.
"""

from __future__ import annotations

import importlib
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

PGHA_IMPORT_ERROR = None
try:
    from pgha.ctl import Ctl, CtlError
    from pgha.store import StoreError, open_store
except ImportError:  # pragma: no cover - exercised through HAS_PGHA in tests
    Ctl = None
    open_store = None

    class CtlError(Exception):  # type: ignore[no-redef]
        """Stand-in so that except clauses work when pgha is missing."""

    class StoreError(Exception):  # type: ignore[no-redef]
        """Stand-in so that except clauses work when pgha is missing."""

    PGHA_IMPORT_ERROR = traceback.format_exc()
    HAS_PGHA = False
else:
    HAS_PGHA = True


def store_argument_spec():
    """The options of plugins/doc_fragments/store.py."""
    return dict(
        cluster_name=dict(type="str", default="main"),
        store_endpoints=dict(type="str", required=True),
        store_prefix=dict(type="str", default="pgha"),
        store_ca_file=dict(type="path"),
        store_cert_file=dict(type="path"),
        store_key_file=dict(type="path"),
        store_user=dict(type="str"),
        store_password_file=dict(type="path", no_log=False),
        store_timeout=dict(type="float", default=2.0),
    )


def pgha_library(name):
    """The pgha library's module ``pgha.<name>``, or None when it is not installed (require_pgha
    then fails the module with a clear message)."""
    try:
        return importlib.import_module("pgha." + name)
    except ImportError:
        return None


def require_pgha(module):
    if not HAS_PGHA:
        module.fail_json(
            msg=missing_required_lib(
                "pgha",
                reason="the pgha.cluster modules drive the installed pgha library; run them with the "
                "agents' interpreter (ansible_python_interpreter: /opt/pgha/venv/bin/python) or "
                "pip install ./files/agents",
            ),
            exception=PGHA_IMPORT_ERROR,
        )


def open_store_from_params(module):
    """The store named by the module's connection options, or fail_json."""
    require_pgha(module)
    p = module.params
    try:
        password = None
        if p["store_password_file"]:
            password = pgha_library("cli").read_secret_file(p["store_password_file"], "store_password_file")
        return open_store(
            p["store_endpoints"],
            ca_file=p["store_ca_file"],
            cert_file=p["store_cert_file"],
            key_file=p["store_key_file"],
            timeout=p["store_timeout"],
            user=p["store_user"],
            password=password,
        )
    except StoreError as exc:
        module.fail_json(msg="cannot open the store at %s: %s" % (p["store_endpoints"], exc))


def open_ctl(module):
    """A ``pgha.ctl.Ctl`` for the module's cluster, or fail_json."""
    store = open_store_from_params(module)
    return Ctl(store, prefix=module.params["store_prefix"], cluster=module.params["cluster_name"])


def fail_from(module, exc, what, **result):
    """fail_json for a library error, naming what was being done."""
    if isinstance(exc, StoreError):
        kind = "store error"
    elif isinstance(exc, CtlError):
        kind = "pgha refused"
    else:
        kind = type(exc).__name__
    module.fail_json(msg="%s: %s: %s" % (what, kind, exc), **result)


def run_ctl_module(run, argument_spec, open_ctl_fn):
    """The whole main() of a module that steers the cluster through a ``Ctl``.

    ``argument_spec`` adds the module's own options to the store options; ``run(module, ctl)``
    decides and acts and returns the exit_json arguments, with a ``diff`` that is shown only under
    C(--diff). ``open_ctl_fn`` is the module's ``open_ctl`` (tests replace it there).
    """
    spec = store_argument_spec()
    spec.update(argument_spec)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    result = run(module, open_ctl_fn(module))
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


def patch_between(old, new):
    """The JSON merge patch (RFC 7386) that turns the document ``old`` into ``new`` ({} when equal):
    keys missing from ``new`` become None (deletion), objects are compared key by key, any other
    value (lists too) is replaced whole. Applying one is pgha.spec.merge_patch's job."""
    patch = dict((key, None) for key in old if key not in new)
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = patch_between(old[key], value)
            if sub:
                patch[key] = sub
        elif value != old[key]:
            patch[key] = value
    return patch
