"""Prefect: the flow under the test harness, and a real server with the served `hdkd/full` deployment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import yaml

from flows.local import prefect_env
from hdkd.tracking import use_store
from tests.helpers import free_port, wait_http
from tests.repo import VENV_BIN, env, make_repo, run, use_env


def run_flow_in(repo, **parameters):
    """Run the flow in-process with the repository as working directory, under Prefect's harness."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.hdkd_flow import hdkd

    previous = os.getcwd()
    os.chdir(repo)
    try:
        with prefect_test_harness(server_startup_timeout=120):
            return hdkd(**parameters, return_state=True)
    finally:
        os.chdir(previous)


@pytest.mark.slow
def test_flow_under_harness_reruns_what_changed_and_leaves_dvc_clean(pipeline_repo, monkeypatch):
    use_env(monkeypatch)
    state = run_flow_in(pipeline_repo, overrides={"distill.alpha": 0.7})
    assert state.is_completed(), state.message
    assert yaml.safe_load((pipeline_repo / "params.yaml").read_text())["distill"]["alpha"] == 0.7
    assert run(["dvc", "status", "-q"], pipeline_repo, check=False).returncode == 0


@pytest.mark.slow
def test_flow_with_invalid_data_fails_with_the_validation_message(tmp_path, monkeypatch):
    use_env(monkeypatch)
    images = tmp_path / "images"
    from PIL import Image

    for label, count in {"benign": 6, "malignant": 1}.items():
        (images / label).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 40), (40 * i, 90, 120)).save(images / label / f"{i}.png")
    repo = make_repo(tmp_path / "repo", {"data": {"source": "imagefolder", "path": str(images), "min_per_class": 3}})
    state = run_flow_in(repo)
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert "validate" in message and "malignant" in message


@pytest.mark.slow
def test_real_server_runs_the_served_deployment_from_the_cli(pipeline_repo, tmp_path):
    from mlflow import MlflowClient

    use_store(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    before = MlflowClient().search_model_versions("name='hdkd-student'")
    port = free_port()
    server_env = {**env(), **prefect_env(port, tmp_path / "prefect-home"), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    started = []
    try:
        server = subprocess.Popen(
            [str(VENV_BIN / "prefect"), "server", "start"],
            env=server_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(server)
        wait_http(f"{server_env['PREFECT_API_URL']}/health", 180, server)
        served_log = open(tmp_path / "served.log", "w")  # noqa: SIM115 (closed with the process)
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.serve"],
            cwd=pipeline_repo,
            env=server_env,
            stdout=served_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(served)
        wait_http(f"{server_env['PREFECT_API_URL']}/deployments/name/hdkd/full", 180, served)
        result = subprocess.run(
            [
                str(VENV_BIN / "prefect"),
                "deployment",
                "run",
                "hdkd/full",
                "--param",
                'compile_targets=["onnx"]',  # a named flow parameter: compile and register run again
                "--watch",
                "--watch-interval",
                "1",
                "--watch-timeout",
                "900",
            ],
            env=server_env,
            capture_output=True,
            text=True,
            timeout=1000,
        )
        served_tail = (tmp_path / "served.log").read_text()[-6000:]
        assert "Flow run finished successfully in 'Completed'." in result.stdout, result.stdout + served_tail
    finally:
        for process in reversed(started):
            os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    assert yaml.safe_load((pipeline_repo / "params.yaml").read_text())["compile"]["targets"] == ["onnx"]
    assert run(["dvc", "status", "-q"], pipeline_repo, check=False).returncode == 0

    # compile and register ran again on the same weights and built the same ONNX file: the same model, no version
    assert "hdkd-student unchanged: version" in (tmp_path / "served.log").read_text()
    assert len(MlflowClient().search_model_versions("name='hdkd-student'")) == len(before) >= 1
