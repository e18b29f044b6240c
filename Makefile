# One command for the main job (`make run`), one for the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Stage commands run `python` from PATH: the venv comes first.
export PATH := $(BIN):$(PATH)

.PHONY: setup test test-fast lint deps run serve mlflow-ui optuna-dashboard serve-model gpu-check clean postgres

setup: $(VENV)/.installed

VENV_PATH_HOOK := import os, sys; os.environ["PATH"] = os.pathsep.join(dict.fromkeys([os.path.join(sys.prefix, "bin"), *os.environ.get("PATH", "").split(os.pathsep)]))

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,team]'
	@# The venv's own tools (.venv/bin/dvc, .venv/bin/mlflow, ...) put the venv first on PATH for what they start:
	@# DVC's stages run `python` and `mlflow models serve` runs `uvicorn` from PATH, even without `activate`.
	printf '%s\n' '$(VENV_PATH_HOOK)' > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/hdkd_venv_path.pth"
	touch $@

# The Optuna and team-server tests start a real PostgreSQL (initdb, pg_ctl): installed here where we may
# (root on Debian), otherwise make stops before any test with the command that installs it.
POSTGRES_BIN := $(firstword $(dir $(shell command -v initdb 2>/dev/null)) $(wildcard /usr/lib/postgresql/*/bin/))

# Two pytest workers, a test file each at a time (a file's tests share its slow fixtures), one thread each.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile
test: setup postgres
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_PARALLEL)

postgres:
ifeq ($(POSTGRES_BIN),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make test: installing PostgreSQL's server (apt-get install postgresql) for the tests that start one"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else \
		echo "make test: the tests need PostgreSQL's server binaries (initdb, pg_ctl); install them first: sudo apt-get install postgresql (Debian/Ubuntu) or brew install postgresql (macOS)"; \
		exit 1; \
	fi
endif

# The quick loop: everything but the end-to-end tests and the tests that start a server (marked `slow`).
test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

# dvc.yaml's code deps from the import graph: every module a stage runs, lazy imports too (hdkd/stage_deps.py).
deps: setup
	$(BIN)/python -m hdkd.stage_deps

run: setup
	$(BIN)/dvc repro
	$(BIN)/hdkd summary

# Every server below binds $(BIND), 127.0.0.1 unless told otherwise (`make serve BIND=0.0.0.0`); another
# address without authentication prints a warning saying what anyone who reaches it could do.
BIND ?= 127.0.0.1

# A Prefect server plus the served deployments hdkd/full and hdkd/ablation (Ctrl-C stops both). With
# PREFECT_SERVER_API_AUTH_STRING=user:password set, it refuses API clients without that string.
serve: setup
	PREFECT_SERVER_API_HOST=$(BIND) $(BIN)/python -m flows.local

# The MLflow UI on the local store, optuna-dashboard on the local studies, the champion as an HTTP model server.
mlflow-ui: setup
	@$(BIN)/python -m hdkd.servers $(BIND) mlflow-ui
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db -h $(BIND) -p 5000 -w 1

optuna-dashboard: setup
	@$(BIN)/python -m hdkd.servers $(BIND) optuna-dashboard
	$(BIN)/optuna-dashboard sqlite:///optuna.db --host $(BIND) --port 8080

serve-model: setup
	@$(BIN)/python -m hdkd.servers $(BIND) model-server
	$(BIN)/mlflow models serve -m models:/hdkd-student@champion --env-manager local -h $(BIND) -p 5001

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
