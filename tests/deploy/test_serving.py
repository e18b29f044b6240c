"""The student pyfunc in a real MLflow registry (sqlite), served by `mlflow models serve` over HTTP."""

from __future__ import annotations

import base64
import io
import json
import os
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

from hdkd.deploy.predict import COMPILED_TAG, Predictor, resolve_model
from hdkd.deploy.pyfunc import log_compiled_artifacts, log_student_pyfunc
from hdkd.deploy.serving import RequestLimits, ServingError, request_batch
from hdkd.deploy.tensorrt_engines import tensorrt_unavailable
from hdkd.servers import stop_group
from hdkd.tracking import use_store
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
        use_store(uri)
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
    use_store(previous_uri)


def _png(seed: int, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(toy_images(1, len(CLASSES), size, seed)[0][0]).save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_pyfunc_takes_base64_images_and_float_arrays(registry):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert model.metadata.metadata["classes"] == CLASSES
    images = [_png(1), _png(2)]
    answer = model.predict(pd.DataFrame({"image": [_b64(png) for png in images]}))
    assert list(answer.columns) == ["class", "probability", "probabilities"] and len(answer) == 2
    predictor = Predictor.load(registry["student"].checkpoint)
    pixels = [np.array(Image.open(io.BytesIO(png)).convert("RGB")) for png in images]
    expected = predictor.predict_images(pixels)
    np.testing.assert_allclose([list(p.values()) for p in answer["probabilities"]], expected, atol=1e-5)
    assert list(answer["class"]) == [CLASSES[i] for i in expected.argmax(1)]

    arrays = request_batch(pd.DataFrame({"image": images}), SIZE)  # raw bytes work too, from Python
    from_arrays = model.predict({"image": list(arrays)})  # float arrays: one (3, S, S) array per cell
    np.testing.assert_allclose([list(p.values()) for p in from_arrays["probabilities"]], expected, atol=1e-5)
    with pytest.raises(ServingError, match="image 0: not valid base64"):
        model.predict(pd.DataFrame({"image": ["not base64 at all!"]}))
    with pytest.raises(ServingError, match=r"expected float inputs of shape \(N, 3, 32, 32\)"):
        model.predict({"image": list(np.zeros((1, 3, 8, 8), np.float32))})


def test_registered_versions_carry_a_signature_and_an_input_example(registry):
    info = mlflow.models.get_model_info(f"models:/{NAME}@champion")
    assert info.signature is not None
    assert info.signature.inputs.input_names() == ["image"]
    assert info.signature.inputs.to_dict()[0] == {"type": "string", "name": "image", "required": True}
    assert info.signature.outputs.input_names() == ["class", "probability", "probabilities"]
    assert info.saved_input_example_info is not None
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion"))
    example = json.loads((local / "serving_input_example.json").read_text())
    model = mlflow.pyfunc.load_model(str(local))
    cells = example["dataframe_split"]["data"]
    assert len(model.predict(pd.DataFrame({"image": [row[0] for row in cells]}))) == len(cells)


def test_request_limits_come_from_the_environment(monkeypatch):
    assert RequestLimits.from_env() == RequestLimits(64, 8 * 2**20)
    monkeypatch.setenv("HDKD_MAX_REQUEST_IMAGES", "3")
    monkeypatch.setenv("HDKD_MAX_IMAGE_BYTES", "1000")
    assert RequestLimits.from_env() == RequestLimits(3, 1000)
    monkeypatch.setenv("HDKD_MAX_REQUEST_IMAGES", "many")
    with pytest.raises(ServingError, match="HDKD_MAX_REQUEST_IMAGES='many': expected a positive whole number"):
        RequestLimits.from_env()


def test_compiled_artifacts_are_logged_and_tagged_and_found_by_predict(registry):
    run_id, version = registry["versions"][False]
    tags = log_compiled_artifacts(registry["compiled"], run_id, NAME, version)
    assert tags[COMPILED_TAG] == f"runs:/{run_id}/compiled"
    assert tags["compiled.built"] == "onnx,torch_export"
    if tensorrt_unavailable() is not None:
        assert "tensorrt" in tags["compiled.tensorrt.skipped"] or "CUDA" in tags["compiled.tensorrt.skipped"]
    assert float(tags["compiled.onnx.max_abs_diff"]) <= 1e-3
    assert MlflowClient().get_model_version(NAME, version).tags[COMPILED_TAG] == tags[COMPILED_TAG]
    files = resolve_model(f"models:/{NAME}/{version}")  # a pyfunc without compiled files: found through the tag
    assert files.compiled is not None and (files.compiled / "student.onnx").is_file()
    assert Predictor.load(f"models:/{NAME}/{version}").backend == "onnx"
    assert Predictor.load(f"models:/{NAME}@champion").backend == "onnx"  # the pyfunc's own compiled folder


MAX_IMAGES, MAX_IMAGE_BYTES = 4, 30_000  # small limits in the served process, to test the refusals


def _request(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _post(url: str, payload: dict) -> dict:
    status, body = _request(url, payload)
    assert status == 200, body
    return body


@pytest.fixture(scope="module")
def server(registry):
    """One `mlflow models serve` of the champion for every HTTP test of this module (it takes ~12 s to start)."""
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # the server execs `uvicorn` from PATH
        "MLFLOW_TRACKING_URI": registry["uri"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "HDKD_MAX_REQUEST_IMAGES": str(MAX_IMAGES),
        "HDKD_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
    }
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    log = registry["root"] / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=registry["root"], env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 90, process)
        except (TimeoutError, RuntimeError) as error:
            raise AssertionError(f"{error}:\n{log.read_text()[-3000:]}") from None
        yield {"url": f"http://127.0.0.1:{port}/invocations", "log": log}
    finally:
        stop_group(process)  # the whole group: mlflow's CLI and the uvicorn it started


@pytest.mark.slow  # starts a server
def test_mlflow_models_serve_answers_with_class_and_probabilities(registry, server):
    images = [_png(4), _png(5, size=64)]
    encoded = [_b64(png) for png in images]
    url = server["url"]
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
    # The other documented payloads: `inputs` with a column of base64 images, and float arrays.
    assert _post(url, {"inputs": {"image": encoded[:1]}})["predictions"][0] == predictions[0]
    floats = request_batch(pd.DataFrame({"image": images}), SIZE)
    from_floats = _post(url, {"inputs": floats.tolist()})["predictions"]
    np.testing.assert_allclose([list(p["probabilities"].values()) for p in from_floats], expected, atol=1e-5)
    log = server["log"].read_text()
    assert "hdkd-student pyfunc: backend onnx" in log
    assert "Add type hints" not in log  # the pyfunc's predict is annotated: MLflow stops asking on every load


def _split(*cells) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [[cell] for cell in cells]}}


