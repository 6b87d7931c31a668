# pgha: build, lint and test entry points. `make up` brings a cluster up, `make test` runs every check.
# Override VENV, AGENT_VENV or PYTHON on the command line: make test AGENT_VENV=/srv/pgha/venv

VENV       ?= $(CURDIR)/.venv
AGENT_VENV ?= /opt/pgha/venv
PYTHON     ?= /usr/bin/python3
PGHA_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/pgha
PYTEST_ARGS ?= -ra

# the store of the default inventory (inventory/local.yml)

export VENV AGENT_VENV PYTHON PGHA_CACHE
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/collections
export PATH := $(VENV)/bin:$(PATH)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.NOTPARALLEL:
.DEFAULT_GOAL := help

# YAML files of our own (the venv, unpacked collections and test output are not ours).
YAML_FILES = $(shell find . \( -path ./.venv -o -path ./collections -o -path ./.git -o -path '*/tests/output' \) -prune \
               -o -type f \( -name '*.yml' -o -name '*.yaml' \) -print 2>/dev/null | head -n 1)

.PHONY: help up test lint test-engine test-hosts test-collection venv bootstrap agents clean bench wheelhouse

help:
	@echo "make up               install what is missing, then bring a local cluster up (playbooks/site.yml)"
	@echo "make test             lint, engine tests, collection tests"
	@echo "make lint             ruff, yamllint, ansible-lint (offline)"
	@echo "make test-engine      pytest files/agents/tests against the agents venv ($(AGENT_VENV))"
	@echo "make test-hosts       the test hosts' tests (scripts/testhosts.py; root)"
	@echo "make test-collection  scripts/test-collection.sh, when present"
	@echo "make venv             create/update $(VENV) and $(AGENT_VENV)"
	@echo "make wheelhouse       the agents' wheels for hosts without a package index (pgha_pip_wheelhouse)"
	@echo "make bench            side-by-side benchmarks (pgha vs Patroni vs HAProxy, partitions on test hosts; ~2.5 h): bench/results, docs/img"
	@echo "make clean            remove build output, the dev venv, unpacked collections and test output"

bootstrap:
	@scripts/bootstrap.sh

venv:
	@scripts/bootstrap.sh venvs

wheelhouse:
	@scripts/bootstrap.sh venvs wheelhouse

# Install the current pgha into the agents' venv (non-editable, like a deployment; always rebuilt so
# the agents run the working tree's code). The dev venv has it editable already.
agents: bootstrap
	@rm -rf files/agents/build
	@$(AGENT_VENV)/bin/pip install -q --force-reinstall --no-deps --no-build-isolation ./files/agents \
	    >"$(PGHA_CACHE)/pip-agents.log" 2>&1 || { cat "$(PGHA_CACHE)/pip-agents.log" >&2; exit 1; }
	@rm -rf files/agents/build

up: bootstrap agents
	$(VENV)/bin/ansible-playbook -i inventory/local.yml playbooks/site.yml
	@echo
	@echo "pgha is up (cluster main on 127.0.0.1). Connect through the proxy:"
	@echo "  read-write: PGPASSWORD=\$$(cat /opt/pgha/main/secrets/pg_app_password) psql 'host=127.0.0.1 port=25432 user=app dbname=app sslmode=verify-full sslrootcert=/opt/pgha/main/tls/ca.crt'"
	@echo "  read-only:  PGPASSWORD=\$$(cat /opt/pgha/main/secrets/pg_app_password) psql 'host=127.0.0.1 port=25433 user=app dbname=app'"
	@echo "Status (and switchover, update, ...), as the store's operator (TLS, etcd user main-operator):"
	@echo "  . $(HOME)/.pgha/main/pghactl.env"
	@echo "  $(VENV)/bin/pghactl status"
	@echo
	@. "$(HOME)/.pgha/main/pghactl.env" && $(VENV)/bin/pghactl status

test: lint test-engine test-hosts test-collection

# The test hosts' own tests (scripts/testhosts.py): they skip, saying why, when not root.
test-hosts: bootstrap
	$(VENV)/bin/pytest tests/hosts $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check files/agents $(wildcard plugins) scripts/testhosts.py tests/hosts
	@if [ -n "$(YAML_FILES)" ]; then echo "$(VENV)/bin/yamllint ."; $(VENV)/bin/yamllint .; fi
	@if [ -d roles ]; then echo "ansible-lint --offline"; $(VENV)/bin/ansible-lint --offline; \
	 else echo "ansible-lint: skipped (no roles/ yet)"; fi

test-engine: agents
	cd files/agents && PGHA_AGENT_PYTHON=$(AGENT_VENV)/bin/python PGHA_AGENT_BIN=$(AGENT_VENV)/bin \
	    $(VENV)/bin/pytest tests $(PYTEST_ARGS)

test-collection: bootstrap
	@if [ -f scripts/test-collection.sh ]; then bash scripts/test-collection.sh; \
	 else echo "test-collection: skipped (scripts/test-collection.sh not there yet)"; fi

# Benchmarks are never part of `make test`. bench/setup.sh adds matplotlib and a Patroni venv.
bench: bootstrap agents
	@bench/setup.sh
	PGHA_AGENT_BIN=$(AGENT_VENV)/bin $(VENV)/bin/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf files/agents/build files/agents/src/*.egg-info files/agents/tests/output collections \
	    .pytest_cache files/agents/.pytest_cache .ruff_cache $(VENV)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
