"""The student packaged for MLflow: a models-from-code pyfunc (`hdkd/deploy/pyfunc_student.py`, no pickled
objects) with the checkpoint (and, when given, the parity-checked compiled artifacts) as artifacts, a
signature and an input example; and the compiled artifacts attached to a registered version."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from hdkd.deploy.artifacts import read_artifact_index
from hdkd.deploy.predict import COMPILED_TAG
from hdkd.deploy.serving import IMAGE_COLUMN, MAX_IMAGE_BYTES_ENV, MAX_IMAGES_ENV, ServingError
from hdkd.files import sha256_file
from hdkd.tracking import pip_requirements
from hdkd.training.checkpoint import load_trained

PYFUNC_CODE = Path(__file__).with_name("pyfunc_student.py")
COMPILED_ARTIFACT_PATH = "compiled"


def example_image(size: int = 16) -> str:
    """Base64 of a small PNG: the logged input example (what the MLflow UI and `serving_input_example.json` show)."""
    from PIL import Image

    buffer = io.BytesIO()
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    Image.fromarray(np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), axis=-1).astype(np.uint8)).save(
        buffer, format="PNG"
    )
    return base64.b64encode(buffer.getvalue()).decode()


def student_signature() -> Any:
    """Inputs: one required string column `image` (base64 image files). Outputs: class, probability,
    probabilities (class -> p). MLflow enforces the inputs only."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Map

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, IMAGE_COLUMN)]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "class"),
                ColSpec(DataType.double, "probability"),
                ColSpec(Map(DataType.double), "probabilities"),
            ]
        ),
    )


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

    checkpoint = Path(checkpoint)
    _, meta = load_trained(checkpoint)  # fails here, naming the file, rather than later in the server
    artifacts = {"checkpoint": str(checkpoint)}
    if compiled_dir is not None:
        if read_artifact_index(compiled_dir)["source"]["sha256"] != sha256_file(checkpoint):
            raise ServingError(
                f"{compiled_dir}: compiled from other weights than {checkpoint}; rerun the compile stage"
            )
        artifacts["compiled"] = str(compiled_dir)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(PYFUNC_CODE),
        artifacts=artifacts,
        registered_model_name=registered_model_name,
        signature=student_signature(),
        input_example=pd.DataFrame({IMAGE_COLUMN: [example_image()]}),
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
            "inputs": "column 'image' of base64 image files; or float32 arrays (N, 3, S, S) after the eval transform "
            "as {'inputs': [...]}",
            "limits": f"{MAX_IMAGES_ENV} images per request, {MAX_IMAGE_BYTES_ENV} bytes per image (server env)",
            "outputs": "class, probability, probabilities (class -> p)",
        },
    )


def log_compiled_artifacts(
    compiled_dir: str | Path, run_id: str, model_name: str, version: str | int
) -> dict[str, str]:
    """Upload `compiled_dir` to the run `run_id` (under `compiled/`) and tag the model version with what was
    built, skipped, its parity and batch-1 speed-up. `hdkd predict --model models:/...` follows the tag
    `compiled.artifact_uri` to the artifacts. Returns the tags set."""
    compiled_dir = Path(compiled_dir)
    index = read_artifact_index(compiled_dir)
    client = MlflowClient()
    client.log_artifacts(run_id, str(compiled_dir), artifact_path=COMPILED_ARTIFACT_PATH)
    tags = {
        COMPILED_TAG: f"runs:/{run_id}/{COMPILED_ARTIFACT_PATH}",
        "compiled.built": ",".join(index["artifacts"]) or "none",
        "compiled.source_sha256": index["source"]["sha256"],
    }
    for target, reason in index["skipped"].items():
        tags[f"compiled.{target}.skipped"] = reason
    for target, reason in index.get("rejected", {}).items():
        tags[f"compiled.{target}.rejected"] = reason
    for name, entry in index["artifacts"].items():
        tags[f"compiled.{name}.max_abs_diff"] = f"{entry['parity']['max_abs_diff']:.3g}"
        tags[f"compiled.{name}.top1_agreement"] = f"{entry['parity']['top1_agreement']:.4f}"
        if speedup := index["latency"].get(name, {}).get("speedup_b1"):
            tags[f"compiled.{name}.speedup_b1"] = f"{speedup:.2f}"
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, value)
    return tags
