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
TEST_JOBS ?= 3
E2E_JOBS ?= 2
FAST_TESTS := tests/unit tests/integration tests/statemachine tests/test_lint.py
E2E_TESTS := tests/e2e tests/chaos
DEV_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?=
# make chaos runs the state machine (tests/statemachine) with this many examples of up to
# this many steps: 20 times make test's 25 examples, of 50 steps, not 30
# (SHOP_STATEMACHINE_EXAMPLES, SHOP_STATEMACHINE_STEPS); 0 examples leaves it out
STATEMACHINE_EXAMPLES ?= 500
STATEMACHINE_STEPS ?= 50

PIP_AUDIT_VERSION := 2.10.1

.PHONY: run test lint install lock bench chaos audit

## run: migrate, seed a demo catalogue, then run API, worker, beat and relay
##      (make run DEV_ARGS="--port 8080")
run: $(STAMP)
	$(BIN)/shop migrate
	$(BIN)/shop seed
	exec $(BIN)/shop dev $(DEV_ARGS)

## test: the whole suite (make test PYTEST_ARGS="-k orders -x"), in three phases:
##       unit and integration tests on TEST_JOBS processes (each test has its own
##       database and vhost); the end-to-end runs and the fast chaos subset on
##       E2E_JOBS processes (each starts its own workers, relay and servers); then, alone,
##       the tests that stop a shared service (marked exclusive). A phase that a -k
##       selects nothing from is fine; all of them empty is not. SHOP_TEST_DATABASE_URL
##       and SHOP_TEST_BROKER_URL, when unset, point at the machine's PostgreSQL
##       (127.0.0.1:5432, user postgres) and RabbitMQ (127.0.0.1:5672, guest) if they
##       answer (tests/fixtures/local_services.py; SHOP_TEST_DETECT=0 turns it off);
##       otherwise their tests skip, and each phase ends saying so.
test: $(STAMP)
	@eval "$$($(BIN)/python -m tests.fixtures.local_services)"; status=0; empty=0; \
	run() { $(BIN)/pytest "$$@" $(PYTEST_ARGS); rc=$$?; \
		if [ $$rc -eq 5 ]; then empty=$$((empty + 1)); \
		elif [ $$rc -ne 0 ]; then status=$$rc; fi; }; \
	run -n $(TEST_JOBS) $(FAST_TESTS); \
	run -n $(E2E_JOBS) -m "not exclusive and not chaos" $(E2E_TESTS); \
	run -m exclusive $(E2E_TESTS); \
	[ $$empty -lt 3 ] || status=5; exit $$status

## bench: the workflow benchmark, run by hand (bench/README.md); needs PostgreSQL,
##        RabbitMQ (rabbitmqctl) and wrk (make bench BENCH_ARGS="--orders 500 --cases shop");
##        the report benchmark is `.venv/bin/python -m bench.reports`
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

## chaos: first the state machine of tests/statemachine with STATEMACHINE_EXAMPLES
##        examples (500, a few minutes; 0 skips it; a failure is shrunk), then the
##        fault-injection suite on the real services (docs/RELIABILITY.md), about 15
##        minutes, and the cluster scenarios (a three-node RabbitMQ and a PostgreSQL
##        standby it starts itself, about 15 more: CHAOS_ARGS="-k cluster" runs only
##        those); prints the table and writes var/chaos-results.md. Finds PostgreSQL
##        and RabbitMQ as make test does (SHOP_TEST_DATABASE_URL, SHOP_TEST_BROKER_URL,
##        else 127.0.0.1:5432 and :5672), and fails naming what it is missing instead
##        of skipping (SHOP_TEST_REQUIRE_SERVICES=1); restarts PostgreSQL once unless
##        SHOP_CHAOS_PG_RESTART=0
##        (make chaos CHAOS_ARGS="-k poison" STATEMACHINE_EXAMPLES=0)
chaos: $(STAMP)
	@exports="$$($(BIN)/python -m tests.fixtures.local_services --require \
		--target 'make chaos')" || exit 1; eval "$$exports"; \
	export SHOP_TEST_REQUIRE_SERVICES=1; status=0; \
	if [ "$(STATEMACHINE_EXAMPLES)" != 0 ]; then \
		SHOP_STATEMACHINE_EXAMPLES=$(STATEMACHINE_EXAMPLES) SHOP_STATEMACHINE_SHRINK=1 \
		SHOP_STATEMACHINE_STEPS=$(STATEMACHINE_STEPS) $(BIN)/pytest tests/statemachine \
			|| status=$$?; \
	fi; \
	SHOP_CHAOS_PG_RESTART=$${SHOP_CHAOS_PG_RESTART-1} $(BIN)/pytest tests/chaos -m chaos \
		$(CHAOS_ARGS) || status=$$?; \
	exit $$status

## lint: ruff and mypy (strict)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy shop

## audit: pip-audit over the locked set (needs PyPI's JSON API or osv.dev; it fails,
##        never passes, when it can't reach them: --strict)
##        pip-audit lives in a venv of its own, so it never changes the locked set
audit:
	test -x $(VENV)/audit/bin/pip-audit || { $(PYTHON) -m venv $(VENV)/audit && \
		$(VENV)/audit/bin/pip install --quiet pip-audit==$(PIP_AUDIT_VERSION); }
	$(VENV)/audit/bin/pip-audit --strict --no-deps --disable-pip -r $(LOCK)

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

$(STAMP): pyproject.toml setup.py $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@$(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; \
		echo "$(LOCK) does not satisfy pyproject.toml: run make lock" >&2; exit 1; }
	touch $@
