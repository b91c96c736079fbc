# Everyday entry points. Each creates .venv if missing and (re)installs the
# project when pyproject.toml or the lock is newer than the last install.
# Dependencies come from requirements/lock.txt (`make lock` refreshes it).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
UV_VERSION := 0.13.9
LOCK_ARGS ?=
PYTEST_ARGS ?=
DEV_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?=

.PHONY: run test lint install lock bench chaos

## run: migrate, seed a demo catalogue, then run API, worker, beat and relay
##      (make run DEV_ARGS="--port 8080")
run: $(STAMP)
	$(BIN)/shop migrate
	$(BIN)/shop seed
	exec $(BIN)/shop dev $(DEV_ARGS)

## test: the whole suite (make test PYTEST_ARGS="-k orders -x")
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## bench: benchmarks, run by hand (bench/README.md); needs PostgreSQL
##        (make bench BENCH_ARGS="--orders 100000")
bench: $(STAMP)
	$(BIN)/python -m bench.reports $(BENCH_ARGS)

## chaos: the fault-injection suite on the real services (docs/RELIABILITY.md), about
##        15 minutes; prints the table and writes var/chaos-results.md. Needs
##        SHOP_TEST_DATABASE_URL and SHOP_TEST_BROKER_URL, as the e2e tests do; restarts
##        PostgreSQL once unless SHOP_CHAOS_PG_RESTART=0 (make chaos CHAOS_ARGS="-k poison")
chaos: $(STAMP)
	SHOP_CHAOS_PG_RESTART=$${SHOP_CHAOS_PG_RESTART-1} $(BIN)/pytest tests/chaos -m chaos $(CHAOS_ARGS)

## lint: ruff and mypy (strict)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy shop

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

## lock: resolve pyproject.toml (every extra, Python 3.11+, any platform) into
##       requirements/lock.txt, keeping the pins that still fit
##       (make lock LOCK_ARGS=--upgrade, or LOCK_ARGS="--upgrade-package stripe")
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --all-extras --universal --python-version 3.11 \
		--custom-compile-command "make lock" --quiet $(LOCK_ARGS) -o $(LOCK)

$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@$(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; \
		echo "$(LOCK) does not satisfy pyproject.toml: run make lock" >&2; exit 1; }
	touch $@
