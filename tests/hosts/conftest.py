"""tests/hosts: scripts/testhosts.py against the real machine (root, network namespaces, nspawn)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: boots systemd-nspawn containers (debootstraps a rootfs once, ~70 s)")
