"""Cost of an HDKD training step against a plain student step, through the real engine.

Times, interleaved and repeated in one process: a plain student step, an HDKD step (teacher
forward + student forward/backward with both losses) and a bare teacher forward pass. Prints a
table of medians and the HDKD/student ratio; with --json the last line is one JSON object.

    python benchmarks/distill_step.py --preset paper --batch 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from hdkd.config import DistillParams, TrainParams
from hdkd.models import PRESETS, build_model
from hdkd.training.loop import Trainer


def _timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's own size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
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
        hdkd = Trainer(
            build_model("distilled", args.preset, args.classes, img_size=size),
            "distilled",
            DistillParams(**params.model_dump()),
            out,
            0,
            [str(c) for c in range(args.classes)],
            teacher=teacher,
            progress=False,
        )
        student.model.train()
        hdkd.model.train()

        def teacher_forward() -> None:
            with torch.no_grad():
                teacher(images, return_features=True)

        cases = {
            "student_s": lambda: student.step(images, labels),
            "hdkd_s": lambda: hdkd.step(images, labels),
            "teacher_fwd_s": teacher_forward,
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(args.warmup + args.repeats):
            for name, fn in cases.items():
                elapsed = _timed(fn)
                if round_ >= args.warmup:
                    times[name].append(elapsed)

    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["hdkd_s"] / medians["student_s"]
    print(
        f"preset {args.preset}, batch {args.batch}, {size} px, {torch.get_num_threads()} threads, "
        f"CPU {torch.backends.cpu.get_cpu_capability()}, {args.repeats} repeats (median)"
    )
    print(f"{'case':<22}{'median s':>10}{'min s':>10}{'x student':>11}")
    labels_ = {"student_s": "student step", "hdkd_s": "HDKD step", "teacher_fwd_s": "teacher forward"}
    for name, label in labels_.items():
        print(
            f"{label:<22}{medians[name]:>10.4f}{min(times[name]):>10.4f}{medians[name] / medians['student_s']:>11.2f}"
        )
    print(f"HDKD / student ratio: {ratio:.2f}")
    if args.json:
        print(json.dumps({"preset": args.preset, "batch": args.batch, "image_size": size, **medians, "ratio": ratio}))


if __name__ == "__main__":
    main()
