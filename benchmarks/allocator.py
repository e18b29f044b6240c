"""Training steps with glibc's default malloc against `keep_freed_memory()` (what a Trainer does), side by side.

A process cannot return to glibc's default behaviour once it has changed it, so each allocator runs in a worker
process of its own (`HDKD_KEEP_FREED_MEMORY=0` for the default), both holding the same networks and batch; the
timed rounds alternate between them, so load from other processes hits both alike. For each a plain student
step, an HDKD step (bf16 teacher where native) and the student's eval-mode forward pass on the batch: median
seconds, minor page faults per call and the peak resident set. With --json the last line is one JSON object.

    python benchmarks/allocator.py --preset paper --batch 16
    python benchmarks/allocator.py --preset small --batch 16 --repeats 20
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from hdkd.config import DistillParams, TrainParams
from hdkd.evaluation.timing import cpu_name
from hdkd.memory import ENV
from hdkd.models import PRESETS, build_model
from hdkd.training.loop import Trainer, channels_last

ALLOCATORS = {"glibc default": "0", "kept (hdkd)": "1"}
CASES = ("student step", "HDKD step", "student eval")


def worker(preset: str, batch: int, classes: int) -> None:
    """Answer each case name read from stdin with one timed step: `seconds minor_faults max_rss_bytes`."""
    size = PRESETS[preset].img_size
    torch.manual_seed(0)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    names = [str(c) for c in range(classes)]
    teacher = build_model("teacher", preset, classes, img_size=size).eval()
    with tempfile.TemporaryDirectory() as out:
        trainers = {
            "student step": Trainer(
                build_model("student", preset, classes, img_size=size),
                "student",
                TrainParams(),
                out,
                0,
                names,
                progress=False,
            ),
            "HDKD step": Trainer(
                build_model("distilled", preset, classes, img_size=size),
                "distilled",
                DistillParams(**TrainParams().model_dump()),
                out,
                0,
                names,
                teacher=teacher,
                progress=False,
            ),
        }
        for trainer in trainers.values():
            trainer.model.train()
        # The eval-mode forward pass, as evaluation and `hdkd predict --backend torch` run it.
        student = trainers["student step"].net
        evaluated: nn.Module = copy.deepcopy(student).eval()
        batch_in = channels_last(images)

        def evaluate() -> None:
            with torch.inference_mode():
                evaluated(batch_in)

        cases = {name: functools.partial(trainer.step, images, labels) for name, trainer in trainers.items()}
        cases["student eval"] = evaluate
        print("ready", flush=True)
        for line in sys.stdin:
            faults, began = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            cases[line.strip()]()
            elapsed = time.perf_counter() - began
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(f"{elapsed} {usage.ru_minflt - faults} {usage.ru_maxrss * 1024}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds: the kept heap grows in the first")
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.preset, args.batch, args.classes)
        return

    command = [sys.executable, __file__, "--worker", "--preset", args.preset, "--batch", str(args.batch)]
    command += ["--classes", str(args.classes)]
    workers = {
        name: subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, ENV: value}
        )
        for name, value in ALLOCATORS.items()
    }
    for process in workers.values():
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    seconds = {(a, c): [] for a in workers for c in CASES}
    faults = {(a, c): [] for a in workers for c in CASES}
    rss: dict[str, int] = {}
    load_before = os.getloadavg()[0]
    for round_ in range(args.warmup + args.repeats):
        for case in CASES:
            for name, process in workers.items():
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(case + "\n")
                process.stdin.flush()
                elapsed, faulted, peak = process.stdout.readline().split()
                rss[name] = int(peak)
                if round_ >= args.warmup:
                    seconds[name, case].append(float(elapsed))
                    faults[name, case].append(int(faulted))
    load_after = os.getloadavg()[0]
    for process in workers.values():
        assert process.stdin is not None
        process.stdin.close()
        process.wait()

    median = {key: statistics.median(values) for key, values in seconds.items()}
    size = PRESETS[args.preset].img_size
    print(
        f"preset {args.preset}, batch {args.batch}, {size} px, {torch.get_num_threads()} threads, {cpu_name()}, "
        f"{args.repeats} rounds after {args.warmup} untimed (median)"
    )
    print(f"1-min load average {load_before:.2f} before timing, {load_after:.2f} after ({os.cpu_count()} cores)")
    print(f"{'allocator':<15}{'case':<14}{'median s':>10}{'min s':>9}{'faults/call':>13}{'peak RSS GB':>13}")
    for (name, case), values in seconds.items():
        line = f"{name:<15}{case:<14}{median[name, case]:>10.4f}{min(values):>9.4f}"
        print(line + f"{statistics.median(faults[name, case]):>13.0f}{rss[name] / 1e9:>13.2f}")
    default, kept = ALLOCATORS
    speedups = {case: median[default, case] / median[kept, case] for case in CASES}
    print("kept / default speed-up: " + ", ".join(f"{case} {speedup:.2f}x" for case, speedup in speedups.items()))
    print(
        "HDKD / student: "
        + ", ".join(f"{name} {median[name, 'HDKD step'] / median[name, 'student step']:.2f}" for name in workers)
    )
    if args.json:
        summary = {"preset": args.preset, "batch": args.batch, "cpu": cpu_name(), "load": [load_before, load_after]}
        summary |= {"median_s": {f"{a}, {c}": v for (a, c), v in median.items()}, "speedup": speedups}
        print(json.dumps(summary | {"peak_rss_bytes": rss}))


if __name__ == "__main__":
    main()
