#!/usr/bin/env bash
# Install what the benchmarks need on top of `make venv`: matplotlib in the dev venv (plots) and
# Patroni in its own venv, made from PYTHON so the unprivileged agent user can run it. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-/usr/bin/python3}"
PATRONI_VENV="${PGHA_PATRONI_VENV:-/opt/pgha/bench-venv}"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"   # pip_quiet

"$VENV/bin/python" -c 'import matplotlib' 2>/dev/null || pip_quiet "$VENV/bin/pip" install -q -r "$ROOT/bench/requirements.txt"
if ! cmp -s "$ROOT/bench/requirements-patroni.txt" "$PATRONI_VENV/.pgha-bench-req" 2>/dev/null; then
    echo "bench: installing Patroni into $PATRONI_VENV" >&2
    ( umask 022
      [ -x "$PATRONI_VENV/bin/pip" ] || "$PYTHON" -m venv "$PATRONI_VENV"
      pip_quiet "$PATRONI_VENV/bin/pip" install -q -r "$ROOT/bench/requirements-patroni.txt"
      cp "$ROOT/bench/requirements-patroni.txt" "$PATRONI_VENV/.pgha-bench-req" )
fi
