# Two entry points, each sets itself up: `make demo` and `make test`.
# Each has its own virtualenv, (re)built when it is missing or when pyproject.toml changed since
# the last install: `make demo` installs the library and what the demo needs (the `examples`
# extra) into .venv-demo; `make test` and the other targets install the developer tools (the
# `dev` extra) into .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_VENV := .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed
# Options for the demo, as in `make demo DEMO_ARGS="--style orchestrated --fresh"`.
DEMO_ARGS ?=

.PHONY: demo test lint typecheck docs bench bench-brokers bench-postgres bench-scale clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

$(DEMO_STAMP): pyproject.toml
	@test -x $(DEMO_VENV)/bin/python || $(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/python -m pip install --quiet -e '.[examples]'
	@touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/python -m examples.ecommerce $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks docs/snippets
	$(BIN)/ruff format --check src

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py

bench-brokers: $(STAMP)
	$(BIN)/python benchmarks/brokers.py

bench-postgres: $(STAMP)
	$(BIN)/python benchmarks/postgres.py

bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale_out.py

clean:
	rm -rf $(VENV) $(DEMO_VENV) site .pytest_cache .mypy_cache .ruff_cache
