"""The `compile` stage: the HDKD student as deployable artifacts, checked against eager PyTorch and timed.

Targets (`compile.targets`):
  onnx          `student.onnx`, dynamo exporter, dynamic batch, BatchNorm folded, CBAM pooling as global
                pools; run by ONNX Runtime (full graph optimisation)
  onnx_int8     `student_int8.onnx`, static int8 (`hdkd.deploy.quantize`), shipped only if its acceptance
                gate on the validation split passes, with the costliest convolutions left in float if need be
  torch_export  `student.pt2`, a `torch.export` program (`torch.export.load(...).module()`)
  aoti          `student_aoti.pt2`, an AOTInductor package; a C++ build of about a minute even for the
                tiny preset, so it is a target of its own rather than part of `torch_export`
  tensorrt      `student_trt_fp32.ep` / `student_trt_fp16.ep` (torch-tensorrt); needs a CUDA GPU and
                torch-tensorrt, elsewhere recorded as skipped with the reason, never as built

Every artifact is reloaded from disk and compared with eager PyTorch on the validation split (max
absolute logit difference, top-1 agreement); one failed comparison fails the stage and leaves the
previous `models/compiled/` in place. Latency (median, p90) at batch 1 and 16 goes to
`reports/stages/compile.json`; `models/compiled/artifacts.json` describes the artifacts for `hdkd predict`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hdkd.config import CompileParams, Params
from hdkd.deploy.artifacts import ARTIFACT_INDEX, FILES, INPUT_NAME, OUTPUT_NAME, TargetUnavailable
from hdkd.deploy.export import CompileError, export_aoti, export_onnx, export_program
from hdkd.deploy.latency import latency_table
from hdkd.deploy.quantize import Int8Gate, acceptance, calibration_and_probe, with_float_convs
from hdkd.deploy.runtime import OnnxRunner, Runner, TorchRunner, load_runner, preprocess
from hdkd.deploy.tensorrt_engines import compile_tensorrt, environment
from hdkd.evaluation.timing import cpu_name
from hdkd.files import atomic_dir, sha256_file, write_json
from hdkd.layout import REPO, Layout

TARGETS = ("onnx", "onnx_int8", "torch_export", "aoti", "tensorrt")


class ParityError(CompileError):
    """A compiled artifact whose outputs disagree with eager PyTorch beyond the thresholds."""


def parity(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Max absolute logit difference and top-1 agreement of `logits` with the eager `reference`."""
    if reference.shape != logits.shape:
        return {"max_abs_diff": float("inf"), "top1_agreement": 0.0}
    return {
        "max_abs_diff": float(np.abs(reference - logits).max(initial=0.0)),
        "top1_agreement": float((reference.argmax(1) == logits.argmax(1)).mean()) if len(reference) else 1.0,
    }


def parity_failure(name: str, stats: Mapping[str, float], max_abs_diff: float, min_agreement: float) -> str | None:
    """A one-line reason if `stats` break the thresholds, else None."""
    problems = []
    if not stats["max_abs_diff"] <= max_abs_diff:  # `not <=` also catches NaN
        problems.append(f"max |logit diff| {stats['max_abs_diff']:.3g} > {max_abs_diff:g}")
    if stats["top1_agreement"] < min_agreement:
        problems.append(f"top-1 agreement {stats['top1_agreement']:.2%} < {min_agreement:.2%}")
    return f"{name}: {', '.join(problems)}" if problems else None


def thresholds(params: CompileParams, precision: str) -> tuple[float, float]:
    if precision == "fp16":
        return params.parity_max_abs_diff_fp16, params.parity_min_agreement_fp16
    return params.parity_max_abs_diff, params.parity_min_agreement


def split_logits(runner: Runner, images: np.ndarray, image_size: int, chunk: int = 64) -> np.ndarray:
    """Logits for uint8 NHWC images, preprocessed a chunk at a time (a 224 px split as float32 is gigabytes)."""
    return np.concatenate([runner(preprocess(images[i : i + chunk], image_size)) for i in range(0, len(images), chunk)])


# ----------------------------------------------------------------------------------------------- stage


@dataclass
class Built:
    name: str
    target: str
    precision: str
    path: Path
    build_s: float
    gate: Int8Gate | None = None  # onnx_int8: what its acceptance gate said


@dataclass
class Int8Inputs:
    """What the int8 target needs beyond the model: training images to calibrate on and to rank convolutions by,
    and the validation split's gate."""

    calibration: np.ndarray
    probe: np.ndarray
    judge: Callable[[Path], tuple[dict[str, Any], str | None]]
    max_float_share: float
    log: Callable[[str], None]


