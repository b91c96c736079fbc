# Everyday entry points. Each creates .venv if missing and (re)installs the
# project when pyproject.toml is newer than the last install.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEV_ARGS ?=

.PHONY: run test lint install

## run: migrate, seed a demo catalogue, then run API, worker, beat and relay
##      (make run DEV_ARGS="--port 8080")
run: $(STAMP)
	$(BIN)/shop migrate
	$(BIN)/shop seed
	exec $(BIN)/shop dev $(DEV_ARGS)

## test: the whole suite (make test PYTEST_ARGS="-k orders -x")
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## lint: ruff and mypy (strict)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy shop

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@
