# One command for the main job (`make run`), one for the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Stage commands run `python` from PATH: the venv comes first.
export PATH := $(BIN):$(PATH)

.PHONY: setup test test-fast lint run serve gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

test: setup
	$(BIN)/python -m pytest

# The quick loop: everything but the end-to-end tests and the tests that start a server (marked `slow`).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

run: setup
	$(BIN)/dvc repro
	$(BIN)/hdkd summary

# A local Prefect server on 127.0.0.1 plus the served deployment hdkd/full (Ctrl-C stops both).
serve: setup
	$(BIN)/python -m flows.local

# On a CUDA machine: the tensorrt extra, fp32/fp16 engines with parity (the `gpu` tests) and the latency
# table against eager CUDA and ONNX Runtime. Elsewhere it stops at once, naming what is missing.
gpu-check: setup
	@$(BIN)/python -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu-check: no CUDA GPU here (torch.cuda.is_available() is False); it needs Linux, an NVIDIA driver for CUDA 13 and the tensorrt extra')"
	$(BIN)/python -m pip install --quiet -e '.[dev,tensorrt]'
	$(BIN)/python -m pytest -m gpu -v
	$(BIN)/python benchmarks/compile_latency.py --preset paper --tensorrt

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache
