# Two commands matter: `make run` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps run test test-unit lint typecheck bench chaos schemas clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Java and Maven (the local Kafka broker), PostgreSQL and Chromium (tests), from Debian's packages.
system-deps:
	bash scripts/system-deps.sh

run: setup
	$(BIN)/smartretry run

test: setup system-deps
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest tests/unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy schemas projections streams smartretry publishers bench

bench: setup
	$(BIN)/python -m bench

chaos: setup
	$(BIN)/python -m bench.chaos

schemas: setup
	$(BIN)/python -m schemas.export

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
