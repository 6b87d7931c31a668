# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""The members inventory plugin with a real InventoryData, fed a fake status document."""

from __future__ import annotations

import pytest
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader

from ansible_collections.pgha.cluster.plugins.inventory import members
from ansible_collections.pgha.cluster.tests.unit.plugins.modules.fake_pgha import fake_status

ETCD = [
    {"endpoint": "http://127.0.0.1:12379", "healthy": True, "leader": "aa", "member_id": "aa", "version": "3.4.23",
     "error": ""},
    {"endpoint": "http://127.0.0.1:12381", "healthy": True, "leader": "aa", "member_id": "bb", "version": "3.4.23",
     "error": ""},
    {"endpoint": "http://127.0.0.1:12383", "healthy": False, "leader": None, "member_id": None,
     "error": "connection refused"},
]

CONFIG = """
plugin: pgha.cluster.members
cluster_name: main
store_endpoints: http://127.0.0.1:12379
"""


@pytest.fixture
def load(tmp_path, monkeypatch):
    def run(status, etcd=None, extra=""):
        etcd = ETCD if etcd is None else etcd
        path = tmp_path / "live.pgha.yml"
        path.write_text(CONFIG + extra)
        plugin = inventory_loader.get("pgha.cluster.members")
        monkeypatch.setattr(plugin, "_fetch", lambda: (status, etcd))
        inventory = InventoryData()
        plugin.parse(inventory, DataLoader(), str(path), cache=False)
        return inventory
    return run


def hosts(inventory, group):
    return sorted(h.name for h in inventory.groups[group].get_hosts())


def test_accepts_only_pgha_yml_files(tmp_path):
    plugin = members.InventoryModule()
    for name, ok in [("a.pgha.yml", True), ("a.pgha.yaml", True), ("a.yml", False), ("pgha.yml", False)]:
        path = tmp_path / name
        path.write_text(CONFIG)
        assert plugin.verify_file(str(path)) is ok, name


def test_every_member_is_a_host_grouped_by_component(load):
    inv = load(fake_status())
    assert hosts(inv, "pgha_keepers") == ["keeper1", "keeper2", "keeper3"]
    assert hosts(inv, "pgha_sentinels") == ["sentinel1", "sentinel2"]
    assert hosts(inv, "pgha_proxies") == ["proxy1"]
    assert hosts(inv, "pgha_etcd") == ["etcd_127_0_0_1_12379", "etcd_127_0_0_1_12381", "etcd_127_0_0_1_12383"]


def test_groups_by_live_role(load):
    inv = load(fake_status())
    assert hosts(inv, "pgha_primary") == ["keeper1"]
    assert hosts(inv, "pgha_replica") == ["keeper2", "keeper3"]
    assert hosts(inv, "pgha_sentinel_leader") == ["sentinel1"]
    assert hosts(inv, "pgha_etcd_leader") == ["etcd_127_0_0_1_12379"]


def test_after_a_failover_the_groups_follow(load):
    status = fake_status(primary="keeper2", replicas=("keeper3",))
    status["keepers"].append({"uid": "keeper1", "healthy": False, "role": "none", "address": "127.0.0.1:5433"})
    inv = load(status)
    assert hosts(inv, "pgha_primary") == ["keeper2"]
    assert hosts(inv, "pgha_replica") == ["keeper3"]
    assert inv.get_host("keeper1").vars["pgha_healthy"] is False


def test_host_vars_carry_addresses(load):
    inv = load(fake_status())
    k2 = inv.get_host("keeper2").vars
    assert k2["ansible_host"] == "127.0.0.1" and k2["pgha_pg_port"] == 5434
    assert k2["pgha_role"] == "replica" and k2["pgha_streaming"] is True and k2["pgha_cluster"] == "main"
    p = inv.get_host("proxy1").vars
    assert p["pgha_address"] == "127.0.0.1:25432" and p["pgha_ro_address"] == "127.0.0.1:25433"
    assert p["pgha_target"] == "keeper1"
    e = inv.get_host("etcd_127_0_0_1_12383").vars
    assert e["pgha_healthy"] is False and e["pgha_error"] == "connection refused"


def test_values_from_the_store_are_not_templated(load):
    status = fake_status()
    status["proxies"][0]["target"] = "{{ lookup('pipe', 'id') }}"
    inv = load(status)
    value = inv.get_host("proxy1").vars["pgha_target"]
    assert value == "{{ lookup('pipe', 'id') }}"
    try:  # ansible-core >= 2.19: untrusted unless marked trusted
        from ansible.template import is_trusted_as_template
    except ImportError:
        from ansible.utils.unsafe_proxy import AnsibleUnsafe
        assert isinstance(value, AnsibleUnsafe)
    else:
        assert not is_trusted_as_template(value)


def test_constructed_options(load):
    extra = """
compose:
  pgha_is_primary: pgha_role == 'primary'
groups:
  writable: pgha_role == 'primary'
keyed_groups:
  - key: pgha_role
    prefix: role
"""
    inv = load(fake_status(), extra=extra)
    assert hosts(inv, "writable") == ["keeper1"]
    assert hosts(inv, "role_replica") == ["keeper2", "keeper3"]
    assert inv.get_host("keeper1").vars["pgha_is_primary"] is True


def test_missing_pgha_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(members, "HAS_PGHA", False)
    plugin = members.InventoryModule()
    with pytest.raises(Exception, match="pip install ./files/agents"):
        plugin._fetch()
