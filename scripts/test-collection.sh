#!/usr/bin/env bash
# Tests of the pgha.cluster collection (run by `make test`, after scripts/bootstrap.sh):
#
#   scripts/test-collection.sh [STEP...]    steps: lint sanity units kubernetes molecule (default: all)
#
# lint      ansible-lint --offline (the production profile)
# sanity    ansible-test sanity --venv
# units     ansible-test units --venv (modules and the inventory plugin against fakes)
# kubernetes  scripts/test-kubernetes.sh: the Kubernetes platform without a cluster (kmock, kubernetes-validate)
# molecule  molecule test for each scenario: default (site.yml, idempotence, verify: the proxy, the
#           secured store, backup.yml, restore.yml to a point in time with exact rows,
#           backup_drill.yml; teardown), upgrade (under load, then the crash, freeze and switchover
#           drills), chaos, multihost (three namespace hosts over SSH: site,
#           idempotence, verify, every partition drill, chaos with partitions), systemd (three
#           systemd-nspawn hosts: units, idempotence, a crash drill, no stale unit) and kubernetes
#           (skips without a cluster)
#
# ansible-test wants the collection at .../ansible_collections/pgha/cluster outside any git tree
# that ignores it, so it runs on a copy of the working tree (tracked and untracked, not ignored
# files) under $PGHA_CACHE/ansible-test, next to links to the dependency collections. The copy
# leaves out the engine's code and tests and bench/: they are Python of their own, linted by ruff
# and tested by pytest (make lint, make test-engine), not Ansible content. Only the engine's
# version files stay (tests/unit/test_versions.py reads them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PGHA_CACHE="${PGHA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgha}"
PYVER="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
export PATH="$VENV/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/collections"
export ANSIBLE_NOCOLOR=1 PY_COLORS=0

log() { printf '\ntest-collection: [%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

[ -x "$VENV/bin/ansible-test" ] || { echo "test-collection: no $VENV/bin/ansible-test: run scripts/bootstrap.sh" >&2; exit 1; }
[ -d "$ROOT/collections/ansible_collections/community/general" ] || {
    echo "test-collection: dependency collections missing in collections/: run scripts/bootstrap.sh" >&2; exit 1; }

copy_collection() {
    local work="$PGHA_CACHE/ansible-test/ansible_collections"
    rm -rf "$work/pgha/cluster"
    mkdir -p "$work/pgha/cluster"
    ( cd "$ROOT" && git ls-files -co --exclude-standard -z \
        | grep -zvE '^(collections|bench)/|^files/agents/(src|tests)/|^scripts/testhosts\.py$|^tests/hosts/' \
        | tar --null -T - -cf - files/agents/src/pgha/__init__.py ) | tar -xf - -C "$work/pgha/cluster"
    local ns
    for ns in "$ROOT"/collections/ansible_collections/*; do
        [ "$(basename "$ns")" = pgha ] && continue
        ln -sfn "$ns" "$work/$(basename "$ns")"
    done
    echo "$work/pgha/cluster"
}

step_lint() {
    log "ansible-lint --offline"
    ( cd "$ROOT" && ansible-lint --offline )
}

step_sanity() {
    log "ansible-test sanity --venv --python $PYVER"
    local dir; dir="$(copy_collection)"
    ( cd "$dir" && ansible-test sanity --venv --python "$PYVER" --color no )
}

step_units() {
    log "ansible-test units --venv --python $PYVER"
    local dir; dir="$(copy_collection)"
    ( cd "$dir" && ansible-test units --venv --python "$PYVER" --color no )
}

# ---- Kubernetes platform (issue 5): its own script, so it can also run alone.
step_kubernetes() {
    log "scripts/test-kubernetes.sh"
    bash "$ROOT/scripts/test-kubernetes.sh"
}

# The scenarios, one after another on this machine: default (site.yml, idempotence, verify,
# teardown), then the drills (upgrade with the failover drills, chaos), the several-host scenarios on test hosts
# of scripts/testhosts.py (multihost, systemd; they need root), then kubernetes (skips, saying so,
# without a reachable cluster). MOLECULE_SCENARIOS="default chaos" runs a subset.
step_molecule() {
    local sc
    for sc in ${MOLECULE_SCENARIOS:-default upgrade chaos multihost systemd kubernetes}; do
        log "molecule test -s $sc"
        ( cd "$ROOT" && molecule test -s "$sc" )
    done
}

steps=("$@")
[ "${#steps[@]}" -gt 0 ] || steps=(lint sanity units kubernetes molecule)
for step in "${steps[@]}"; do
    case "$step" in
        lint|sanity|units|kubernetes|molecule) "step_$step" ;;
        *) echo "test-collection: unknown step $step (lint sanity units kubernetes molecule)" >&2; exit 2 ;;
    esac
done
log "all steps passed: ${steps[*]}"
