"""What the keeper writes for PostgreSQL: pg_hba.conf rules, TLS parameters and the conninfo of its
connections to other members (pure: no PostgreSQL runs)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgha.keeper.actions import Actions
from pgha.keeper.pg import PgConfig, Postgres
from pgha.spec import default, normalize


def actions(tmp_path: Path, tls: bool, spec: dict | None = None) -> Actions:
    a = Actions()
    a.args = SimpleNamespace(pg_su_username="postgres", pg_repl_username="repl", pg_listen_address="0.0.0.0",
                             pg_port=5432)
    a.uid = "k1"
    a.spec = normalize(spec) if spec else default()
    files = {"tls_cert_file": "/t/host.crt", "tls_key_file": "/t/host.key", "tls_ca_file": "/t/ca.crt"} if tls else {}
    a.pg = Postgres(PgConfig(bin_path="/pg", data_dir=tmp_path, listen_address="0.0.0.0", port=5432,
                             su_username="postgres", su_password="s", repl_username="repl", repl_password="r",
                             **files))
    a.primary_minimums = {}
    a._hba_dropped = set()
    return a


def rules(lines: list[str]) -> list[list[str]]:
    return [line.split() for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("tls", [True, False])
def test_the_superuser_never_logs_in_over_tcp_and_the_replication_role_only_where_it_must(tmp_path, tls) -> None:
    tcp = "hostssl" if tls else "host"
    got = rules(actions(tmp_path, tls).pg_hba())
    assert got[:2] == [["local", "all", "all", "trust"], ["local", "replication", "all", "trust"]]
    tcp_rules = got[2:]
    # the first TCP rule that can match a superuser login rejects it, whatever the spec adds later
    for db in ("postgres", "app"):
        first = next(r for r in tcp_rules if r[1] in (db, "all") and r[2] in ("postgres", "all"))
        assert first[0] == "host" and first[-1] == "reject", first
    first = next(r for r in tcp_rules if r[1] in ("app", "all") and r[2] in ("repl", "all"))
    assert first[-1] == "reject"
    # nor does it replicate over TCP ("all" does not cover replication), whatever the spec adds later
    first = next(r for r in tcp_rules if r[1] == "replication" and r[2] in ("postgres", "all"))
    assert first[0] == "host" and first[-1] == "reject", first
    assert [tcp, "replication", "repl", "0.0.0.0/0", "scram-sha-256"] in tcp_rules
    assert [tcp, "postgres", "repl", "0.0.0.0/0", "scram-sha-256"] in tcp_rules  # pg_rewind
    assert tcp_rules[-2:] == [[tcp, "all", "all", "0.0.0.0/0", "scram-sha-256"], [tcp, "all", "all", "::/0", "scram-sha-256"]]
    assert not [r for r in tcp_rules if r[-1] != "reject" and r[0] != tcp]


def test_the_specs_rules_come_after_the_superusers_rejection_and_with_tls_need_it(tmp_path) -> None:
    spec = {"pg_hba": ["hostssl all all 10.0.0.0/8 scram-sha-256", "host replication all 10.1.0.0/16 scram-sha-256",
                       "hostnossl app app 10.2.0.0/16 scram-sha-256"]}
    got = actions(tmp_path, True, spec).pg_hba()
    assert got[-2:] == ["hostssl all all 10.0.0.0/8 scram-sha-256", "hostssl replication all 10.1.0.0/16 scram-sha-256"]
    assert got.index("host all postgres 0.0.0.0/0 reject") < len(got) - 2
    assert got.index("host replication postgres 0.0.0.0/0 reject") < len(got) - 2
    assert "hostssl all all 0.0.0.0/0 scram-sha-256" not in got  # the spec's replace the default
    assert not [line for line in got if line.startswith("hostnossl")]
    # without TLS the spec's lines are written as they are
    assert actions(tmp_path, False, spec).pg_hba()[-3:] == spec["pg_hba"]


def test_tls_parameters_and_verified_connections_to_members(tmp_path) -> None:
    a = actions(tmp_path, True)
    params = a.pg_parameters(True, None)
    assert (params["ssl"], params["ssl_cert_file"], params["ssl_key_file"]) == ("on", "/t/host.crt", "/t/host.key")
    info = dict(kv.split("=", 1) for kv in a.conninfo("10.0.0.2:5433").split())
    assert info["sslmode"] == "verify-full" and info["sslrootcert"] == "/t/ca.crt"
    assert (info["host"], info["port"], info["user"]) == ("10.0.0.2", "5433", "repl")
    assert "password" not in info and info["passfile"] == str(tmp_path / "pgpass")
    # no client certificate: a path that does not exist (libpq would otherwise read $HOME/.postgresql)
    assert not Path(info["sslcert"]).exists()
    plain = actions(tmp_path, False)
    assert "ssl" not in plain.pg_parameters(True, None)
    assert "sslmode=disable" in plain.conninfo("10.0.0.2:5433")


def test_a_dead_postmaster_not_yet_reaped_is_told_from_a_live_one(tmp_path) -> None:
    import os

    from pgha.keeper.pg import Postgres

    pg = Postgres.__new__(Postgres)  # only its data directory is used
    pg.pgdata = tmp_path
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        time.sleep(0.2)  # exited, not reaped: a zombie, as a killed keeper's postmaster under a slow init
        (tmp_path / "postmaster.pid").write_text(f"{pid}\n{tmp_path}\n")
        assert pg.dead_postmaster() == pid
    finally:
        os.waitpid(pid, 0)
    assert pg.dead_postmaster() is None  # reaped: gone
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n")
    assert pg.dead_postmaster() is None  # alive: not dead
    pg.wait_dead_postmaster(timeout=0.1)  # returns at once
