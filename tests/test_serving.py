"""The student pyfunc in a real MLflow registry (sqlite), served by `mlflow models serve` over HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from hdkd.predict import COMPILED_TAG, Predictor, resolve_model
from hdkd.serving import ServingError, log_compiled_artifacts, log_student_pyfunc, request_batch
from tests.helpers import CLASSES, SIZE, compiled_student, free_port, toy_images, wait_http

NAME = "hdkd-student"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Version 1 (with the compiled folder, alias champion) and version 2 (checkpoint only) of the student."""
    student, compiled, _ = compiled_student(tmp_path_factory.getbasetemp())
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # artifacts go to ./mlruns of the directory the experiment is created in
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("serving-test")
        versions = {}
        for with_compiled in (True, False):
            with mlflow.start_run() as run:
                info = log_student_pyfunc(
                    student.checkpoint, compiled if with_compiled else None, registered_model_name=NAME
                )
            versions[with_compiled] = (run.info.run_id, info.registered_model_version)
        MlflowClient().set_registered_model_alias(NAME, "champion", versions[True][1])
        yield {"root": root, "uri": uri, "student": student, "compiled": compiled, "versions": versions}
    mlflow.set_tracking_uri(previous_uri)


def _png(seed: int, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(toy_images(1, len(CLASSES), size, seed)[0][0]).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_pyfunc_takes_base64_images_and_float_arrays(registry):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert model.metadata.metadata["classes"] == CLASSES
    images = [_png(1), _png(2)]
    answer = model.predict(pd.DataFrame({"image": [base64.b64encode(png).decode() for png in images]}))
    assert list(answer.columns) == ["class", "probability", "probabilities"] and len(answer) == 2
    predictor = Predictor.load(registry["student"].checkpoint)
    pixels = [np.array(Image.open(io.BytesIO(png)).convert("RGB")) for png in images]
    expected = predictor.predict_images(pixels)
    np.testing.assert_allclose([list(p.values()) for p in answer["probabilities"]], expected, atol=1e-5)
    assert list(answer["class"]) == [CLASSES[i] for i in expected.argmax(1)]

    arrays = request_batch(pd.DataFrame({"image": images}), SIZE)  # raw bytes work too, from Python
    from_arrays = model.predict(arrays)
    np.testing.assert_allclose([list(p.values()) for p in from_arrays["probabilities"]], expected, atol=1e-5)
    with pytest.raises(ServingError, match="image 0: not valid base64"):
        model.predict(pd.DataFrame({"image": ["not base64 at all!"]}))
    with pytest.raises(ServingError, match=r"expected float inputs of shape \(N, 3, 32, 32\)"):
        model.predict(np.zeros((1, 3, 8, 8), np.float32))


def test_compiled_artifacts_are_logged_and_tagged_and_found_by_predict(registry):
    run_id, version = registry["versions"][False]
    tags = log_compiled_artifacts(registry["compiled"], run_id, NAME, version)
    assert tags[COMPILED_TAG] == f"runs:/{run_id}/compiled"
    assert tags["compiled.built"] == "onnx,torch_export"
    assert "tensorrt" in tags["compiled.tensorrt.skipped"] or "CUDA" in tags["compiled.tensorrt.skipped"]
    assert float(tags["compiled.onnx.max_abs_diff"]) <= 1e-3
    assert MlflowClient().get_model_version(NAME, version).tags[COMPILED_TAG] == tags[COMPILED_TAG]
    files = resolve_model(f"models:/{NAME}/{version}")  # a pyfunc without compiled files: found through the tag
    assert files.compiled is not None and (files.compiled / "student.onnx").is_file()
    assert Predictor.load(f"models:/{NAME}/{version}").backend == "onnx"
    assert Predictor.load(f"models:/{NAME}@champion").backend == "onnx"  # the pyfunc's own compiled folder


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_answers_with_class_and_probabilities(registry):
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # the server execs `uvicorn` from PATH
        "MLFLOW_TRACKING_URI": registry["uri"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = registry["root"] / "serve.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            command, cwd=registry["root"], env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 90, server)
        except (TimeoutError, RuntimeError) as error:
            raise AssertionError(f"{error}:\n{log.read_text()[-3000:]}") from None
        images = [_png(4), _png(5, size=64)]
        encoded = [base64.b64encode(png).decode() for png in images]
        url = f"http://127.0.0.1:{port}/invocations"
        answer = _post(url, {"dataframe_split": {"columns": ["image"], "data": [[text] for text in encoded]}})
        predictions = answer["predictions"]
        assert len(predictions) == 2
        expected = Predictor.load(registry["student"].checkpoint).predict_images(
            [np.array(Image.open(io.BytesIO(png)).convert("RGB")) for png in images]
        )
        for prediction, row in zip(predictions, expected, strict=True):
            assert prediction["class"] == CLASSES[int(row.argmax())]
            assert prediction["probability"] == pytest.approx(float(row.max()), abs=1e-5)
            assert list(prediction["probabilities"]) == CLASSES
            np.testing.assert_allclose(list(prediction["probabilities"].values()), row, atol=1e-5)
        # The other documented payload: `inputs` with a column of base64 images.
        assert _post(url, {"inputs": {"image": encoded[:1]}})["predictions"][0] == predictions[0]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the whole group: mlflow's CLI and the uvicorn it started
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
