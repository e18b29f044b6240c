"""Training epoch time by torch threads and DataLoader workers: the CPU split that `train` uses.

Each configuration trains the teacher for two epochs in a fresh process (thread settings only
take effect at process start) on the same toy data through the real `hdkd.training.train.train`; the
second epoch is timed. Configurations run interleaved, `--rounds` times; the table shows
medians and each configuration against the default (`auto`: cores minus loader workers, no workers).

    python benchmarks/epoch_threads.py --preset tiny --image-size 32 --images 640
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from hdkd.evaluation.timing import cpu_name

CONFIGS = [("auto", 0), ("auto", 1), ("auto", 2), ("2", 2), ("1", 0)]  # (torch threads, loader workers)


def child(args: argparse.Namespace) -> None:
    import numpy as np

    from hdkd.config import params_from_dict
    from hdkd.data.arrays import save_split
    from hdkd.training.distributed import share_cores
    from hdkd.training.train import train

    folder = Path(args.dir)
    classes = [str(c) for c in range(7)]
    rng = np.random.default_rng(0)  # the pixels do not change the cost of an epoch
    for name, n in (("train", args.images), ("val", 64)):
        images = rng.integers(0, 256, (n, args.image_size, args.image_size, 3), dtype=np.uint8)
        labels = np.arange(n) % len(classes)
        save_split(folder / f"{name}.npz", images, labels, classes, np.arange(n).astype(str))
    share_cores(args.workers)  # what the training stages do; a no-op when OMP_NUM_THREADS is set
    params = params_from_dict(
        {
            "model": {"preset": args.preset},
            "data": {"image_size": args.image_size, "num_workers": args.workers},
            "teacher": {"epochs": 2, "batch_size": 32, "sched": "none"},
        }
    )
    result = train(params, "teacher", folder / "train.npz", folder / "val.npz", folder / "out", progress=False)
    print(json.dumps({"epoch_seconds": result.history[1]["epoch_seconds"]}))


def run_config(args: argparse.Namespace, threads: str, workers: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
        if threads != "auto":
            env["OMP_NUM_THREADS"] = threads
        command = [sys.executable, __file__, "--child", "--dir", folder, "--workers", str(workers)]
        command += ["--preset", args.preset, "--image-size", str(args.image_size), "--images", str(args.images)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        return float(json.loads(done.stdout.strip().splitlines()[-1])["epoch_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    seconds: dict[tuple[str, int], list[float]] = {config: [] for config in CONFIGS}
    for _ in range(args.rounds):
        for config in CONFIGS:
            seconds[config].append(run_config(args, *config))
    base = statistics.median(seconds[CONFIGS[0]])
    print(f"{args.preset}, {args.image_size} px, {args.images} train images | {cpu_name()}")
    print(f"1-min load average {os.getloadavg()[0]:.2f} after timing")
    print(f"{'torch threads':>14} {'workers':>8} {'epoch s (median)':>17} {'vs auto':>8}")
    for (threads, workers), values in seconds.items():
        median = statistics.median(values)
        print(f"{threads:>14} {workers:>8} {median:>17.2f} {median / base:>7.2f}x")


if __name__ == "__main__":
    main()
