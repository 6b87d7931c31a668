#!/usr/bin/env bash
# Tests of the Kubernetes platform that need no cluster (run by `make test`, after scripts/bootstrap.sh):
#
#   scripts/test-kubernetes.sh [PYTEST ARGS...]
#
# tests/kubernetes: site.yml with pgha_platform=kubernetes against the kmock fake API server (apply,
# rerun with no change, state absent), every object it applied validated offline with
# kubernetes-validate --strict for Kubernetes 1.28 and the newest bundled version, the semantic
# checks (selectors, probes, ports, PDBs, NetworkPolicies, RBAC against pgha.kube's calls, pod
# security), the k8s_container filter, the members inventory plugin's kubernetes source, the image's
# Containerfile and build_image.yml's failure without a container engine.
# Behaviour on a cluster: molecule/kubernetes (skips without one).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/collections"
export ANSIBLE_NOCOLOR=1 PY_COLORS=0

[ -x "$VENV/bin/pytest" ] || { echo "test-kubernetes: no $VENV/bin/pytest: run scripts/bootstrap.sh" >&2; exit 1; }
"$VENV/bin/python" -c 'import kmock, kubernetes_validate, kubernetes' 2>/dev/null || {
    echo "test-kubernetes: kmock, kubernetes-validate or kubernetes missing in $VENV: run scripts/bootstrap.sh" >&2; exit 1; }
[ -d "$ROOT/collections/ansible_collections/kubernetes/core" ] || {
    echo "test-kubernetes: kubernetes.core missing in collections/: run scripts/bootstrap.sh" >&2; exit 1; }

cd "$ROOT"
exec "$VENV/bin/pytest" -p no:cacheprovider -o asyncio_default_fixture_loop_scope=function tests/kubernetes "${@:--ra}"
