# One command for the main job (`make run`), one for the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Stage commands run `python` from PATH: the venv comes first.
export PATH := $(BIN):$(PATH)

.PHONY: setup test lint run clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache
