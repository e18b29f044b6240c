"""Cost of an HDKD training step against a plain student step, through the real engine.

Times, interleaved and repeated in one process: a plain student step, an HDKD step (teacher
forward + student forward/backward with both losses) for each teacher precision asked for
(`distill.teacher_dtype`: fp32, bf16, auto) and the prepared teacher's bare forward pass in each; with
--compile-teacher also each precision with the teacher under `torch.compile` (what `HDKD_COMPILE_TEACHER=1`
does), side by side with the eager one (the warm-up rounds absorb the compilation).
Prints a table of medians and the HDKD/student ratios; with --json the last line is one JSON object.

Against the machine itself: in the same rounds it times a 2048^3 matmul in fp32 and in bf16 (torch, the same
threads) and prints each step's and teacher forward's multiply-accumulates per second as a share of the peak of
its precision; the MACs are PyTorch's FLOP counter's for a forward pass (convolutions and matmuls), a training
step counted as three forward passes (the backward pass computes the gradients of inputs and of weights, each as
many MACs as the forward). The counter's own `convolution_backward` count is not used: it counts a depthwise
convolution's backward as a dense one (14x the forward at the small preset). With --goal R it also says at what
MAC rate, relative to a student step's, the teacher's forward would have to run for an HDKD step to cost at most
R student steps.

    python benchmarks/distill_step.py --preset paper --batch 16
    python benchmarks/distill_step.py --preset small --teacher-dtypes fp32,bf16
    python benchmarks/distill_step.py --preset paper --teacher-dtypes bf16 --compile-teacher
    python benchmarks/distill_step.py --preset small --teacher-dtypes bf16 --goal 1.25
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from hdkd.config import DistillParams, TrainParams
from hdkd.evaluation.timing import cpu_name
from hdkd.models import PRESETS, build_model
from hdkd.models.complexity import count_macs
from hdkd.models.fuse import fast_bf16
from hdkd.training.loop import Trainer


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one call. On a machine other processes load, the wall clock of a call
    moves with them; its CPU time (with --threads 1: no thread pool spinning) hardly does."""
    began, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - began, time.process_time() - cpu


def _teacher_forward(teacher: torch.nn.Module | None, images: torch.Tensor) -> None:
    assert teacher is not None
    with torch.no_grad():
        teacher(images, return_features=True)


PEAK_SIZE = 2048  # as benchmarks/compile_latency.py: a square matmul this large runs at the kernels' best rate


def _matmul_peak(dtype: torch.dtype) -> Callable[[], object]:
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE, generator=generator).to(dtype) for _ in range(2))
    return lambda: torch.mm(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's own size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--teacher-dtypes", default="fp32,bf16", help="distill.teacher_dtype values to compare")
    parser.add_argument("--compile-teacher", action="store_true", help="also each precision with a compiled teacher")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--goal", type=float, default=None, help="an HDKD/student ratio to say what it would take")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    variants = {dtype: (dtype, False) for dtype in args.teacher_dtypes.split(",")}
    if args.compile_teacher:
        variants |= {f"{dtype} compiled": (dtype, True) for dtype in args.teacher_dtypes.split(",")}
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.image_size or PRESETS[args.preset].img_size

    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, size, size)
    labels = torch.randint(0, args.classes, (args.batch,))
    teacher = build_model("teacher", args.preset, args.classes, img_size=size).eval()
    params = TrainParams()
    with tempfile.TemporaryDirectory() as out:
        student = Trainer(
            build_model("student", args.preset, args.classes, img_size=size),
            "student",
            params,
            out,
            0,
            [str(c) for c in range(args.classes)],
            progress=False,
        )
        hdkd = {
            variant: Trainer(
                build_model("distilled", args.preset, args.classes, img_size=size),
                "distilled",
                DistillParams(**params.model_dump(), teacher_dtype=dtype),
                out,
                0,
                [str(c) for c in range(args.classes)],
                teacher=teacher,
                progress=False,
            )
            for variant, (dtype, _) in variants.items()
        }
        for variant, (_, compiled) in variants.items():
            if compiled:  # as prepare_teacher(compile=True) does: the prepared teacher under torch.compile
                hdkd[variant].teacher = torch.compile(hdkd[variant].teacher)
        student.model.train()
        cases: dict[str, Callable[[], object]] = {"student step": lambda: student.step(images, labels)}
        for variant, trainer in hdkd.items():
            trainer.model.train()
            cases[f"HDKD step, {variant} teacher"] = functools.partial(trainer.step, images, labels)
        for variant, trainer in hdkd.items():
            cases[f"teacher forward, {variant}"] = functools.partial(_teacher_forward, trainer.teacher, images)
        # The prepared teacher's fused convolutions are invisible to the FLOP counter: its arithmetic is the
        # unprepared teacher's, the same convolutions.
        teacher_macs = count_macs(teacher, size) * args.batch
        macs = {"student step": 3 * count_macs(student.net, size) * args.batch}
        hdkd_step = 3 * count_macs(next(iter(hdkd.values())).net, size) * args.batch + teacher_macs
        macs |= {name: hdkd_step for name in cases if name.startswith("HDKD step")}
        macs |= {name: teacher_macs for name in cases if name.startswith("teacher forward")}
        # The precision whose peak a case is held to: the prepared teacher's own for its forward, fp32 otherwise.
        precision = {name: "fp32" for name in cases}
        for variant, trainer in hdkd.items():
            assert trainer.teacher is not None
            teacher_dtype = next(trainer.teacher.parameters()).dtype
            precision[f"teacher forward, {variant}"] = "bf16" if teacher_dtype == torch.bfloat16 else "fp32"
        cases |= {"peak fp32 matmul": _matmul_peak(torch.float32), "peak bf16 matmul": _matmul_peak(torch.bfloat16)}
        times: dict[str, list[float]] = {name: [] for name in cases}
        cpu_times: dict[str, list[float]] = {name: [] for name in cases}
        load_before = os.getloadavg()[0]
        for round_ in range(args.warmup + args.repeats):
            for name, fn in cases.items():
                elapsed, cpu = _timed(fn)
                if round_ >= args.warmup:
                    times[name].append(elapsed)
                    cpu_times[name].append(cpu)
        load_after = os.getloadavg()[0]

    medians = {name: statistics.median(values) for name, values in times.items()}
    peak = {kind: PEAK_SIZE**3 / medians[f"peak {kind} matmul"] / 1e9 for kind in ("fp32", "bf16")}
    rate = {name: count / medians[name] / 1e9 for name, count in macs.items()}
    cpu = {name: statistics.median(values) for name, values in cpu_times.items()}
    ratios = {variant: medians[f"HDKD step, {variant} teacher"] / medians["student step"] for variant in variants}
    cpu_ratios = {variant: cpu[f"HDKD step, {variant} teacher"] / cpu["student step"] for variant in variants}
    print(
        f"preset {args.preset}, batch {args.batch}, {size} px, {torch.get_num_threads()} threads, "
        f"{cpu_name()}, native bf16: {fast_bf16('cpu')}, {args.repeats} repeats (median)"
    )
    print(f"1-min load average {load_before:.2f} before timing, {load_after:.2f} after ({os.cpu_count()} cores)")
    print(
        f"peak ({PEAK_SIZE}^3 torch matmul, in the same rounds): fp32 {peak['fp32']:.0f} GMAC/s, "
        f"bf16 {peak['bf16']:.0f} GMAC/s"
    )
    header = f"{'case':<37}{'median s':>10}{'min s':>10}{'x student':>11}{'CPU s':>10}{'x student':>11}"
    print(header + f"{'GMAC':>8}{'GMAC/s':>8}{'peak':>7}")
    for name, values in times.items():
        if name.startswith("peak"):
            continue
        line = f"{name:<37}{medians[name]:>10.4f}{min(values):>10.4f}{medians[name] / medians['student step']:>11.2f}"
        line += f"{cpu[name]:>10.4f}{cpu[name] / cpu['student step']:>11.2f}"
        print(line + f"{macs[name] / 1e9:>8.2f}{rate[name]:>8.1f}{rate[name] / peak[precision[name]]:>7.0%}")
    print(
        "GMAC: PyTorch's FLOP counter (convolutions, matmuls), a training step as 3 forward passes; peak: the share "
        "of the peak of the precision that runs the convolutions (student steps fp32, a teacher forward its own)"
    )
    print(f"teacher forward / student step in arithmetic: {teacher_macs / macs['student step']:.2f}")
    for label, by_variant in (("wall clock", ratios), ("CPU time", cpu_ratios)):
        print(f"HDKD / student, {label}: " + ", ".join(f"{r:.2f} ({v} teacher)" for v, r in by_variant.items()))
    if args.goal is not None:
        for variant in variants:
            forward = f"teacher forward, {variant}"
            # A floor no kernel work can beat: the teacher's arithmetic at the matmul peak of its precision.
            kind = precision[forward]
            floor = teacher_macs / 1e9 / peak[kind] / medians["student step"]
            print(
                f"{variant} teacher: at the {kind} peak ({peak[kind]:.0f} GMAC/s) its forward alone would cost "
                f"{floor:.2f} student steps, so HDKD / student >= {1 + floor:.2f} on this machine"
            )
            rest = medians[f"HDKD step, {variant} teacher"] - medians["student step"] - medians[forward]
            allowed = (args.goal - 1) * medians["student step"] - rest
            if allowed <= 0:
                print(f"HDKD / student <= {args.goal}: out of reach even with a free teacher ({variant})")
                continue
            needed = macs[forward] / allowed / 1e9 / rate["student step"]
            print(
                f"HDKD / student <= {args.goal} ({variant} teacher): the rest of the HDKD step costs "
                f"{rest / medians['student step']:.2f} student steps, so the teacher forward may cost "
                f"{allowed / medians['student step']:.2f}: {needed:.1f}x a student step's MAC rate "
                f"({needed * rate['student step']:.0f} GMAC/s); it runs at {rate[forward] / rate['student step']:.1f}x"
            )
    if args.json:
        summary = {"preset": args.preset, "batch": args.batch, "image_size": size, "cpu": cpu_name()}
        summary |= {"threads": torch.get_num_threads(), "median_s": medians, "cpu_s": cpu}
        summary |= {"macs": macs, "gmacs_per_s": rate, "peak_gmacs": peak}
        print(json.dumps({**summary, "ratio": ratios, "cpu_ratio": cpu_ratios, "load": [load_before, load_after]}))


if __name__ == "__main__":
    main()
