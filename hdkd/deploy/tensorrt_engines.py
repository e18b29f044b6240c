"""TensorRT (torch-tensorrt), an optional extra: only on a machine with a CUDA GPU and `pip install -e '.[tensorrt]'`.

Everything here imports torch-tensorrt lazily; elsewhere the target is recorded as skipped, with the reason.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from hdkd.deploy.artifacts import FILES, TargetUnavailable
from hdkd.deploy.export import batch_dim, example_input


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot run here, or None. torch-tensorrt is imported only on this call."""
    reasons = []
    if not torch.cuda.is_available():
        reasons.append("no CUDA GPU (torch.cuda.is_available() is False)")
    try:
        import torch_tensorrt  # noqa: F401
    except Exception as error:  # ImportError when absent; OSError/RuntimeError when TensorRT libraries are missing
        reasons.append(f"torch-tensorrt is not usable ({type(error).__name__}: {str(error).splitlines()[0]})")
    return "; ".join(reasons) or None


def environment() -> dict[str, str]:
    """What a TensorRT engine is tied to: the GPU (name, compute capability) and the library versions."""
    import tensorrt
    import torch_tensorrt

    major, minor = torch.cuda.get_device_capability()
    return {
        "gpu": torch.cuda.get_device_name(),
        "capability": f"{major}.{minor}",
        "tensorrt": str(tensorrt.__version__),
        "torch_tensorrt": str(torch_tensorrt.__version__),
    }


def engine_mismatch(recorded: dict[str, str] | None) -> str | None:
    """Why engines built where `recorded` was taken cannot run here, or None (engines are not portable)."""
    if reason := tensorrt_unavailable():
        return reason
    if not recorded:
        return "the compiled folder does not say which GPU and TensorRT built its engines"
    here = environment()
    differ = [
        f"{key} {recorded.get(key)!r} there, {here[key]!r} here" for key in here if recorded.get(key) != here[key]
    ]
    return f"engines built elsewhere ({'; '.join(differ)})" if differ else None


def load_engine(path: Path) -> nn.Module:
    import torch_tensorrt

    return torch_tensorrt.load(str(path)).module()


def compile_tensorrt(model: nn.Module, folder: Path, image_size: int, max_batch: int) -> dict[str, Path]:
    """fp32 and fp16 TensorRT engines with a dynamic batch 1..max_batch, saved with `torch_tensorrt.save`."""
    if reason := tensorrt_unavailable():
        raise TargetUnavailable(reason)
    import torch_tensorrt

    built = {}
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        # Explicit typing: the network's own dtype decides the engine precision (fp16 = a half copy).
        net = copy.deepcopy(model).to("cuda", dtype).eval()
        # Traced at the engine's opt batch, the shape TensorRT tunes its kernels for.
        example = example_input(image_size, "cuda", dtype, batch=min(16, max_batch))
        shapes = batch_dim(max_batch)
        program = torch.export.export(net, (example,), dynamic_shapes=shapes)
        engine = torch_tensorrt.dynamo.compile(
            program,
            inputs=[
                torch_tensorrt.Input(
                    min_shape=(1, 3, image_size, image_size),
                    opt_shape=tuple(example.shape),
                    max_shape=(max_batch, 3, image_size, image_size),
                    dtype=dtype,
                )
            ],
            disable_tf32=precision == "fp32",  # TF32 matmuls alone would break the 1e-3 fp32 parity
        )
        path = folder / FILES[f"tensorrt_{precision}"]
        torch_tensorrt.save(engine, str(path), arg_inputs=[example], dynamic_shapes=shapes)
        built[f"tensorrt_{precision}"] = path
    return built
