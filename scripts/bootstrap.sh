#!/usr/bin/env bash
# Prepare this machine for building and testing pgha. Idempotent and quiet when nothing is to do.
#
#   scripts/bootstrap.sh [STEP...]     steps: system user venvs collections (default: all of them),
#                                      and wheelhouse (only when named)
#
# system       Debian packages the tests and `make up` need (root only; installs only what is missing)
# user         the unprivileged OS user the agents run as when tests run as root (PostgreSQL refuses root)
# venvs        the agents' venv (AGENT_VENV, world-readable, from PYTHON) and the dev venv (VENV)
# collections  Ansible collections from requirements.yml into collections/, from Galaxy or, when Galaxy
#              cannot be reached, from the community `ansible` wheel on PyPI; also an offline stand-in
#              for the get-pip script ansible-test downloads (scripts/ansible-test-get-pip.py)
# wheelhouse   every wheel the agents' venv needs, for hosts without a package index (the role's
#              pgha_pip_wheelhouse): into PGHA_WHEELHOUSE (default $PGHA_CACHE/wheelhouse)
#
# Environment: VENV (default <repo>/.venv), AGENT_VENV (/opt/pgha/venv), PYTHON (/usr/bin/python3),
# PGHA_TEST_USER (pghatest), PGHA_CACHE (~/.cache/pgha), GALAXY_TIMEOUT (seconds, default 30).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
AGENT_VENV="${AGENT_VENV:-/opt/pgha/venv}"
PYTHON="${PYTHON:-/usr/bin/python3}"
PGHA_TEST_USER="${PGHA_TEST_USER:-pghatest}"
PGHA_CACHE="${PGHA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgha}"
GALAXY_TIMEOUT="${GALAXY_TIMEOUT:-30}"
ANSIBLE_WHEEL_VERSION="12.3.0"   # the community package that ships the collection versions we pin
PG_BIN=/usr/lib/postgresql/15/bin

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"   # pip_quiet

# Run a command with its output in a log file; show the log only when it fails.
run_logged() {  # run_logged LOGFILE CMD...
    local logfile="$1"; shift
    "$@" >"$logfile" 2>&1 || { cat "$logfile" >&2; die "failed: $*"; }
}

# ---------------------------------------------------------------------------------------- system
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

step_system() {
    local want=() pkg
    [ -x /usr/bin/etcd ] || want+=(etcd-server)
    command -v pgbackrest >/dev/null 2>&1 || want+=(pgbackrest)
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || want+=(haproxy)
    [ -x "$PG_BIN/postgres" ] || want+=(postgresql-15)
    "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || want+=(python3-venv)
    for pkg in libpq-dev gcc python3-dev; do have_pkg "$pkg" || want+=("$pkg"); done
    # the test hosts (scripts/testhosts.py): namespace hosts run tini and sshd, systemd hosts are
    # systemd-nspawn containers on a debootstrapped rootfs, partitions are nftables rules
    for pkg in tini openssh-server openssh-client systemd-container debootstrap nftables; do
        have_pkg "$pkg" || want+=("$pkg")
    done
    [ "${#want[@]}" -eq 0 ] && return 0
    if ! is_root; then
        log "missing system packages (install them as root): ${want[*]}"
        return 0
    fi
    log "installing ${want[*]}"
    # Keep package scripts from starting services (etcd, a default PostgreSQL cluster on 5432):
    # the tests start their own on free ports.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}"
    } >"$PGHA_CACHE/apt.log" 2>&1 || rc=$?
    [ "$made_policy" -eq 1 ] && rm -f "$policy"
    if [ "$rc" -ne 0 ]; then
        tail -n 30 "$PGHA_CACHE/apt.log" >&2
        die "apt-get failed (full log: $PGHA_CACHE/apt.log)"
    fi
}

# ------------------------------------------------------------------------------------------ user
step_user() {
    is_root || return 0
    id -u "$PGHA_TEST_USER" >/dev/null 2>&1 && return 0
    log "creating system user $PGHA_TEST_USER"
    useradd --system --create-home --shell /usr/sbin/nologin "$PGHA_TEST_USER"
}

# ----------------------------------------------------------------------------------------- venvs
# A venv is (re)installed when the hash of its requirement files and interpreter changes.
stamp_of() { cat "$@" | { cat; "$PYTHON" -VV; } | sha256sum | cut -d' ' -f1; }

make_venv() {  # make_venv DIR
    local dir="$1"
    if [ ! -x "$dir/bin/python" ] || ! "$dir/bin/python" -c 'import pip' >/dev/null 2>&1; then
        log "creating venv $dir from $PYTHON"
        mkdir -p "$(dirname "$dir")"
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
        # setuptools/wheel in the venv let pgha be built without build isolation (no index round trip)
        pip_quiet "$dir/bin/pip" install -q --upgrade pip 'setuptools>=70.1' wheel
    fi
}

step_venvs() {
    local stamp
    # Agents' venv: must be usable by the unprivileged agent user, so it lives outside /root.
    ( umask 022
      make_venv "$AGENT_VENV"
      stamp="$(stamp_of "$ROOT/files/agents/requirements.txt")"
      if [ "$(cat "$AGENT_VENV/.pgha-stamp" 2>/dev/null)" != "$stamp" ]; then
          log "installing agent runtime requirements into $AGENT_VENV"
          pip_quiet "$AGENT_VENV/bin/pip" install -q -r "$ROOT/files/agents/requirements.txt" 'setuptools>=70.1' wheel
          echo "$stamp" >"$AGENT_VENV/.pgha-stamp"
      fi
      if is_root && [ "${AGENT_VENV#/root/}" != "$AGENT_VENV" ]; then
          log "warning: AGENT_VENV=$AGENT_VENV is under /root; the agent user cannot run it"
      fi )

    # Dev venv: tools plus pgha installed editable, so pytest and pghactl see the working tree.
    make_venv "$VENV"
    stamp="$(stamp_of "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/files/agents/pyproject.toml")"
    if [ "$(cat "$VENV/.pgha-stamp" 2>/dev/null)" != "$stamp" ]; then
        log "installing development requirements into $VENV"
        pip_quiet "$VENV/bin/pip" install -q -r "$ROOT/requirements-dev.txt" 'setuptools>=70.1' wheel
        run_logged "$PGHA_CACHE/pip-editable.log" \
            "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT/files/agents"
        "$VENV/bin/pip" check >/dev/null || { "$VENV/bin/pip" check >&2; die "pip check failed in $VENV"; }
        echo "$stamp" >"$VENV/.pgha-stamp"
    fi
}

# ----------------------------------------------------------------------------------- collections
COLL_DIR="$ROOT/collections/ansible_collections"

collections_present() {
    # Every collection named in requirements.yml is installed at the pinned version.
    "$VENV/bin/python" - "$ROOT/requirements.yml" "$COLL_DIR" <<'EOF'
import json, sys, pathlib, yaml
req = yaml.safe_load(open(sys.argv[1]))
base = pathlib.Path(sys.argv[2])
for c in req.get("collections", []):
    ns, name = c["name"].split(".")
    try:
        info = json.loads((base / ns / name / "MANIFEST.json").read_text())["collection_info"]
    except (OSError, ValueError, KeyError):
        sys.exit(1)
    if str(info.get("version")) != str(c.get("version", info.get("version"))):
        sys.exit(1)
EOF
}

collections_from_wheel() {
    local wheel="$PGHA_CACHE/ansible-$ANSIBLE_WHEEL_VERSION-py3-none-any.whl"
    if [ ! -s "$wheel" ]; then
        log "downloading ansible==$ANSIBLE_WHEEL_VERSION from PyPI (once; cached in $PGHA_CACHE)"
        pip_quiet "$VENV/bin/pip" download -q --no-deps "ansible==$ANSIBLE_WHEEL_VERSION" -d "$PGHA_CACHE"
    fi
    "$VENV/bin/python" - "$wheel" "$ROOT/requirements.yml" "$ROOT/collections" <<'EOF'
import shutil, sys, zipfile, pathlib, yaml
wheel, req, dest = sys.argv[1], yaml.safe_load(open(sys.argv[2])), pathlib.Path(sys.argv[3])
prefixes = []
for c in req.get("collections", []):
    ns, name = c["name"].split(".")
    prefixes.append(f"ansible_collections/{ns}/{name}/")
    shutil.rmtree(dest / "ansible_collections" / ns / name, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for member in z.namelist():
        if any(member.startswith(p) for p in prefixes) and ".." not in member.split("/"):
            z.extract(member, dest)
EOF
}

step_collections() {
    [ -x "$VENV/bin/ansible-galaxy" ] || die "no $VENV/bin/ansible-galaxy: run the venvs step first"
    # ansible-test --venv bootstraps pip with a downloaded script; give it an offline one.
    local pip_version getpip
    pip_version="$("$VENV/bin/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages as g
from ansible_test._internal.host_configs import NativePythonConfig as C
import sys; print(g(C(version="%d.%d" % sys.version_info[:2], path=sys.executable))["pip"])' 2>/dev/null || echo 24.2)"
    getpip="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
    if ! cmp -s "$ROOT/scripts/ansible-test-get-pip.py" "$getpip"; then
        mkdir -p "$(dirname "$getpip")"
        cp "$ROOT/scripts/ansible-test-get-pip.py" "$getpip"
    fi
    mkdir -p "$COLL_DIR/pgha"
    # The collection itself, where ansible-test and molecule expect it.
    if [ "$(readlink "$COLL_DIR/pgha/cluster" 2>/dev/null)" != "../../.." ]; then
        rm -rf "$COLL_DIR/pgha/cluster"
        ln -s ../../.. "$COLL_DIR/pgha/cluster"
    fi
    collections_present && return 0
    log "installing Ansible collections from requirements.yml into collections/"
    if timeout "$GALAXY_TIMEOUT" "$VENV/bin/ansible-galaxy" collection install --force --timeout 10 \
            -r "$ROOT/requirements.yml" -p "$ROOT/collections" >"$PGHA_CACHE/galaxy.log" 2>&1 \
            && collections_present; then
        return 0
    fi
    log "Galaxy not reachable; taking the collections from the ansible==$ANSIBLE_WHEEL_VERSION wheel"
    collections_from_wheel
    collections_present || die "collections from the ansible wheel do not match requirements.yml"
}

# ------------------------------------------------------------------------------------ wheelhouse
step_wheelhouse() {
    local dir="${PGHA_WHEELHOUSE:-$PGHA_CACHE/wheelhouse}" stamp supervisor
    supervisor="$(sed -n 's/^pgha_supervisor_version: *//p' "$ROOT/roles/pgha/defaults/main.yml")"
    stamp="$( { cat "$ROOT/files/agents/requirements.txt"; echo "supervisor==$supervisor"; } | stamp_of /dev/stdin)"
    [ "$(cat "$dir/.pgha-stamp" 2>/dev/null)" = "$stamp" ] && { echo "$dir"; return 0; }
    log "downloading the agents' wheels into $dir"
    mkdir -p "$dir"
    run_logged "$PGHA_CACHE/pip-wheelhouse.log" "$AGENT_VENV/bin/pip" download -q --only-binary=:all: -d "$dir" \
        -r "$ROOT/files/agents/requirements.txt" "supervisor==$supervisor" 'setuptools>=70.1' wheel
    echo "$stamp" >"$dir/.pgha-stamp"
    echo "$dir"
}

# ------------------------------------------------------------------------------------------ main
mkdir -p "$PGHA_CACHE"
steps=("$@")
[ "${#steps[@]}" -eq 0 ] && steps=(system user venvs collections)
for s in "${steps[@]}"; do
    case "$s" in
        system|user|venvs|collections|wheelhouse) "step_$s" ;;
        *) die "unknown step '$s' (system, user, venvs, collections, wheelhouse)" ;;
    esac
done
