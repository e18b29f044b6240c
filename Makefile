# One command for the main job (`make run`), one for the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Stage commands run `python` from PATH: the venv comes first.
export PATH := $(BIN):$(PATH)

.PHONY: setup test test-fast lint run serve clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

test: setup
	$(BIN)/python -m pytest

# The quick loop: everything but the end-to-end and real-server tests (marked `slow`).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

run: setup
	$(BIN)/dvc repro
	$(BIN)/hdkd summary

# A local Prefect server on 127.0.0.1 plus the served deployment hdkd/full (Ctrl-C stops both).
serve: setup
	$(BIN)/python -m flows.local

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache
