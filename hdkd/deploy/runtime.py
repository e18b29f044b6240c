"""Loading and running a compiled student: the runtime behind `hdkd predict` and the served pyfunc.

A compiled folder (written by the `compile` stage, see `hdkd.deploy.compile`) holds the artifacts and
`artifacts.json`, which describes them; a `Runner` turns a float32 NCHW batch into logits through one
backend (eager PyTorch, ONNX Runtime, a `torch.export` program, AOTInductor or TensorRT).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hdkd.deploy.artifacts import ARTIFACT_INDEX, INPUT_NAME, OUTPUT_NAME, ArtifactError, read_artifact_index
from hdkd.deploy.tensorrt_engines import engine_mismatch, load_engine
from hdkd.memory import keep_freed_memory


def preprocess(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 NHWC images -> float32 NCHW model input: the training eval transform (resize, ImageNet norm)."""
    from hdkd.data.loading import eval_transform

    chw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if len(chw) == 0:
        return np.zeros((0, 3, image_size, image_size), dtype=np.float32)
    return np.ascontiguousarray(eval_transform(image_size)(chw).numpy(), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Runner:
    """Logits of a float32 NCHW batch through one backend; batches above `max_batch` go in chunks."""

    def __init__(self, name: str, max_batch: int, device: str = "cpu"):
        self.name, self.max_batch, self.device = name, max_batch, device

    def run(self, x: np.ndarray) -> np.ndarray:
        """One call of the backend; `len(x)` is within 1..max_batch."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # Compiled programs (AOTInductor, TensorRT) assume the dense NCHW layout they were built for: an array
        # with other strides (a transposed NHWC view) gave wrong logits, not an error.
        x = np.ascontiguousarray(x)
        chunks = [self.run(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


class TorchRunner(Runner):
    """Any tensor -> tensor callable: an eager module, an exported program's module, an AOTI or TensorRT runner."""

    def __init__(
        self,
        name: str,
        fn: Callable[[torch.Tensor], torch.Tensor],
        max_batch: int,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(name, max_batch, device)
        self.fn, self.dtype = fn, dtype
        keep_freed_memory()  # eager batches: no page faults on every call (hdkd.memory)

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.fn(torch.from_numpy(x).to(self.device, self.dtype))
        return out.float().cpu().numpy()


class OnnxRunner(Runner):
    def __init__(self, name: str, path: str | Path, max_batch: int, threads: int | None = None):
        super().__init__(name, max_batch)
        self.session = onnx_session(path, threads)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """ONNX Runtime on the CPU with every graph optimisation (conv fusions, the blocked NCHWc layout for fp32
    and NHWC for int8 convolutions, MatMul+bias+GELU fusion)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # one chain of ops: parallel mode only adds overhead
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    # No busy-waiting. Paper preset, batch 1, 2-core AVX-512 EPYC: on an idle machine spinning (with
    # session.force_spinning_stop, so the pool sleeps once a run ends) is ~10% faster (fp32 15.2 ms against
    # 17.0, int8 12.2 against 13.95), but with other processes using about one of the two cores it is 1.8x
    # slower (fp32 56 ms against 31, int8 43 against 23), and threads left spinning after a run steal the
    # cores from whatever runs next. session.dynamic_block_base (2 or 4) did not help under load either.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types for unreadable or invalid graphs
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({str(error).splitlines()[0]})") from None


def load_runner(folder: str | Path, name: str, index: Mapping[str, Any] | None = None) -> Runner:
    """Open one artifact of a compiled folder (`onnx`, `torch_export`, `aoti`, `tensorrt_fp32`, `tensorrt_fp16`)."""
    folder = Path(folder)
    index = index or read_artifact_index(folder)
    entry = index["artifacts"].get(name)
    if entry is None:
        raise ArtifactError(f"{folder}: no {name!r} artifact (built: {sorted(index['artifacts'])})")
    path, max_batch = folder / entry["file"], int(index["input"]["max_batch"])
    if not path.is_file():
        raise ArtifactError(f"{path}: listed in {folder / ARTIFACT_INDEX} but missing")
    if name in ("onnx", "onnx_int8"):
        return OnnxRunner(name, path, max_batch)
    if name == "torch_export":
        return TorchRunner(name, torch.export.load(str(path)).module(), max_batch)
    if name == "aoti":
        return TorchRunner(name, torch._inductor.aoti_load_package(str(path)), max_batch)
    if name.startswith("tensorrt"):
        if reason := engine_mismatch(index.get("tensorrt")):
            raise ArtifactError(f"{path}: cannot run this TensorRT engine here: {reason}")
        dtype = torch.float16 if entry["precision"] == "fp16" else torch.float32
        try:
            module = load_engine(path)
        except Exception as error:  # TensorRT raises its own types for engines it cannot deserialize
            raise ArtifactError(f"{path}: TensorRT cannot load it ({str(error).splitlines()[0]})") from None
        return TorchRunner(name, module, max_batch, "cuda", dtype)
    raise ArtifactError(f"{folder / ARTIFACT_INDEX}: unknown artifact kind {name!r}")
