# Two entry points, each sets itself up: `make demo` and `make test`.
# The virtualenv is (re)built when it is missing or when pyproject.toml changed since the last install.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck docs bench bench-brokers bench-postgres bench-scale clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.ecommerce

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
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
