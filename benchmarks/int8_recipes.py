"""int8 recipes side by side: batch-1 latency against fp32 ONNX Runtime and, for a trained checkpoint, top-1
agreement with fp32 on the validation split, from one run.

Recipes, all from the compile stage's fp32 ONNX export (BatchNorm folded, CBAM pools as global pools):
  ort_qdq_conv     the compile stage's recipe (`hdkd.deploy.quantize.quantize_int8`: QDQ, convolutions only)
  ort_qdq_conv_ac  the same with the stage's accuracy control (`with_float_convs`; with --checkpoint only): the
                   convolutions that move the logits most stay float until the validation gate passes
  ort_qdq_all      QDQ on every op ONNX Runtime can quantize here (fewer float islands)
  ort_qop_conv     QOperator format, convolutions only
  openvino_fp32    OpenVINO's CPU plugin on the fp32 model (f32 inference precision)
  openvino_int8    NNCF post-training quantization (its default CPU preset), run by OpenVINO
The OpenVINO rows need `pip install openvino nncf` (not a project dependency) and are left out without them.
Every recipe is calibrated on the same images: random ones for a random-weight preset (enough for speed), or
`--calibration` images of the training split beside `--val` for a checkpoint (as the compile stage does).

    python benchmarks/int8_recipes.py --preset paper --threads 1
    python benchmarks/int8_recipes.py --checkpoint models/distilled/best.pt
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from compile_latency import benchmark_student

from hdkd.config import CompileParams
from hdkd.deploy.export import export_onnx
from hdkd.deploy.quantize import acceptance, calibration_and_probe, quantize_int8, with_float_convs
from hdkd.deploy.runtime import OnnxRunner, Runner, preprocess
from hdkd.evaluation.timing import cpu_name, measure_latency
from hdkd.models import PRESETS

QUANTIZABLE = ("Conv", "MatMul", "Add", "Mul", "Sigmoid", "GlobalAveragePool", "GlobalMaxPool", "Concat", "MaxPool")


class OpenVinoRunner(Runner):
    def __init__(self, name: str, model: object, max_batch: int, threads: int | None):
        import openvino as ov

        super().__init__(name, max_batch)
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        self.compiled = ov.Core().compile_model(model, "CPU", config)

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(x)[0])


def nncf_int8(fp32: Path, calibration: np.ndarray) -> object:
    import nncf
    import openvino as ov

    samples = [calibration[i : i + 1] for i in range(len(calibration))]
    return nncf.quantize(ov.Core().read_model(str(fp32)), nncf.Dataset(samples), subset_size=len(samples))


def build_recipes(
    fp32: Path,
    folder: Path,
    calibration: np.ndarray,
    max_batch: int,
    threads: int | None,
    accuracy_control: Callable[[Path], Path] | None = None,
) -> dict[str, Callable[[], Runner]]:
    def ort(name: str, **recipe: object) -> Runner:
        return OnnxRunner(name, quantize_int8(fp32, folder / f"{name}.onnx", calibration, **recipe), max_batch, threads)  # type: ignore[arg-type]

    recipes: dict[str, Callable[[], Runner]] = {
        "onnx": lambda: OnnxRunner("onnx", fp32, max_batch, threads),
        "ort_qdq_conv": lambda: ort("ort_qdq_conv"),
        "ort_qdq_all": lambda: ort("ort_qdq_all", op_types=QUANTIZABLE),
        "ort_qop_conv": lambda: ort("ort_qop_conv", qoperator=True),
    }
    if accuracy_control is not None:
        recipes["ort_qdq_conv_ac"] = lambda: OnnxRunner(
            "ort_qdq_conv_ac", accuracy_control(folder / "ort_qdq_conv_ac.onnx"), max_batch, threads
        )
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        recipes["openvino_fp32"] = lambda: OpenVinoRunner("openvino_fp32", str(fp32), max_batch, threads)
        recipes["openvino_int8"] = lambda: OpenVinoRunner(
            "openvino_int8", nncf_int8(fp32, calibration), max_batch, threads
        )
    return recipes


def accuracy_control(
    fp32: Path, calibration: np.ndarray, probe: np.ndarray, val: Path, size: int, threads: int | None
) -> Callable[[Path], Path]:
    """The compile stage's int8 model with its accuracy control, judged by its gate on the validation split."""
    from hdkd.data.loading import load_split

    params, split = CompileParams(), load_split(val)
    images = preprocess(split.images, size)
    reference = OnnxRunner("onnx", fp32, 64, threads)(images)

    def judge(path: Path) -> tuple[dict, str | None]:
        return acceptance(reference, OnnxRunner("int8", path, 64, threads)(images), split.labels, params)

    def build(out: Path) -> Path:
        gate = with_float_convs(fp32, out, calibration, probe, judge, params.int8_max_float_share)
        print(f"ort_qdq_conv_ac: {len(gate.float_convs)} of {gate.convs} convolutions left in float")
        return out

    return build


