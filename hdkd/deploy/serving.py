"""The served student: the MLflow pyfunc behind `mlflow models serve -m models:/hdkd-student@champion
--env-manager local`, and how it reads and refuses requests (`hdkd.deploy.pyfunc` logs it).

Its signature has one required string column, `image`: base64-encoded image files (PNG, JPEG, ...), e.g.
`{"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}` or
`{"inputs": {"image": ["<base64>", ...]}}`. Preprocessed float32 arrays (N, 3, S, S) (eval transform:
resize, ImageNet normalisation) still work as `{"inputs": [[[[...]]]]}`: MLflow's schema enforcement
turns that payload into an `image` column with one nested list per row, which is taken as floats.
From Python, pass `{"image": list(batch)}` (MLflow refuses a bare 4-D array against a column signature).

It answers one row per image: `class`, `probability` (of that class) and `probabilities` (class -> p).
A request it cannot use is refused with HTTP 400 and the reason as the response's `message`
(e.g. "image 0: not valid base64"), and one line on the server's stderr. Limits, read from the
server's environment when the model loads: `HDKD_MAX_REQUEST_IMAGES` images per request (default 64)
and `HDKD_MAX_IMAGE_BYTES` bytes per encoded image (default 8 MiB).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from hdkd.deploy.predict import ModelFiles, PredictError, Predictor, decode_image
from hdkd.deploy.runtime import preprocess
from hdkd.errors import HDKDError

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ["class", "probability", "probabilities"]
MAX_IMAGES_ENV, MAX_IMAGE_BYTES_ENV = "HDKD_MAX_REQUEST_IMAGES", "HDKD_MAX_IMAGE_BYTES"
# 64 = `hdkd predict`'s batch and compile.max_batch: one runner call, about 2 s at the paper preset on
# 2 cores. 8 MiB per image holds any dermoscopy JPEG/PNG (HAM10000 files are 50-300 KB, full ISIC
# originals a few MB) while 64 of them stay well under a gigabyte of request.
DEFAULT_MAX_IMAGES, DEFAULT_MAX_IMAGE_BYTES = 64, 8 * 2**20


class ServingError(HDKDError, ValueError):
    """A request or a model folder that the student pyfunc cannot use."""


class RequestRefused(ServingError, MlflowException):
    """A request the served pyfunc refuses: HTTP 400 with exactly `reason` as the response's `message`.

    MLflow's scoring server answers an MlflowException raised by `predict` with its error code
    (INVALID_PARAMETER_VALUE -> 400) and `message`, without a stack trace; but first it rewrites the
    message to "Failed to predict data '<repr of the whole request>'. Error: ...", which would echo up
    to megabytes of base64 back to the client (and an over-limit request in full). `message` keeps the
    reason only. From Python it is still a ServingError (a ValueError).
    """

    def __init__(self, reason: str):
        self._reason = " ".join(reason.split())  # one line, in the response and in the server log
        MlflowException.__init__(self, self._reason, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        pass  # the reason set in __init__ stays (see the class docstring)

    def __str__(self) -> str:
        return self._reason


@dataclass(frozen=True)
class RequestLimits:
    max_images: int = DEFAULT_MAX_IMAGES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    @classmethod
    def from_env(cls) -> RequestLimits:
        def read(name: str, default: int) -> int:
            text = os.environ.get(name, "").strip()
            if not text:
                return default
            try:
                value = int(text)
            except ValueError:
                value = 0
            if value < 1:
                raise ServingError(f"{name}={text!r}: expected a positive whole number")
            return value

        return cls(read(MAX_IMAGES_ENV, DEFAULT_MAX_IMAGES), read(MAX_IMAGE_BYTES_ENV, DEFAULT_MAX_IMAGE_BYTES))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _image_bytes(value: Any, index: int, max_bytes: int) -> bytes:
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str):
        if (size := len(value) // 4 * 3) > max_bytes + 2:  # checked before decoding anything
            raise ServingError(
                f"image {index}: about {size} bytes, over the limit of {max_bytes} ({MAX_IMAGE_BYTES_ENV})"
            )
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            hint = (
                " (send the base64 text alone, without a 'data:...;base64,' prefix)"
                if value.startswith("data:")
                else ""
            )
            raise ServingError(f"image {index}: not valid base64{hint}") from None
    elif _is_missing(value):
        raise ServingError(f"image {index}: null; expected base64 text of an image file")
    else:
        raise ServingError(
            f"image {index}: expected base64 text of an image file, got {type(value).__name__} {value!r:.40}"
        )
    if len(data) > max_bytes:
        raise ServingError(f"image {index}: {len(data)} bytes, over the limit of {max_bytes} ({MAX_IMAGE_BYTES_ENV})")
    if not data:
        raise ServingError(f"image {index}: empty")
    return data


def _float_batch(cells: list[Any], image_size: int) -> np.ndarray:
    try:
        array = np.asarray(cells, dtype=np.float32)
    except (ValueError, TypeError) as error:
        reason = str(error).splitlines()[0][:120]
        raise ServingError(
            f"float inputs: not a numeric array of shape (N, 3, {image_size}, {image_size}) ({reason})"
        ) from None
    if array.ndim == 3:  # one image without its batch axis
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != (3, image_size, image_size):
        raise ServingError(f"expected float inputs of shape (N, 3, {image_size}, {image_size}), got {array.shape}")
    return array


def request_batch(model_input: Any, image_size: int, limits: RequestLimits | None = None) -> np.ndarray:
    """What MLflow hands to `predict` (a DataFrame with an `image` column, after schema enforcement; from
    Python also a dict of columns or an array) -> float32 NCHW inputs. Raises ServingError naming the
    first problem: no images, too many, a cell that is not base64 of an image, or floats of another shape."""

    limits = limits or RequestLimits()
    if isinstance(model_input, pd.DataFrame | Mapping):
        if IMAGE_COLUMN not in model_input:
            raise ServingError(
                f"expected a column {IMAGE_COLUMN!r} of base64 images, got columns {[str(c) for c in model_input]}"
            )
        cells = list(model_input[IMAGE_COLUMN])
    else:
        try:
            cells = list(np.asarray(model_input, dtype=np.float32))
        except (ValueError, TypeError) as error:
            raise ServingError(f"float inputs: not a numeric array ({str(error).splitlines()[0][:120]})") from None
    if not cells:
        raise ServingError("empty batch: the request holds no images")
    if len(cells) > limits.max_images:
        raise ServingError(
            f"{len(cells)} images in one request, over the limit of {limits.max_images} ({MAX_IMAGES_ENV}); "
            "split the batch"
        )
    arrays = [isinstance(cell, list | tuple | np.ndarray) for cell in cells]
    if all(arrays):
        return _float_batch(cells, image_size)
    if any(arrays):
        raise ServingError(f"image {arrays.index(True)}: an array among base64 images; send one kind per request")
    # Decoded and resized one at a time: a request holds at most one full-size image in memory.
    inputs = np.empty((len(cells), 3, image_size, image_size), dtype=np.float32)
    for i, cell in enumerate(cells):
        inputs[i] = preprocess(
            decode_image(_image_bytes(cell, i, limits.max_image_bytes), f"image {i}")[None], image_size
        )[0]
    return inputs


def refuse(reason: str) -> RequestRefused:
    """One line on stderr (the server's log) and the exception that becomes the HTTP 400."""
    refused = RequestRefused(reason)
    print(f"hdkd-student pyfunc: refused a request: {refused.message}", file=sys.stderr, flush=True)
    return refused


class StudentPyfunc(PythonModel):
    """Loads once per process, on the fastest parity-checked backend that runs here (see `Predictor`)."""

    def load_context(self, context: Any) -> None:

        compiled = context.artifacts.get("compiled")
        files = ModelFiles("pyfunc", Path(context.artifacts["checkpoint"]), Path(compiled) if compiled else None)
        self.predictor = Predictor.from_files(files, backend="auto")
        self.limits = RequestLimits.from_env()
        # In the server's log, so an operator sees which runtime answers (and why not a faster one).
        print(
            f"hdkd-student pyfunc: backend {self.predictor.backend} ({self.predictor.source}); "
            f"at most {self.limits.max_images} images of {self.limits.max_image_bytes} bytes per request",
            file=sys.stderr,
            flush=True,
        )

    # `pd.DataFrame` is what MLflow passes after enforcing the column signature; MLflow infers no schema
    # from this hint (the logged signature is the schema) and stops asking for one.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:

        try:
            inputs = request_batch(model_input, self.predictor.image_size, self.limits)
        except (ServingError, PredictError) as error:
            raise refuse(str(error)) from None
        rows = self.predictor.describe(self.predictor.predict_inputs(inputs))
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
