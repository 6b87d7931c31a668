#!/usr/bin/env bash
# Install what the benchmarks need on top of `make venv`: matplotlib in the dev venv (plots) and
# Patroni in its own venv, made from PYTHON so the unprivileged agent user can run it. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-/usr/bin/python3}"
PATRONI_VENV="${PGHA_PATRONI_VENV:-/opt/pgha/bench-venv}"
quiet() {
    local rc
    set +e
    "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" >&2
    rc="${PIPESTATUS[0]}"
    set -e
    return "$rc"
}

"$VENV/bin/python" -c 'import matplotlib' 2>/dev/null || quiet "$VENV/bin/pip" install -q -r "$ROOT/bench/requirements.txt"
if ! cmp -s "$ROOT/bench/requirements-patroni.txt" "$PATRONI_VENV/.pgha-bench-req" 2>/dev/null; then
    echo "bench: installing Patroni into $PATRONI_VENV" >&2
    ( umask 022
      [ -x "$PATRONI_VENV/bin/pip" ] || "$PYTHON" -m venv "$PATRONI_VENV"
      quiet "$PATRONI_VENV/bin/pip" install -q -r "$ROOT/bench/requirements-patroni.txt"
      cp "$ROOT/bench/requirements-patroni.txt" "$PATRONI_VENV/.pgha-bench-req" )
fi
