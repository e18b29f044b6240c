"""Local servers and tools started as child processes (Prefect in `make serve`, `mlflow models serve` in
benchmarks and tests, DVC from flows and `hdkd ablate`): their environment, wait until one answers, stop one
with everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request


def tool_env(**extra: str) -> dict[str, str]:
    """This interpreter's bin folder first on PATH, so `dvc`, the processes DVC spawns (its queue workers) and
    the stages' `python` are the project's even when the caller ran `.venv/bin/hdkd` without activating."""
    bin_dir = os.path.dirname(sys.executable)
    return {
        **os.environ,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1"),
        **extra,
    }


def wait_for(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Until `url` answers; fails early, naming the URL, when `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 (a local http URL)
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_group(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM to the process group started with `start_new_session=True` (a CLI and the workers it
    started), SIGKILL if it is still there after `timeout` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
