# The two commands a newcomer needs: `make serve` and `make test`. Both set up .venv first.
# `make lint`: ruff over the whole tree, mypy over the package (pyproject.toml configures both).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: serve test lint fuzz bench mutation breakages

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

serve: $(BIN)/.installed
	$(BIN)/boostream serve

test: $(BIN)/.installed
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

# The API against its own OpenAPI document (schemathesis; a minute or so): tools/fuzz_api.sh.
fuzz: $(BIN)/.installed
	BIN=$(BIN) bash tools/fuzz_api.sh

bench: $(BIN)/.installed
	$(BIN)/python bench/e2e_overhead.py
	$(BIN)/python bench/progress_latency.py
	$(BIN)/python bench/health_under_load.py

# Run on demand, not in CI (minutes each): docs/mutation.md and docs/breakages.md say how they went.
mutation: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet mutmut==3.8.1
	$(BIN)/mutmut run; $(BIN)/mutmut results

breakages: $(BIN)/.installed
	$(BIN)/python tools/breakages.py