def _build_target(
    target: str, model: nn.Module, folder: Path, image_size: int, max_batch: int, int8: Int8Inputs | None
) -> list[Built]:
    began = time.perf_counter()
    gate = None
    if target == "onnx":
        paths = {"onnx": export_onnx(model, folder / FILES["onnx"], image_size, max_batch)}
    elif target == "onnx_int8":
        if int8 is None:
            raise TargetUnavailable("int8 calibration needs the training split (compile_student(train_data=...))")
        fp32 = folder / FILES["onnx"]
        source = fp32 if fp32.is_file() else export_onnx(model, folder / ".fp32_for_int8.onnx", image_size, max_batch)
        out = folder / FILES["onnx_int8"]
        gate = with_float_convs(source, out, int8.calibration, int8.probe, int8.judge, int8.max_float_share, int8.log)
        paths = {"onnx_int8": out}
        if source != fp32:
            source.unlink()
    elif target == "torch_export":
        export_program(model, folder / FILES["torch_export"], image_size, max_batch)
        paths = {"torch_export": folder / FILES["torch_export"]}
    elif target == "aoti":
        paths = {"aoti": export_aoti(model, folder / FILES["aoti"], image_size, max_batch)}
    elif target == "tensorrt":
        paths = compile_tensorrt(model, folder, image_size, max_batch)
    else:
        raise CompileError(f"unknown compile target {target!r}: use one of {list(TARGETS)}")
    seconds = (time.perf_counter() - began) / len(paths)
    precision = "int8" if target == "onnx_int8" else "fp32"  # of the weights; int8 models still take float32 input
    return [
        Built(name, target, "fp16" if name.endswith("fp16") else precision, path, seconds, gate)
        for name, path in paths.items()
    ]


