"""Classify image files with the student through any backend: eager PyTorch, ONNX Runtime or TensorRT.

A model is named by a registry URI (`models:/hdkd-student@champion`, the student pyfunc logged by
`hdkd.deploy.pyfunc.log_student_pyfunc`, plus the compiled artifacts that `register` logged to its run), a
checkpoint (`models/distilled/best.pt`) or a compiled folder (`models/compiled`). Preprocessing is
the training eval transform, so a file gives the same probabilities here, in the pipeline and when served.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hdkd.deploy.artifacts import ARTIFACT_INDEX, ArtifactError, read_artifact_index
from hdkd.deploy.runtime import Runner, TorchRunner, load_runner, preprocess, softmax
from hdkd.errors import HDKDError
from hdkd.files import sha256_file

DEFAULT_MODEL = "models:/hdkd-student@champion"
BACKENDS = ("auto", "torch", "onnx", "onnx_int8", "tensorrt")
RUNTIME_ARTIFACTS = ("tensorrt_fp16", "tensorrt_fp32", "onnx_int8", "onnx")  # what `auto` may choose from


def fastest_first(index: dict[str, Any]) -> list[str]:
    """The compiled artifacts `auto` may use, by the batch-1 latency the compile stage measured (unmeasured last)."""
    latency = index.get("latency", {})
    names = [name for name in RUNTIME_ARTIFACTS if name in index["artifacts"]]
    return sorted(names, key=lambda name: latency.get(name, {}).get("b1_median_ms", float("inf")))


IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"})
COMPILED_TAG = "compiled.artifact_uri"  # model-version tag set by hdkd.deploy.pyfunc.log_compiled_artifacts
READ_BATCH = 64  # images decoded and classified together: bounded memory on large folders


class PredictError(HDKDError, ValueError):
    """A model, backend or image that cannot be used for prediction."""


@dataclass(frozen=True)
class ModelFiles:
    """Local files of one student: its checkpoint and/or a compiled folder."""

    source: str
    checkpoint: Path | None = None
    compiled: Path | None = None


def _pyfunc_files(model_dir: Path, uri: str) -> tuple[Path, Path | None]:
    """The checkpoint and (when logged with it) compiled folder inside a downloaded student pyfunc."""
    from mlflow.models import Model

    artifacts = Model.load(str(model_dir)).flavors.get("python_function", {}).get("artifacts", {})
    if "checkpoint" not in artifacts:
        raise PredictError(
            f"{uri}: not an hdkd student pyfunc (no 'checkpoint' artifact); log it with "
            "hdkd.deploy.pyfunc.log_student_pyfunc"
        )
    compiled = artifacts.get("compiled")
    return model_dir / artifacts["checkpoint"]["path"], model_dir / compiled["path"] if compiled else None


def _compiled_of_version(uri: str) -> Path | None:
    """The compiled folder linked to a registered version (tag `compiled.artifact_uri`), if any."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, sep, ref = uri.removeprefix("models:/").partition("@")
    client = MlflowClient()
    try:
        if sep:
            version = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
    except MlflowException:
        return None
    if COMPILED_TAG not in version.tags:
        return None
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.tags[COMPILED_TAG]))


def resolve_model(spec: str | Path) -> ModelFiles:
    """Local files for a registry URI, a checkpoint file, a folder holding `best.pt`, or a compiled folder."""
    text = str(spec)
    if text.startswith("models:/"):
        import mlflow
        from mlflow.exceptions import MlflowException

        from hdkd.tracking import check_server

        check_server(mlflow.get_tracking_uri())
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text))
        except MlflowException as error:
            raise PredictError(
                f"{text}: not found in the MLflow registry at {mlflow.get_tracking_uri()} "
                f"({str(error).splitlines()[0]}); run `dvc repro` or pass a checkpoint or models/compiled"
            ) from None
        checkpoint, compiled = _pyfunc_files(local, text)
        compiled = compiled or _compiled_of_version(text)
        if compiled is not None and read_artifact_index(compiled)["source"]["sha256"] != sha256_file(checkpoint):
            compiled = None  # compiled from other weights than this version's: never serve those
        return ModelFiles(text, checkpoint, compiled)
    path = Path(spec)
    if path.is_file():
        return ModelFiles(text, checkpoint=path)
    if (path / ARTIFACT_INDEX).is_file():
        return ModelFiles(text, compiled=path)
    if (path / "best.pt").is_file():
        return ModelFiles(text, checkpoint=path / "best.pt")
    raise PredictError(
        f"{path}: no model here (expected a .pt checkpoint, a folder with best.pt, or a compiled folder)"
    )


