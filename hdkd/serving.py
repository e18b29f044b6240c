"""The student as an MLflow pyfunc model, so `mlflow models serve -m models:/hdkd-student@champion
--env-manager local` answers HTTP predictions, and the compiled artifacts attached to a registered version.

The pyfunc is logged from code (`hdkd/pyfunc_student.py`, no pickled objects) with the checkpoint (and,
when given, the parity-checked ONNX model) as artifacts. It takes

  - encoded images: a column `image` of base64 strings (or raw bytes from Python), e.g.
    `{"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}` or
    `{"inputs": {"image": ["<base64>", ...]}}`;
  - float arrays: preprocessed float32 batches (N, 3, S, S) (eval transform: resize, ImageNet
    normalisation), e.g. `{"inputs": [[[[...]]]]}`;

and answers one row per image: `class`, `probability` (of that class) and `probabilities` (class -> p).
It has no MLflow signature on purpose: a signature enforces one input kind and this model takes two.
"""

from __future__ import annotations

import base64
import binascii
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from hdkd.errors import HDKDError

PYFUNC_CODE = Path(__file__).with_name("pyfunc_student.py")
IMAGE_COLUMN = "image"
COMPILED_ARTIFACT_PATH = "compiled"


class ServingError(HDKDError, ValueError):
    """A request or a model folder that the student pyfunc cannot use."""


def _image_bytes(value: Any, index: int) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ServingError(f"image {index}: not valid base64") from None
    raise ServingError(f"image {index}: expected base64 text or bytes, got {type(value).__name__}")


def request_batch(model_input: Any, image_size: int) -> np.ndarray:
    """Whatever MLflow hands to `predict` (DataFrame, dict of columns, array, list) -> float32 NCHW inputs."""
    from hdkd.predict import decode_image
    from hdkd.runtime import preprocess

    if isinstance(model_input, pd.DataFrame | Mapping) and IMAGE_COLUMN in model_input:
        values = list(model_input[IMAGE_COLUMN])
        images = [decode_image(_image_bytes(value, i), f"image {i}") for i, value in enumerate(values)]
        if not images:
            return np.zeros((0, 3, image_size, image_size), dtype=np.float32)
        return np.concatenate([preprocess(image[None], image_size) for image in images])
    if isinstance(model_input, pd.DataFrame | Mapping):
        raise ServingError(f"expected a column {IMAGE_COLUMN!r} of base64 images, got columns {list(model_input)}")
    array = np.asarray(model_input, dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != (3, image_size, image_size):
        raise ServingError(f"expected float inputs of shape (N, 3, {image_size}, {image_size}), got {array.shape}")
    return array


# MLflow asks for a type hint on `predict` when the class is defined; a hint would become the input
# schema and reject one of the two input forms, so the request is answered here, once, not every import.
warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method", category=UserWarning)


class StudentPyfunc(PythonModel):
    """Loads once per process, on the fastest parity-checked backend that runs here (see `Predictor`)."""

    def load_context(self, context: Any) -> None:
        from hdkd.predict import ModelFiles, Predictor

        compiled = context.artifacts.get("compiled")
        files = ModelFiles("pyfunc", Path(context.artifacts["checkpoint"]), Path(compiled) if compiled else None)
        self.predictor = Predictor.from_files(files, backend="auto")
        # In the server's log, so an operator sees which runtime answers (and why not a faster one).
        print(
            f"hdkd-student pyfunc: backend {self.predictor.backend} ({self.predictor.source})",
            file=sys.stderr,
            flush=True,
        )

    # `model_input` has no annotation on purpose: MLflow reads one as the model's input schema.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        inputs = request_batch(model_input, self.predictor.image_size)
        rows = self.predictor.describe(self.predictor.predict_inputs(inputs))
        return pd.DataFrame(rows, columns=["class", "probability", "probabilities"])


def log_student_pyfunc(
    checkpoint: str | Path,
    compiled_dir: str | Path | None = None,
    name: str = "pyfunc",
    registered_model_name: str | None = None,
) -> Any:
    """Log the student as a models-from-code pyfunc in the active MLflow run; returns MLflow's ModelInfo.

    With `compiled_dir` (models/compiled, compiled from this very checkpoint) the compiled artifacts go
    with it and the server picks TensorRT or ONNX Runtime where they run; otherwise it runs eager PyTorch.
    """
    import onnxruntime
    import PIL
    import timm

    from hdkd.checkpoint import load_trained
    from hdkd.files import sha256_file
    from hdkd.runtime import read_artifact_manifest
    from hdkd.tracking import pip_requirements

    checkpoint = Path(checkpoint)
    _, meta = load_trained(checkpoint)  # fails here, naming the file, rather than later in the server
    artifacts = {"checkpoint": str(checkpoint)}
    if compiled_dir is not None:
        if read_artifact_manifest(compiled_dir)["source"]["sha256"] != sha256_file(checkpoint):
            raise ServingError(
                f"{compiled_dir}: compiled from other weights than {checkpoint}; rerun the compile stage"
            )
        artifacts["compiled"] = str(compiled_dir)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(PYFUNC_CODE),
        artifacts=artifacts,
        registered_model_name=registered_model_name,
        pip_requirements=[
            *pip_requirements(),
            f"pandas=={pd.__version__}",
            f"pillow=={PIL.__version__}",
            f"timm=={timm.__version__}",
            f"onnxruntime=={onnxruntime.__version__}",
        ],
        metadata={
            "hdkd_kind": meta["kind"],
            "hdkd_preset": meta["preset"],
            "classes": list(meta["classes"]),
            "image_size": int(meta["img_size"]),
            "inputs": "column 'image' of base64 images, or float32 arrays (N, 3, S, S) after the eval transform",
            "outputs": "class, probability, probabilities (class -> p)",
        },
    )


def log_compiled_artifacts(
    compiled_dir: str | Path, run_id: str, model_name: str, version: str | int
) -> dict[str, str]:
    """Upload `compiled_dir` to the run `run_id` (under `compiled/`) and tag the model version with what was
    built, skipped, its parity and batch-1 speed-up. `hdkd predict --model models:/...` follows the tag
    `compiled.artifact_uri` to the artifacts. Returns the tags set."""
    from mlflow import MlflowClient

    from hdkd.predict import COMPILED_TAG
    from hdkd.runtime import read_artifact_manifest

    compiled_dir = Path(compiled_dir)
    manifest = read_artifact_manifest(compiled_dir)
    client = MlflowClient()
    client.log_artifacts(run_id, str(compiled_dir), artifact_path=COMPILED_ARTIFACT_PATH)
    tags = {
        COMPILED_TAG: f"runs:/{run_id}/{COMPILED_ARTIFACT_PATH}",
        "compiled.built": ",".join(manifest["artifacts"]) or "none",
        "compiled.source_sha256": manifest["source"]["sha256"],
    }
    for target, reason in manifest["skipped"].items():
        tags[f"compiled.{target}.skipped"] = reason
    for name, entry in manifest["artifacts"].items():
        tags[f"compiled.{name}.max_abs_diff"] = f"{entry['parity']['max_abs_diff']:.3g}"
        tags[f"compiled.{name}.top1_agreement"] = f"{entry['parity']['top1_agreement']:.4f}"
        if speedup := manifest["latency"].get(name, {}).get("speedup_b1"):
            tags[f"compiled.{name}.speedup_b1"] = f"{speedup:.2f}"
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, value)
    return tags
