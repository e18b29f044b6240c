"""Peak memory and time of the balance stage (SMOTE class by class) against one whole-set SMOTE call.

Both run on the same synthetic train split (HAM-like imbalance, `--size` px, `auto` targets:
every class up to the largest), each in its own subprocess so that its peak RSS is its own
(os.wait4 gives the child's rusage). A third child only loads the split: the floor that
imports and the uint8 input cost. The outputs of both methods are compared byte for byte.

    python benchmarks/balance_memory.py [--images 2000] [--size 224] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = {"load": "load only", "per_class": "balance (per class)", "whole_set": "SMOTE (whole set)"}


def prepare(split_dir: Path, images: int, size: int, seed: int) -> dict[str, int]:
    """Write a train split like the split stage does: train.npz + manifest.csv."""
    import pandas as pd

    from hdkd.data.arrays import save_split
    from hdkd.data.synthetic import HAM_CLASSES, generate

    data = generate(images, size, seed)
    labels = np.array([HAM_CLASSES.index(name) for name in data.labels])
    ids = np.array([f"images/{name}/syn_{i:05d}.png" for i, name in enumerate(data.labels)])
    split_dir.mkdir(parents=True)
    save_split(split_dir / "train.npz", data.images, labels, list(HAM_CLASSES), ids)
    pd.DataFrame({"path": ids, "label": data.labels, "group": data.groups, "given_split": "", "split": "train"}).to_csv(
        split_dir / "manifest.csv", index=False
    )
    return {name: int((labels == i).sum()) for i, name in enumerate(HAM_CLASSES)}


def child(mode: str, split_dir: Path, out_dir: Path, size: int, seed: int) -> None:
    from hdkd.config import params_from_dict
    from hdkd.data.arrays import load_split, save_split

    start = time.perf_counter()
    if mode == "load":
        load_split(split_dir / "train.npz")
    elif mode == "per_class":
        from hdkd.data.balance import balance

        params = params_from_dict(
            {"seed": seed, "data": {"image_size": size}, "balance": {"targets": "auto", "k_neighbors": 5}}
        )
        balance(params, split_dir, out_dir)
    else:
        from imblearn.over_sampling import SMOTE

        train = load_split(split_dir / "train.npz")
        counts = np.bincount(train.labels)
        targets = {i: int(counts.max()) for i in range(len(counts)) if counts[i] < counts.max()}
        flat = train.images.reshape(len(train), -1).astype(np.float32)
        sampler = SMOTE(sampling_strategy=targets, k_neighbors=5, random_state=seed)
        x, y = sampler.fit_resample(flat, train.labels)
        np.clip(np.rint(x, out=x), 0, 255, out=x)  # in place, as balance does
        images = x.astype(np.uint8).reshape(-1, *train.images.shape[1:])
        out_dir.mkdir(parents=True)
        save_split(out_dir / "train.npz", images, y, train.classes, np.arange(len(y)).astype(str))
    print(f"work_seconds={time.perf_counter() - start:.3f}")


def measure(mode: str, split_dir: Path, out_dir: Path, size: int, seed: int) -> tuple[float, float, float]:
    """(peak RSS GiB, wall seconds, work seconds) of one child process."""
    cmd = [sys.executable, __file__, "--child", mode, "--dir", str(split_dir), "--out", str(out_dir)]
    cmd += ["--size", str(size), "--seed", str(seed)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{mode} failed:\n{out}")
    work = float(next(line.split("=")[1] for line in out.splitlines() if line.startswith("work_seconds=")))
    return usage.ru_maxrss / 2**20, wall, work  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dir, args.out, args.size, args.seed)
        return

    with tempfile.TemporaryDirectory(prefix="balance_bench_") as tmp:
        split_dir = Path(tmp) / "split"
        start = time.perf_counter()
        counts = prepare(split_dir, args.images, args.size, args.seed)
        top = max(counts.values())
        print(
            f"{args.images} synthetic images at {args.size} px ({time.perf_counter() - start:.0f} s to generate); "
            f"train counts {counts}; auto targets -> {top} x {len(counts)} = {top * len(counts)} images"
        )
        results = {m: measure(m, split_dir, Path(tmp) / m, args.size, args.seed) for m in MODES}

        from hdkd.data.arrays import load_split

        same = np.array_equal(
            load_split(Path(tmp) / "per_class" / "train.npz").images,
            load_split(Path(tmp) / "whole_set" / "train.npz").images,
        )

    print(f"\n{'method':<22}{'peak RSS':>12}{'wall':>10}{'work':>10}")
    for mode, (rss, wall, work) in results.items():
        print(f"{MODES[mode]:<22}{rss:>9.2f} GiB{wall:>9.1f}s{work:>9.1f}s")
    (rss_p, _, work_p), (rss_w, _, work_w) = results["per_class"], results["whole_set"]
    floor = results["load"][0]
    print(
        f"\nwhole set / per class: peak RSS {rss_w / rss_p:.2f}x, work time {work_w / work_p:.2f}x; "
        f"above the load-only floor: {(rss_w - floor) / (rss_p - floor):.2f}x"
    )
    print(f"outputs byte-identical: {same}")


if __name__ == "__main__":
    main()
