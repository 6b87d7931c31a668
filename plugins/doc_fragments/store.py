# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)

from __future__ import annotations


class ModuleDocFragment:
    # Connection to the pgha store (etcd v3). Shared by every module of the
    # pgha.cluster.store action group, so it can be set once with module_defaults.
    DOCUMENTATION = r"""
options:
  cluster_name:
    description:
      - Name of the pgha cluster (the agents' C(--cluster-name)).
    type: str
    default: main
  store_endpoints:
    description:
      - Comma-separated etcd v3 endpoints, C(http(s)://host:port), tried in order
        (the agents' C(--store-endpoints)).
    type: str
    required: true
  store_prefix:
    description:
      - Key prefix in the store (the agents' C(--store-prefix)).
    type: str
    default: pgha
  store_ca_file:
    description:
      - CA certificate used to verify etcd's TLS certificate.
    type: path
  store_cert_file:
    description:
      - Client certificate for TLS to etcd.
    type: path
  store_key_file:
    description:
      - Key of O(store_cert_file).
    type: path
  store_user:
    description:
      - etcd user, when etcd authentication is on (the roles use C(<cluster>-operator)).
    type: str
  store_password_file:
    description:
      - File on the managed host holding O(store_user)'s password (never the password itself).
    type: path
  store_timeout:
    description:
      - Seconds before one store request fails.
    type: float
    default: 2.0
requirements:
  - The C(pgha) Python package (C(pip install ./files/agents)) importable by the
    interpreter that runs the module, for example the agents' venv C(/opt/pgha/venv/bin/python).
notes:
  - All modules of the C(pgha.cluster.store) action group accept these options, so they can be
    given once with C(module_defaults) and C(group/pgha.cluster.store).
"""