def _noise_png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


GOOD = _b64(_png(6))
REFUSALS = {
    "malformed base64": (_split("not base64 at all!"), "image 0: not valid base64"),
    "data URL": (_split("data:image/png;base64," + GOOD), "image 0: not valid base64 (send the base64 text alone"),
    "not an image": (_split(GOOD, _b64(b"plain text, no image")), "image 1: not a readable image"),
    "empty bytes": (_split(""), "image 0: empty"),
    "empty batch": (_split(), "empty batch: the request holds no images"),
    "empty inputs": ({"inputs": {"image": []}}, "empty batch: the request holds no images"),
    "null cell": (_split(GOOD, None), "image 1: null"),
    "number cell": (_split(3), "image 0: expected base64 text of an image file, got int"),
    "float cell": (_split(GOOD, 2.5), "image 1: expected base64 text of an image file, got float"),
    "float arrays of the wrong shape": (
        {"inputs": np.zeros((1, 3, 8, 8)).tolist()},
        "expected float inputs of shape (N, 3, 32, 32), got (1, 3, 8, 8)",
    ),
    "float arrays, one image without batch axis, wrong size": (
        {"inputs": np.zeros((3, 8, 8)).tolist()},
        "expected float inputs of shape (N, 3, 32, 32), got (1, 3, 8, 8)",
    ),
    "too many images": (_split(*[GOOD] * (MAX_IMAGES + 1)), "5 images in one request, over the limit of 4"),
    "image over the byte limit": (_split(_b64(_noise_png(120))), f"over the limit of {MAX_IMAGE_BYTES}"),
}


@pytest.mark.slow  # starts a server
def test_bad_requests_get_a_400_with_the_reason_and_one_log_line_each(server):
    """Every refusal in one server: 400, the reason itself as `message` (no traceback, no request echoed back),
    and one line in the server's log."""
    for case, (payload, reason) in REFUSALS.items():
        status, body = _request(server["url"], payload)
        assert status == 400, (case, body)
        assert body["error_code"] == "INVALID_PARAMETER_VALUE", (case, body)
        assert body["message"].startswith(reason) or reason in body["message"], (case, body)
        assert "stack_trace" not in body and len(body["message"]) < 300, (case, body)
    refused = [line for line in server["log"].read_text().splitlines() if "hdkd-student pyfunc: refused" in line]
    assert len(refused) == len(REFUSALS), refused
    for line, (_, reason) in zip(refused, REFUSALS.values(), strict=True):
        assert reason in line


@pytest.mark.slow  # starts a server
def test_a_wrong_column_is_refused_by_mlflows_schema_enforcement(server):
    """The signature's required `image` column is enforced by MLflow before the pyfunc runs: its message names
    the missing and the extra columns (and repeats the request, which MLflow's enforcement always does)."""
    status, body = _request(server["url"], {"dataframe_split": {"columns": ["picture"], "data": [[GOOD]]}})
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body
    assert "Model is missing inputs ['image']. Note that there were extra inputs: ['picture']" in body["message"]
    assert "stack_trace" not in body
