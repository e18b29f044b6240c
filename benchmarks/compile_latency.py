"""Latency of the compiled HDKD student against eager PyTorch, at batch 1 and 16, from one run.

Builds the HDKD student (random weights: latency does not depend on them) or loads a checkpoint,
exports it the way the compile stage does (ONNX for ONNX Runtime with full graph optimisation, the
static int8 ONNX model, a torch.export program; with --aoti an AOTInductor package too), checks parity, then times every
backend in interleaved rounds so that other load on the machine hits them alike. Prints a table of
median / p90 milliseconds and the speed-up over eager; with --json the last line is one JSON object.

The anchor is the machine itself: in the same timed rounds as the backends it measures ONNX Runtime's fp32
peak (a 2048^3 sgemm, `MatMul`) and its int8 peak (the same shape as u8 x s8 `MatMulInteger`), and prints
each backend's multiply-accumulates per second as a share of the peak of its precision (the network's MACs
from PyTorch's FLOP counter). On a machine other processes load, `--threads 1` gives steadier shares.

    python benchmarks/compile_latency.py --preset paper            # 224 px
    python benchmarks/compile_latency.py --checkpoint models/distilled/best.pt
    python benchmarks/compile_latency.py --preset paper --batches 1 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hdkd.deploy.compile import parity
from hdkd.deploy.export import export_aoti, export_onnx, export_program
from hdkd.deploy.quantize import quantize_int8
from hdkd.deploy.runtime import OnnxRunner, Runner, TorchRunner, onnx_session
from hdkd.evaluation.timing import cpu_name, measure_latency
from hdkd.models import PRESETS, build_model
from hdkd.models.complexity import count_macs

PEAK_SIZE = 2048  # a square matmul this large runs at the kernels' best rate


def matmul_peak(folder: Path, int8: bool, threads: int | None = None, size: int = PEAK_SIZE) -> Callable[[], object]:
    """One size^3 matmul through ONNX Runtime (this project's session options): fp32 `MatMul`, or
    `MatMulInteger` of uint8 activations by int8 weights, the kernel int8 convolutions and matmuls use.
    Timed in the same rounds as the backends, so that load from other processes hits peak and model alike."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        a = rng.integers(0, 255, (size, size), dtype=np.uint8)
        b = numpy_helper.from_array(rng.integers(-127, 127, (size, size), dtype=np.int8), "b")
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        kinds = (TensorProto.UINT8, TensorProto.INT32)
    else:
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        kinds = (TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph(
        [node],
        "peak",
        [helper.make_tensor_value_info("a", kinds[0], [size, size])],
        [helper.make_tensor_value_info("c", kinds[1], [size, size])],
        [b],
    )
    path = folder / f"peak_{'int8' if int8 else 'fp32'}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    session = onnx_session(path, threads)
    return lambda: session.run(["c"], {"a": a})


def benchmark_student(preset: str, checkpoint: Path | None, classes: int) -> tuple[torch.nn.Module, int, str]:
    """The HDKD student to time, its image size and a label: trained from `checkpoint`, else random at `preset`
    (latency does not depend on the weights)."""
    torch.manual_seed(0)
    if checkpoint:
        from hdkd.training.checkpoint import load_trained

        model, meta = load_trained(checkpoint)
        return model, int(meta["img_size"]), f"{meta['kind']} {meta['preset']} ({checkpoint})"
    size = PRESETS[preset].img_size
    return build_model("distilled", preset, classes).eval(), size, f"distilled {preset} (random weights)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--checkpoint", type=Path, help="a trained best.pt instead of random weights")
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds at batch 1")
    parser.add_argument("--repeats-large", type=int, default=5, help="timed rounds at larger batches")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--aoti", action="store_true", help="also build an AOTInductor package (about a minute)")
    parser.add_argument("--tensorrt", action="store_true", help="also TensorRT fp32/fp16 engines (CUDA machines)")
    parser.add_argument("--threads", type=int, help="threads of every backend and of the peak (default: all cores)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, size, label = benchmark_student(args.preset, args.checkpoint, args.classes)
    batches = [int(b) for b in args.batches.split(",")]
    inputs = torch.randn(max(batches), 3, size, size).numpy()

    runners: dict[str, Runner] = {"eager": TorchRunner("eager", model, args.max_batch)}
    build: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        export_onnx(model, Path(tmp) / "student.onnx", size, args.max_batch)
        runners["onnx"] = OnnxRunner("onnx", Path(tmp) / "student.onnx", args.max_batch, args.threads)
        build["onnx"] = time.perf_counter() - began
        began = time.perf_counter()
        # Calibrated on random inputs: enough for speed; the compile stage calibrates on training images.
        calibration = torch.randn(32, 3, size, size, generator=torch.Generator().manual_seed(1)).numpy()
        quantize_int8(Path(tmp) / "student.onnx", Path(tmp) / "student_int8.onnx", calibration)
        runners["onnx_int8"] = OnnxRunner("onnx_int8", Path(tmp) / "student_int8.onnx", args.max_batch, args.threads)
        build["onnx_int8"] = time.perf_counter() - began
        began = time.perf_counter()
        export_program(model, Path(tmp) / "student.pt2", size, args.max_batch)
        program = torch.export.load(str(Path(tmp) / "student.pt2")).module()
        runners["torch_export"] = TorchRunner("torch_export", program, args.max_batch)
        build["torch_export"] = time.perf_counter() - began
        if args.aoti:
            began = time.perf_counter()
            package = export_aoti(model, Path(tmp) / "student_aoti.pt2", size, args.max_batch)
            runners["aoti"] = TorchRunner("aoti", torch._inductor.aoti_load_package(str(package)), args.max_batch)
            build["aoti"] = time.perf_counter() - began

        if args.tensorrt:
            from hdkd.deploy.tensorrt_engines import compile_tensorrt, load_engine

            began = time.perf_counter()
            for name, path in compile_tensorrt(model, Path(tmp), size, args.max_batch).items():
                dtype = torch.float16 if name.endswith("fp16") else torch.float32
                runners[name] = TorchRunner(name, load_engine(path), args.max_batch, "cuda", dtype)
            build["tensorrt"] = time.perf_counter() - began
            runners["eager_cuda"] = TorchRunner("eager_cuda", copy.deepcopy(model).cuda(), args.max_batch, "cuda")

        peaks = {f"peak_{kind}": matmul_peak(Path(tmp), kind == "int8", args.threads) for kind in ("fp32", "int8")}
        reference = runners["eager"](inputs)
        diffs = {name: parity(reference, runner(inputs)) for name, runner in runners.items() if name != "eager"}
        results = {}
        load_before = os.getloadavg()[0]  # other work on the machine moves every figure: report it
        for batch in batches:
            repeats = args.repeats if batch == 1 else args.repeats_large
            batch_input = np.ascontiguousarray(inputs[:batch])
            calls = {name: functools.partial(runner.run, batch_input) for name, runner in runners.items()}
            results[batch] = measure_latency({**calls, **peaks}, repeats)
        load = {"before": load_before, "after": os.getloadavg()[0], "cores": os.cpu_count()}

    gmacs = count_macs(model, size) / 1e9
    threads = torch.get_num_threads()
    # Each batch size's rounds timed the peaks too: a backend's share is against the peak of its own rounds.
    peak = {
        b: {k: PEAK_SIZE**3 / (results[b][f"peak_{k}"]["median_ms"] / 1000) / 1e9 for k in ("fp32", "int8")}
        for b in batches
    }
    print(f"{label}, {size} px | {cpu_name()} | torch {torch.__version__}, {threads} threads")
    print(f"1-min load average {load['before']:.2f} before timing, {load['after']:.2f} after ({load['cores']} cores)")
    for batch in batches:
        fp32, int8 = peak[batch]["fp32"], peak[batch]["int8"]
        print(
            f"peak through ONNX Runtime ({PEAK_SIZE}^3 matmul) in the b{batch} rounds: fp32 {fp32:.0f} GMAC/s, "
            f"int8 {int8:.0f} GMAC/s ({int8 / fp32:.2f}x fp32)"
        )
    print(f"the network: {gmacs:.3f} GMAC per image")
    header = f"{'backend':<14}{'build s':>9}{'max|diff|':>11}"
    for batch in batches:
        header += f"{f'b{batch} median':>13}{f'b{batch} p90':>10}{f'b{batch} speedup':>13}{f'b{batch} peak':>10}"
    print(header)
    shares: dict[int, dict[str, float]] = {batch: {} for batch in batches}
    for name in runners:
        line = f"{name:<14}{build.get(name, 0):>9.1f}{diffs[name]['max_abs_diff'] if name in diffs else 0:>11.1e}"
        for batch in batches:
            times = results[batch][name]
            speedup = results[batch]["eager"]["median_ms"] / times["median_ms"]
            rate = gmacs * batch / (times["median_ms"] / 1000)  # GMAC/s this backend reaches
            shares[batch][name] = rate / peak[batch]["int8" if "int8" in name else "fp32"]
            line += f"{times['median_ms']:>13.2f}{times['p90_ms']:>10.2f}{speedup:>12.2f}x{shares[batch][name]:>10.0%}"
        print(line)
    print("peak: the backend's multiply-accumulates per second as a share of the peak of its precision")
    for batch in batches:
        int8_speedup = results[batch]["onnx"]["median_ms"] / results[batch]["onnx_int8"]["median_ms"]
        print(f"b{batch}: onnx_int8 {int8_speedup:.2f}x onnx")
    if args.json:
        summary = {
            "model": label,
            "cpu": cpu_name(),
            "peak_gmacs": peak,
            "model_gmac": gmacs,
            "share_of_peak": shares,
            "build_s": build,
            "parity": diffs,
            "latency": results,
        }
        print(json.dumps({**summary, "load": load}))


if __name__ == "__main__":
    main()
