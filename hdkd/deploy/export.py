"""The student as files: ONNX (with CBAM's pooling rewritten for ONNX Runtime), a `torch.export` program and
an AOTInductor package, each with a dynamic batch axis."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hdkd.deploy.artifacts import INPUT_NAME, OUTPUT_NAME, ArtifactError, TargetUnavailable


class CompileError(ArtifactError):
    """An artifact that cannot be built or loaded, or input the stage cannot use."""


def batch_dim(max_batch: int) -> dict[str, dict[int, Any]]:
    # Keyed by the forward's argument name; min=1 keeps single images legal although we trace with 2.
    return {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}}


def example_input(
    image_size: int, device: str = "cpu", dtype: torch.dtype = torch.float32, batch: int = 2
) -> torch.Tensor:
    # Batch 2: a batch-1 example makes torch.export specialise the batch axis to 1.
    return torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device, dtype)


def export_onnx(model: nn.Module, path: str | Path, image_size: int, max_batch: int) -> Path:
    """Dynamo ONNX export with a dynamic batch axis, weights inside the file, checked by the full ONNX checker.

    Exported with every BatchNorm folded into a convolution (a copy: `model` is left as it is): ONNX Runtime
    folds conv -> BN itself but runs MBCSA's pre-norm BN as a pass of its own, which in the int8 model also
    costs a quantize/transpose round trip (3% of the int8 CPU time per batch-1 call at the paper preset).
    Then `global_pools` rewrites CBAM's pooling."""
    import onnx

    from hdkd.models.fuse import fold_batchnorms

    path = Path(path)
    torch.onnx.export(
        fold_batchnorms(copy.deepcopy(model).eval()),
        (example_input(image_size),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=batch_dim(max_batch),
        external_data=False,
        verbose=False,
    )
    exported = onnx.load(str(path))
    if global_pools(exported):
        onnx.save(exported, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise CompileError(f"{path}: the ONNX checker refused the export ({str(error).splitlines()[0]})") from None
    return path


def global_pools(model: Any) -> int:
    """Rewrite, in place, every ReduceMean/ReduceMax of a 4-D tensor over (H, W) with keepdims into
    GlobalAveragePool/GlobalMaxPool (the same values); returns how many.

    The dynamo exporter lowers `adaptive_avg_pool2d(x, 1)` to ReduceMean too, so the model code cannot ask
    for the pools. ONNX Runtime runs the pools in its blocked NCHWc layout, the reductions in plain NCHW:
    CBAM's channel attention then needs no layout reorders (15 ReorderInput nodes -> 5): 3% less CPU time
    per batch-1 call of the fp32 model at the paper preset (2-core AVX-512 EPYC), 22% less for the int8
    model: around its NHWC int8 convolutions ORT moves the reductions to channels-last, where its ReduceMax
    and ReduceMean took 12 ms of a 37 ms single-thread run (the pools and the remaining channel reductions
    take 1.7 ms)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info]}
    pools = {"ReduceMean": "GlobalAveragePool", "ReduceMax": "GlobalMaxPool"}
    freed: set[str] = set()
    rewritten = 0
    for index, node in enumerate(list(graph.node)):
        if node.op_type not in pools or node.domain not in ("", "ai.onnx") or rank.get(node.input[0]) != 4:
            continue
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        axes = node.input[1] if len(node.input) > 1 else ""
        if keepdims != 1 or axes not in constants:
            continue
        if sorted(int(a) % 4 for a in numpy_helper.to_array(constants[axes]).ravel()) != [2, 3]:
            continue
        graph.node.remove(node)
        graph.node.insert(index, helper.make_node(pools[node.op_type], [node.input[0]], node.output, node.name))
        freed.add(axes)
        rewritten += 1
    used = {name for node in graph.node for name in node.input}
    for tensor in [constants[name] for name in freed - used]:
        graph.initializer.remove(tensor)
    return rewritten


def export_program(model: nn.Module, path: str | Path, image_size: int, max_batch: int) -> torch.export.ExportedProgram:
    """A `torch.export` program of the eval-mode network (HDKD: the mean of both heads), saved to `path`."""
    program = torch.export.export(model.eval(), (example_input(image_size),), dynamic_shapes=batch_dim(max_batch))
    torch.export.save(program, str(path))
    return program


def cpp_compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def export_aoti(model: nn.Module, path: str | Path, image_size: int, max_batch: int) -> Path:
    """AOTInductor: the exported program compiled to a C++ shared library, packaged as `.pt2`."""
    if cpp_compiler() is None:
        raise TargetUnavailable("no C++ compiler (g++, c++ or clang++ on PATH, or $CXX) for AOTInductor")
    program = torch.export.export(model.eval(), (example_input(image_size),), dynamic_shapes=batch_dim(max_batch))
    return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path)))