def compile_student(
    params: CompileParams,
    checkpoint: str | Path,
    val_data: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path | None = None,
    log: Callable[[str], None] = print,
    train_data: str | Path | None = None,
) -> dict[str, Any]:
    """Build every target of `params.targets` from `checkpoint` into `out_dir` (atomically), check parity on
    `val_data`, time the artifacts; returns (and writes to `metrics_path`) the flat metrics. `train_data`
    calibrates the int8 model."""
    from hdkd.data.loading import load_split
    from hdkd.training.checkpoint import load_trained

    checkpoint, val_data, out_dir = Path(checkpoint), Path(val_data), Path(out_dir)
    model, meta = load_trained(checkpoint)
    split = load_split(val_data)
    if list(split.classes) != list(meta["classes"]):
        raise CompileError(
            f"{checkpoint}: trained for classes {meta['classes']}, but {val_data} has {list(split.classes)}; "
            "retrain the student on this data (dvc repro)"
        )
    if len(split.images) == 0:
        raise CompileError(f"{val_data}: the validation split is empty; parity needs images")
    image_size, max_batch, images = int(meta["img_size"]), params.max_batch, split.images
    eager = TorchRunner("eager", model, max_batch)
    reference = split_logits(eager, images, image_size)
    int8 = None
    if "onnx_int8" in params.targets and train_data is not None:
        calibration, probe = calibration_and_probe(load_split(train_data).images, params.int8_calibration_images)
        int8 = Int8Inputs(
            calibration=preprocess(calibration, image_size),
            probe=preprocess(probe, image_size),
            judge=lambda path: acceptance(
                reference,
                split_logits(OnnxRunner("onnx_int8", path, max_batch), images, image_size),
                split.labels,
                params,
            ),
            max_float_share=params.int8_max_float_share,
            log=log,
        )
    log(
        f"compile: {meta['kind']} ({meta['preset']}, {image_size} px) from {checkpoint}; parity on {len(images)} images"
    )

    metrics: dict[str, Any] = {"val_images": len(images), "max_batch": max_batch}
    artifacts: dict[str, dict[str, Any]] = {}
    runners: dict[str, Runner] = {"eager": eager}
    failures: list[str] = []
    engines: dict[str, str] | None = None
    with atomic_dir(out_dir) as folder:
        for target in dict.fromkeys(params.targets):
            try:
                built = _build_target(target, model, folder, image_size, max_batch, int8)
            except TargetUnavailable as reason:
                metrics[target] = {"status": "skipped", "reason": str(reason)}
                log(f"compile: {target} skipped: {reason}")
                continue
            metrics[target] = {"status": "built"}
            if target == "tensorrt":
                engines = environment()  # engines run only on this GPU and TensorRT version
            for item in built:
                entry: dict[str, Any] = {"file": item.path.name, "target": item.target, "precision": item.precision}
                described = {"artifacts": {item.name: entry}, "input": {"max_batch": max_batch}, "tensorrt": engines}
                counts: dict[str, int] = {}
                if item.gate is not None:
                    stats = item.gate.stats
                    counts = {"float_convs": len(item.gate.float_convs), "convs": item.gate.convs}
                    entry["float_convs"] = item.gate.float_convs
                    if item.gate.refused:  # a fast but unfaithful model is not shipped; the stage itself succeeds
                        item.path.unlink()
                        metrics[item.name] = {"status": "rejected", "reason": item.gate.refused, **stats, **counts}
                        log(f"compile: onnx_int8 rejected: {item.gate.refused}")
                        continue
                    if item.gate.float_convs:
                        log(
                            f"compile: onnx_int8 passed its gate with {counts['float_convs']} of {counts['convs']} "
                            "convolutions in float (the most sensitive, ranked on training images)"
                        )
                runner = load_runner(folder, item.name, described)
                if item.gate is None:
                    stats = parity(reference, split_logits(runner, images, image_size))
                    limit, agreement = thresholds(params, item.precision)
                    if failure := parity_failure(item.name, stats, limit, agreement):
                        failures.append(failure)
                runners[item.name] = runner
                size_mb = item.path.stat().st_size / 2**20
                artifacts[item.name] = {**entry, "sha256": sha256_file(item.path), "parity": stats}
                metrics[item.name] = {
                    "status": "built",
                    **stats,
                    **counts,
                    "build_s": round(item.build_s, 2),
                    "size_mb": size_mb,
                }
                log(
                    f"compile: {item.name} built in {item.build_s:.1f} s ({size_mb:.1f} MB): max |logit diff| "
                    f"{stats['max_abs_diff']:.2g}, top-1 agreement {stats['top1_agreement']:.2%}"
                )
        if failures:
            raise ParityError(
                f"{checkpoint}: compiled artifacts disagree with eager PyTorch on {val_data}: {'; '.join(failures)}"
                " (thresholds: compile.parity_* in params.yaml)"
            )
        if any(runner.device == "cuda" for runner in runners.values()):
            runners["eager_cuda"] = TorchRunner("eager_cuda", copy.deepcopy(model).cuda(), max_batch, "cuda")
        latency = latency_table(runners, images, image_size, max_batch, params.latency_repeats)
        for name, row in latency.items():
            metrics.setdefault(name, {}).update(row)
        index: dict[str, Any] = {
            "source": {"checkpoint": str(checkpoint), "sha256": sha256_file(checkpoint), "val_data": str(val_data)},
            "kind": meta["kind"],
            "preset": meta["preset"],
            "block": meta["block"],
            "classes": list(meta["classes"]),
            "image_size": image_size,
            "normalization": normalization(),
            "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "max_batch": max_batch},
            "output": {"name": OUTPUT_NAME, "kind": "logits (softmax for probabilities)"},
            "artifacts": artifacts,
            "targets": {t: metrics[t]["status"] for t in dict.fromkeys(params.targets)},
            "skipped": {t: metrics[t]["reason"] for t in params.targets if metrics[t]["status"] == "skipped"},
            "rejected": {t: metrics[t]["reason"] for t in params.targets if metrics[t]["status"] == "rejected"},
            "latency": latency,
            "versions": versions(),
            "cpu": cpu_name(),
            "tensorrt": engines,
        }
        write_json(folder / ARTIFACT_INDEX, index)
    metrics["cpu"] = cpu_name()
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    summary = ", ".join(
        f"{name} {metrics[name]['speedup_b1']:.2f}x" for name in runners if "speedup_b1" in metrics.get(name, {})
    )
    skipped = ", ".join(f"{t} skipped" for t in index["skipped"])
    log(
        f"compile: {len(artifacts)} artifacts in {out_dir}; batch-1 speed-up over eager: {summary or 'none'}"
        + (f"; {skipped}" if skipped else "")
    )
    return metrics


def normalization() -> dict[str, list[float]]:
    from hdkd.data.loading import IMAGENET_MEAN, IMAGENET_STD

    return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def compile_stage(params: Params, layout: Layout = REPO) -> dict[str, Any]:
    """The DVC stage: `models/distilled/best.pt` -> `models/compiled/`, metrics to `reports/stages/compile.json`,
    tracked as the MLflow run `compile` (metrics, params, artifact index; register logs the artifacts themselves)."""
    import mlflow

    from hdkd.tracking import flat_params, stage_run

    val_data = layout.split / "val.npz"
    out_dir, metrics_path = layout.models / "compiled", layout.stage_summary("compile")
    with stage_run(params, "compile", manifest=layout.split / "manifest.csv"):
        mlflow.log_params(flat_params(params, ("compile",)))
        metrics = compile_student(
            params.compile,
            layout.checkpoint("distilled"),
            val_data,
            out_dir,
            metrics_path,
            train_data=layout.split / "train.npz",
        )
        mlflow.log_metrics(flat_metrics(metrics))
        mlflow.log_artifact(str(out_dir / ARTIFACT_INDEX), artifact_path="compiled")
        mlflow.log_artifact(str(metrics_path), artifact_path="reports/metrics")
    return metrics


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """`{"onnx": {"speedup_b1": 3.1}}` -> `{"onnx.speedup_b1": 3.1}`, numbers only."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            flat.update(flat_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat
