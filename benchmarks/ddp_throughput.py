"""Throughput of HDKD distillation training: one process against DDP ranks under torchrun (gloo, CPU).

Both train with the same global batch (each of N ranks steps on batch / N images, gradients
all-reduced) and the same total of CPU threads (--threads, default every core, split evenly over
the ranks). A third run, one process with one rank's threads, tells how much of the gain is more
cores at work and how much is fewer threads per process (OpenMP threads spin-waiting on a busy core
can cost more than they bring). The runs alternate, --rounds times, in this one invocation, so all
see the same machine load. Timed: whole HDKD training steps through the real engine (teacher forward,
student forward and backward, all-reduce, optimizer) on in-memory tensors; data loading is not in
it. Prints a table of images/second (median over rounds) and the N-vs-1 ratio; with --json the
last line is one JSON object.

    python benchmarks/ddp_throughput.py --preset tiny --image-size 32 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hdkd.config import DistillParams
from hdkd.models import PRESETS, build_model
from hdkd.training.distributed import init_world
from hdkd.training.loop import Trainer


def _worker(args: argparse.Namespace) -> None:
    """One rank (or the single process): time `--steps` training steps, rank 0 prints the result."""
    world = init_world()
    torch.set_num_threads(args.threads)
    size = args.image_size or PRESETS[args.preset].img_size
    local_batch = args.batch // world.size
    torch.manual_seed(world.rank)  # ranks see different images, as with a DistributedSampler
    images = torch.randn(local_batch, 3, size, size)
    labels = torch.randint(0, args.classes, (local_batch,))
    torch.manual_seed(0)  # same initial weights everywhere (DDP broadcasts rank 0's anyway)
    teacher = build_model("teacher", args.preset, args.classes, img_size=size).eval()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            build_model("distilled", args.preset, args.classes, img_size=size),
            "distilled",
            DistillParams(),
            out,
            0,
            [str(c) for c in range(args.classes)],
            teacher=teacher,
            progress=False,
            world=world,
        )
        trainer.model.train()
        for _ in range(args.warmup):
            trainer.step(images, labels)
        if world.distributed:
            dist.barrier()
        began = time.perf_counter()
        steps = []
        for _ in range(args.steps):
            step_began = time.perf_counter()
            trainer.step(images, labels)
            steps.append(time.perf_counter() - step_began)
        elapsed = time.perf_counter() - began
    if world.is_main:
        result = {
            "threads_per_process": torch.get_num_threads(),
            "batch_per_process": local_batch,
            "median_step_s": statistics.median(steps),
            "images_per_s": args.batch * args.steps / elapsed,
        }
        print(json.dumps(result))
    if world.distributed:
        dist.destroy_process_group()


def _measure(args: argparse.Namespace, processes: int, threads: int) -> dict[str, Any]:
    script = [
        str(Path(__file__).resolve()),
        "--worker",
        *("--preset", args.preset, "--batch", str(args.batch), "--steps", str(args.steps)),
        *("--warmup", str(args.warmup), "--classes", str(args.classes), "--threads", str(threads)),
        *(("--image-size", str(args.image_size)) if args.image_size else ()),
    ]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [sys.executable, *(launcher if processes > 1 else []), *script]
    # OMP_NUM_THREADS too: torchrun would otherwise set it to 1 and warn.
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's own size")
    parser.add_argument("--batch", type=int, default=64, help="global batch, split over the processes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="DDP ranks compared with one process")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="total CPU threads of a run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurements of each")
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.batch % args.processes:
        parser.error(f"--batch {args.batch} does not split evenly over {args.processes} processes")

    per_rank = max(1, args.threads // args.processes)
    # (processes, threads per process): the comparison, then one process with one rank's threads.
    configs = list(dict.fromkeys([(1, args.threads), (args.processes, per_rank), (1, per_rank)]))
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {config: [] for config in configs}
    for _ in range(args.rounds):
        for processes, threads in configs:
            runs[processes, threads].append(_measure(args, processes, threads))
    speed = {config: statistics.median(r["images_per_s"] for r in rounds) for config, rounds in runs.items()}
    size = args.image_size or PRESETS[args.preset].img_size
    print(
        f"HDKD training step, preset {args.preset}, {size} px, global batch {args.batch}, {args.steps} steps, "
        f"{args.threads} threads in total, {os.cpu_count()} CPUs, gloo, {args.rounds} rounds (median)"
    )
    print(f"{'processes':>10}{'threads/proc':>14}{'batch/proc':>12}{'step s':>10}{'images/s':>11}{'min':>9}{'max':>9}")
    for (processes, threads), rounds in runs.items():
        rates = [r["images_per_s"] for r in rounds]
        print(
            f"{processes:>10}{rounds[0]['threads_per_process']:>14}{rounds[0]['batch_per_process']:>12}"
            f"{statistics.median(r['median_step_s'] for r in rounds):>10.4f}{speed[processes, threads]:>11.1f}"
            f"{min(rates):>9.1f}{max(rates):>9.1f}"
        )
    ddp = speed[args.processes, per_rank]
    ratio = ddp / speed[1, args.threads]
    print(f"{args.processes} processes x {per_rank} threads / 1 process x {args.threads} threads: {ratio:.2f}x")
    if per_rank != args.threads:
        print(f"{args.processes} processes / 1 process, {per_rank} thread(s) each: {ddp / speed[1, per_rank]:.2f}x")
    if args.json:
        summary = {"preset": args.preset, "image_size": size, "batch": args.batch, "threads": args.threads}
        rates = {f"{n}x{t}": value for (n, t), value in speed.items()}
        print(json.dumps({**summary, "images_per_s": rates, "ratio": ratio}))


if __name__ == "__main__":
    main()