@dataclass
class Predictor:
    """Class probabilities for images, through one backend runner."""

    runner: Runner
    classes: list[str]
    image_size: int
    backend: str
    source: str
    passed_over: list[str] = field(default_factory=list)  # faster artifacts that cannot run here, and why

    @classmethod
    def load(cls, model: str | Path = DEFAULT_MODEL, backend: str = "auto") -> Predictor:
        return cls.from_files(resolve_model(model), backend)

    @classmethod
    def from_files(cls, files: ModelFiles, backend: str = "auto") -> Predictor:
        """Pick the runner. `auto`: the fastest compiled artifact (batch-1 latency measured by the compile
        stage) that passed its checks and runs here, else PyTorch; an artifact that cannot run here (a
        TensorRT engine without its GPU) is passed over, and why is kept in `passed_over`."""
        if backend not in BACKENDS:
            raise PredictError(f"unknown backend {backend!r}: use one of {list(BACKENDS)}")
        index = read_artifact_index(files.compiled) if files.compiled else None
        built = set(index["artifacts"]) if index else set()
        if backend == "auto":
            passed_over: list[str] = []
            if files.compiled is not None and index is not None:
                for name in fastest_first(index):
                    try:
                        chosen = load_runner(files.compiled, name, index)
                    except ArtifactError as error:
                        passed_over.append(f"{name}: {error}")
                        continue
                    return cls._compiled(chosen, files, index, name, passed_over)
            return cls.from_files(files, "torch")._passing_over(passed_over)
        if backend == "torch" and files.checkpoint is not None:
            from hdkd.training.checkpoint import load_trained

            model, meta = load_trained(files.checkpoint)
            runner: Runner = TorchRunner("torch", model, max_batch=READ_BATCH)
            return cls(runner, list(meta["classes"]), int(meta["img_size"]), "torch", str(files.checkpoint))
        wanted = {
            "tensorrt": [name for name in ("tensorrt_fp16", "tensorrt_fp32") if name in built],
            "onnx": ["onnx"],
            "onnx_int8": ["onnx_int8"],
            "torch": ["torch_export"],
        }[backend]
        name = next((name for name in wanted if name in built), "")
        if not name:
            raise PredictError(
                f"{files.source}: no {backend} artifact was compiled (built: {sorted(built) or 'none'}); run the "
                "compile stage with that target, pass --model models/compiled, or pass the checkpoint "
                "(models/distilled/best.pt) for --backend torch"
            )
        assert files.compiled is not None and index is not None
        return cls._compiled(load_runner(files.compiled, name, index), files, index, name, [], backend)

    @classmethod
    def _compiled(
        cls,
        runner: Runner,
        files: ModelFiles,
        index: dict[str, Any],
        name: str,
        passed_over: list[str],
        label: str | None = None,
    ) -> Predictor:
        assert files.compiled is not None
        source = str(files.compiled / index["artifacts"][name]["file"])
        predictor = cls(runner, list(index["classes"]), int(index["image_size"]), label or name, source)
        return predictor._passing_over(passed_over)

    def _passing_over(self, reasons: list[str]) -> Predictor:
        self.passed_over = reasons
        return self

    def predict_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes) for preprocessed float32 NCHW inputs."""
        expected = (3, self.image_size, self.image_size)
        if inputs.ndim != 4 or inputs.shape[1:] != expected:
            raise PredictError(
                f"expected float32 inputs of shape (N, {', '.join(map(str, expected))}), got {inputs.shape}"
            )
        return softmax(self.runner(np.ascontiguousarray(inputs, dtype=np.float32)))

    def predict_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities for uint8 RGB HWC images of any size (each resized by the eval transform)."""
        if not images:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        inputs = np.concatenate([preprocess(image[None], self.image_size) for image in images])
        return self.predict_inputs(inputs)

    def describe(self, probabilities: np.ndarray) -> list[dict[str, Any]]:
        """`[{"class": ..., "probability": ..., "probabilities": {class: p}}]`, one per row."""
        rows = []
        for row in probabilities:
            best = int(row.argmax())
            rows.append(
                {
                    "class": self.classes[best],
                    "probability": float(row[best]),
                    "probabilities": {name: float(p) for name, p in zip(self.classes, row, strict=True)},
                }
            )
        return rows


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Encoded image bytes -> uint8 RGB HWC; a clear error naming `source` when they are not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.array(image.convert("RGB"))  # a writable copy: torch refuses read-only buffers
    except UnidentifiedImageError:
        raise PredictError(f"{source}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise PredictError(f"{source}: not a readable image ({error})") from None


def read_image(path: str | Path) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PredictError(f"{path}: cannot read it ({error.strerror or error})") from None
    return decode_image(data, str(path))


def find_images(paths: Sequence[str | Path]) -> Iterator[Path]:
    """Files as given; folders searched recursively for image extensions, in sorted order. A path that does
    not exist is passed on, so that reading it reports it in order with the others."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            yield path


@dataclass(frozen=True)
class Prediction:
    path: Path
    result: dict[str, Any] | None = None
    error: str | None = None


def predict_files(predictor: Predictor, paths: Sequence[str | Path]) -> Iterator[Prediction]:
    """One Prediction per image, in order; unreadable files give an error entry and the rest go on."""
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> Iterator[Prediction]:
        rows = predictor.describe(predictor.predict_images([image for _, image in batch]))
        yield from (Prediction(path, row) for (path, _), row in zip(batch, rows, strict=True))
        batch.clear()

    for path in find_images(paths):
        try:
            batch.append((path, read_image(path)))
        except PredictError as error:
            yield from flush()  # keep the output in input order
            yield Prediction(path, error=str(error))
            continue
        if len(batch) == READ_BATCH:
            yield from flush()
    yield from flush()
