"""A throw-away copy of this repository with tiny params, for tests that run the real pipeline."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO

VENV_BIN = Path(sys.executable).parent

TINY = {
    "data": {"synthetic_images": 160, "image_size": 32, "min_per_class": 2},
    "teacher": {"epochs": 2},
    "student": {"epochs": 1},
    "distill": {"epochs": 2},
    "balance": {"enabled": True, "k_neighbors": 2},  # the demo turns SMOTE off for speed; the tests keep it
    "tune": {"enabled": True, "n_trials": 2, "epochs": 1, "sampler_startup_trials": 2},
    "compile": {"targets": ["onnx", "tensorrt"], "latency_repeats": 3, "parity_min_agreement_fp16": 0.9},
}


def env() -> dict[str, str]:
    """The venv first on PATH (DVC stages call `python`), a git identity, no outside tracking or registry URI."""
    values = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "TQDM_DISABLE": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
    }
    for outside in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        values.pop(outside, None)
    return values


def use_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's own environment made `env()`, for code run in-process that starts stages."""
    values = env()
    for key in set(os.environ) - set(values):
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def run(
    cmd: list[str], cwd: Path, check: bool = True, timeout: float = 1200, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def _merge(tree: dict, patch: dict) -> dict:
    for key, value in patch.items():
        nested = isinstance(value, dict) and key != "targets"
        tree[key] = _merge(dict(tree.get(key) or {}), value) if nested else value
    return tree


def make_repo(dest: Path, params: dict | None = None) -> Path:
    """Copy what a fresh clone holds (tracked and new, not ignored files) and make it a git repo."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    tree = _merge(_merge(yaml.safe_load((dest / "params.yaml").read_text()), TINY), params or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "copy"], dest)
    return dest


def start_group(cmd: list[str], cwd: Path, **extra_env: str) -> subprocess.Popen:
    """A child in its own process group, so a SIGKILL reaches the stage under `dvc repro` too."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**env(), **extra_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