def agreement(runners: dict[str, Runner], val: Path, size: int, params: CompileParams) -> dict[str, dict[str, float]]:
    """Top-1 agreement with fp32 ONNX Runtime, macro-F1 drop and RMS logit difference on the validation split."""
    from hdkd.data.loading import load_split

    split = load_split(val)
    images = preprocess(split.images, size)
    reference = runners["onnx"](images)
    table = {}
    for name, runner in runners.items():
        logits = runner(images)
        stats, refused = acceptance(reference, logits, split.labels, params)
        stats["rms_logit_diff"] = float(np.sqrt(((logits - reference) ** 2).mean()))
        table[name] = {**stats, "accepted": refused is None}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--checkpoint", type=Path, help="a trained best.pt: also judge agreement on --val")
    parser.add_argument("--val", type=Path, default=Path("data/split/val.npz"))
    parser.add_argument("--calibration", type=int, default=CompileParams().int8_calibration_images)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, help="threads of every runtime (default: all cores)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, size, label = benchmark_student(args.preset, args.checkpoint, classes=7)
    params, probe = CompileParams(), None
    if args.checkpoint:
        from hdkd.data.loading import load_split

        train = load_split(args.val.with_name("train.npz")).images
        calibration, probe = (preprocess(part, size) for part in calibration_and_probe(train, args.calibration))
    else:
        calibration = torch.randn(args.calibration, 3, size, size, generator=torch.Generator().manual_seed(1)).numpy()
    image = torch.randn(1, 3, size, size).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "student.onnx", size, max_batch=64)
        control = None if probe is None else accuracy_control(fp32, calibration, probe, args.val, size, args.threads)
        recipes = build_recipes(fp32, Path(tmp), calibration, 64, args.threads, control)
        runners = {name: build() for name, build in recipes.items()}
        load_before = os.getloadavg()[0]
        latency = measure_latency({name: functools.partial(r.run, image) for name, r in runners.items()}, args.repeats)
        load = (load_before, os.getloadavg()[0])
        agreed = agreement(runners, args.val, size, params) if args.checkpoint else {}

    threads = args.threads or len(os.sched_getaffinity(0))
    print(f"{label}, {size} px, batch 1 | {cpu_name()} | {threads} threads")
    print(f"1-min load average {load[0]:.2f} before timing, {load[1]:.2f} after ({os.cpu_count()} cores)")
    header = f"{'recipe':<17}{'median ms':>10}{'p90 ms':>9}{'x onnx':>8}"
    if agreed:
        header += f"{'agreement':>11}{'F1 int8':>9}{'F1 fp32':>9}{'rms diff':>10}  gate"
    print(header)
    for name, times in latency.items():
        line = f"{name:<17}{times['median_ms']:>10.2f}{times['p90_ms']:>9.2f}"
        line += f"{latency['onnx']['median_ms'] / times['median_ms']:>7.2f}x"
        if agreed:
            a = agreed[name]
            line += f"{a['top1_agreement']:>11.2%}{a['val_macro_f1_int8']:>9.3f}{a['val_macro_f1_fp32']:>9.3f}"
            line += f"{a['rms_logit_diff']:>10.3f}  {'pass' if a['accepted'] else 'refused'}"
        print(line)
    if args.json:
        print(json.dumps({"model": label, "cpu": cpu_name(), "load": load, "latency": latency, "agreement": agreed}))


if __name__ == "__main__":
    main()
