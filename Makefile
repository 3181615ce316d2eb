# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check fmt lint typecheck bench clean setup

setup: $(STAMP)

# Reinstall when the dependency list changes. pip caches the llama-cpp-python
# build (about 7 minutes the first time), so later installs are quick.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/strata serve

test: $(STAMP)
	$(BIN)/pytest

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy src

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.usage_crypto

clean:
	rm -rf $(VENV) .strata-test .pytest_cache .mypy_cache .ruff_cache
