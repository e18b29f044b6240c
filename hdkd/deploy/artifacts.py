"""What a compiled folder holds: the artifact files, their input and output names, and `artifacts.json`,
the index that describes them (written by the compile stage, read by `hdkd predict` and the served pyfunc)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hdkd.errors import HDKDError

INPUT_NAME, OUTPUT_NAME = "input", "logits"
ARTIFACT_INDEX = "artifacts.json"
FILES = {
    "onnx": "student.onnx",
    "onnx_int8": "student_int8.onnx",
    "torch_export": "student.pt2",
    "aoti": "student_aoti.pt2",
    "tensorrt_fp32": "student_trt_fp32.ep",
    "tensorrt_fp16": "student_trt_fp16.ep",
}


class ArtifactError(HDKDError, RuntimeError):
    """A compiled artifact or folder that cannot be loaded."""


class TargetUnavailable(Exception):
    """A target this machine cannot build (no GPU, no torch-tensorrt, no C++ compiler): recorded as skipped."""


def read_artifact_index(folder: str | Path) -> dict[str, Any]:
    """The `artifacts.json` of a compiled folder (not to be confused with a data manifest CSV)."""
    path = Path(folder) / ARTIFACT_INDEX
    if not path.is_file():
        raise ArtifactError(f"{folder}: not a compiled model folder (no {ARTIFACT_INDEX}; run the compile stage)")
    return json.loads(path.read_text())
