# Shell helpers shared by scripts/bootstrap.sh and bench/setup.sh (sourced, not run).

# pip prints a warning line for every index location of the machine's pip config that does not
# exist; keep real errors, drop that noise. Usage: pip_quiet PIP ARGS...
pip_quiet() {
    local rc
    set +e
    "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" >&2
    rc="${PIPESTATUS[0]}"
    set -e
    return "$rc"
}
