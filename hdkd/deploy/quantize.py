"""The `onnx_int8` compile target: ONNX Runtime static quantization of the fp32 student.

QDQ format, per-channel int8 weights, uint8 activations, MinMax calibration on images of the *training*
split (never test). Only the convolutions are quantized. Measured on two trained tiny students (a noisy
7-class toy task, 78-79% validation accuracy, 3000 validation images), top-1 agreement with fp32:
conv-only 99.1% / 99.1%, conv + MatMul 99.0% / 99.0%, every op ORT can quantize 98.9% / 98.9% (refused);
Percentile calibration, QOperator format and per-tensor weights did no better. Conv + MatMul is no faster
at batch 1 either (13.9 ms against 13.95 ms), so the safer conv-only recipe stays.

Speed (paper preset, 2-core AVX-512/VNNI EPYC, idle, this project's non-spinning session), from
`benchmarks/compile_latency.py`: batch 1 14.1 ms against 16.7 ms fp32 and 25.8 ms eager (1.83x), batch 16
263 ms against 303 ms fp32 and 1381 ms eager (5.3x). The batch-1 gain comes from the fp32 graph the model
is quantized from (`hdkd.deploy.compile.export_onnx`: CBAM pooling as global pools, BatchNorm folded): the same
recipe on the previous export ran 18.3 ms, slower than fp32. What is left is fp32 work between
the int8 convolutions (GELU, CBAM, the transformer's MatMuls) and the quantize / dequantize / NHWC
transpose nodes around each QLinearConv. An int8 model is accepted only if it agrees with fp32 on the
validation split and keeps its macro-F1; otherwise the stage records why it was refused.

Recipes side by side (`benchmarks/int8_recipes.py`; paper preset, batch 1, 1 thread of the loaded EPYC,
against fp32 ONNX Runtime): this recipe 1.38x, every op ORT can quantize 1.61x, QOperator 1.47x,
OpenVINO + NNCF 2.02x (its int8 convolutions fuse GELU; what is left is the fp32 depthwise convolutions,
15%, and layout reorders, 11%). With 2 threads under load OpenVINO fell to 1.36x. None keeps 99% agreement
on the demo's validation split (97.7-98.8%): 7 of its 256 images have fp32 top-2 logits within 0.07, and
uint8 activations alone add 0.05 RMS to the logits (weights alone 0.017; percentile, entropy or MSE ranges
do not lower it), so 2-6 flips are expected where the gate allows 2. Leaving the conv outputs in float
cuts the error by a third (99.2% agreement, but macro-F1 -1.3 points) and has ORT run fp32 convolutions
(0.8x fp32); NNCF's own graphs moved the logits 2-5x more than this recipe.

So the error is spread over the convolutions, and some cost far more than others: `with_float_convs` leaves
the costliest in float until the gate passes (accuracy-aware quantization). On the demo (2026-12-06) the
all-int8 model agreed on 252/256 validation images (macro-F1 0.852 -> 0.835, rejected); with the 6 of its 19
convolutions that moved the logits most on training images left in float, 255/256 (0.852 -> 0.847, shipped).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hdkd.config import CompileParams
from hdkd.deploy.artifacts import INPUT_NAME
from hdkd.evaluation.stats import macro_f1_over

CALIBRATION_BATCH = 8
PROBE_BATCH = 32


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed float32 NCHW images."""

    def __init__(self, inputs: np.ndarray):
        self._batches: Iterator[np.ndarray] = iter(
            [inputs[i : i + CALIBRATION_BATCH] for i in range(0, len(inputs), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def calibration_and_probe(images: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` training images drawn without replacement to calibrate on (all of them when there are fewer),
    and up to `count` others to rank convolutions on (`conv_sensitivity`); a split too small to spare any ranks
    them on the calibration images."""
    order = np.random.default_rng(seed).permutation(len(images))
    calibration, probe = images[np.sort(order[:count])], images[np.sort(order[count : 2 * count])]
    return calibration, probe if len(probe) else calibration


def quantize_int8(
    fp32_model: Path,
    out: Path,
    calibration: np.ndarray,
    op_types: Sequence[str] = ("Conv",),
    qoperator: bool = False,
    keep_float: Sequence[str] = (),
) -> Path:
    """Static quantization of `fp32_model` into `out`, calibrated on `calibration` (float32 NCHW): the
    stage's recipe by default; `keep_float` names nodes left in float (see `with_float_convs`); `op_types` and
    `qoperator` (QOperator instead of QDQ format) let `benchmarks/int8_recipes.py` compare others."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # ORT's pre-processing advice goes to the root logger on every call; its symbolic shape inference fails
    # on the dynamo exporter's graph, so the advice cannot be followed: keep it out of the stage's log.
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR
    try:
        quantize_static(
            str(fp32_model),
            str(out),
            _Calibration(np.ascontiguousarray(calibration, dtype=np.float32)),
            quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(keep_float),
        )
    finally:
        root.setLevel(level)
    return out


def acceptance(
    reference: np.ndarray, logits: np.ndarray, labels: np.ndarray, params: CompileParams
) -> tuple[dict[str, Any], str | None]:
    """Top-1 agreement with fp32 and the validation macro-F1 drop; the reason for refusing it, or None."""
    f1 = macro_f1_over(reference.shape[1])
    fp32_f1, int8_f1 = f1(labels, reference.argmax(1)), f1(labels, logits.argmax(1))
    stats = {
        "top1_agreement": float((reference.argmax(1) == logits.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(reference - logits).max(initial=0.0)),
        "val_macro_f1_fp32": fp32_f1,
        "val_macro_f1_int8": int8_f1,
    }
    problems = []
    if stats["top1_agreement"] < params.int8_min_agreement:
        problems.append(f"top-1 agreement with fp32 {stats['top1_agreement']:.2%} < {params.int8_min_agreement:.0%}")
    if fp32_f1 - int8_f1 > params.int8_max_macro_f1_drop:
        problems.append(
            f"validation macro-F1 {int8_f1:.3f} against {fp32_f1:.3f} in fp32 (a drop over "
            f"{params.int8_max_macro_f1_drop:g})"
        )
    return stats, "; ".join(problems) or None


def conv_names(model: Path) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(model)).graph.node if node.op_type == "Conv"]


def conv_sensitivity(
    fp32_model: Path, calibration: np.ndarray, probe: np.ndarray, folder: Path
) -> list[tuple[str, float]]:
    """Each convolution of `fp32_model` with the RMS logit error, against fp32 on `probe` (training images
    outside the calibration set, never validation or test), of the int8 model that leaves that one convolution
    in float: the lower the error, the more quantizing that convolution costs. Most costly first."""
    from hdkd.deploy.runtime import OnnxRunner

    reference = OnnxRunner("fp32", fp32_model, PROBE_BATCH)(probe)
    errors = []
    for conv in conv_names(fp32_model):
        path = quantize_int8(fp32_model, folder / ".sensitivity.onnx", calibration, keep_float=[conv])
        logits = OnnxRunner("int8", path, PROBE_BATCH)(probe)
        errors.append((conv, float(np.sqrt(np.mean((logits - reference) ** 2)))))
    (folder / ".sensitivity.onnx").unlink()
    return sorted(errors, key=lambda conv_error: conv_error[1])


@dataclass
class Int8Gate:
    """What the acceptance gate said of the int8 model that `out` holds, and which convolutions stayed float."""

    stats: dict[str, Any]
    refused: str | None  # None: accepted
    float_convs: list[str]
    convs: int


def with_float_convs(
    fp32_model: Path,
    out: Path,
    calibration: np.ndarray,
    probe: np.ndarray,
    judge: Callable[[Path], tuple[dict[str, Any], str | None]],
    max_float_share: float,
    log: Callable[[str], None] = print,
) -> Int8Gate:
    """The stage's int8 model, with accuracy control as NNCF's `quantize_with_accuracy_control` does it: when
    `judge` (the acceptance gate on the validation split) refuses the all-int8 model, leave the convolutions
    that cost the most (`conv_sensitivity`, on training images) in float, one more at a time, until the gate
    accepts or `max_float_share` of the convolutions are float. The gate picks the fewest float convolutions
    on validation, as early stopping picks a checkpoint: test is never read."""
    convs = len(conv_names(fp32_model))
    most_float = int(max_float_share * convs)
    stats, refused = judge(quantize_int8(fp32_model, out, calibration))
    if refused is None or most_float == 0:
        return Int8Gate(stats, refused, [], convs)
    log(f"compile: onnx_int8 missed its gate ({refused}); ranking its {convs} convolutions on training images")
    ranked = [conv for conv, _ in conv_sensitivity(fp32_model, calibration, probe, out.parent)]
    for count in range(1, most_float + 1):
        stats, refused = judge(quantize_int8(fp32_model, out, calibration, keep_float=ranked[:count]))
        if refused is None:
            break
        log(f"compile: onnx_int8 with {count} of {convs} convolutions in float: {refused}")
    if refused is not None:
        refused += f" (with the {count} most sensitive of {convs} convolutions in float)"
    return Int8Gate(stats, refused, ranked[:count], convs)
