"""The training augmentation per batch: torchvision's transforms image by image, kornia's batched ones (if
installed: `pip install kornia`) and `hdkd.data.augment`, side by side in one run on one thread.

    python benchmarks/augment.py --sizes 32 64 224 --batch 32
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from hdkd.data.augment import RandomBatchAugment
from hdkd.data.loading import IMAGENET_MEAN, IMAGENET_STD
from hdkd.evaluation.timing import cpu_name, measure_latency


def torchvision_per_image() -> Callable[[torch.Tensor], torch.Tensor]:
    """The same augmentation (MODEL_SPEC) as torchvision transforms, called on each uint8 image."""
    transform = v2.Compose(
        [
            v2.RandomRotation(180),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.ColorJitter(brightness=0.3, contrast=0.3),
            v2.RandomAdjustSharpness(2),
            v2.GaussianBlur(3),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return lambda batch: torch.stack([transform(image) for image in batch])


def kornia_batched() -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    augment = K.AugmentationSequential(
        K.RandomRotation(180.0, p=1.0, resample="nearest"),
        K.RandomHorizontalFlip(),
        K.RandomVerticalFlip(),
        K.ColorJitter(brightness=0.3, contrast=0.3, p=1.0),
        K.RandomSharpness(sharpness=(2.0, 2.0), p=0.5),
        K.RandomGaussianBlur((3, 3), (0.1, 2.0), p=1.0),
        K.Normalize(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)),
    )
    return lambda batch: augment(batch.float() / 255)


def hdkd_batched() -> Callable[[torch.Tensor], torch.Tensor]:
    augment, normalize = RandomBatchAugment(), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    return lambda batch: normalize(augment(batch.float() / 255))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)  # what a training process leaves a loader worker, and steadier on a busy machine
    candidates = {"torchvision, per image": torchvision_per_image(), "kornia, batched": kornia_batched()}
    candidates["hdkd.data.augment, batched"] = hdkd_batched()
    print(f"batch {args.batch}, 1 thread | {cpu_name()} | 1-min load average {os.getloadavg()[0]:.2f} before")
    print(f"{'':28}" + "".join(f"{f'{size} px: ms':>14}{'vs ours':>9}" for size in args.sizes))
    available = {name: fn for name, fn in candidates.items() if fn is not None}
    per_size = []
    for size in args.sizes:
        batch = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8)
        calls = {name: functools.partial(fn, batch) for name, fn in available.items()}
        per_size.append(measure_latency(calls, args.repeats))  # interleaved rounds, medians
    timings = {
        name: [latency[name]["median_ms"] if name in latency else None for latency in per_size] for name in candidates
    }
    ours = timings["hdkd.data.augment, batched"]
    for name, values in timings.items():
        cells = [
            f"{'not installed':>23}" if value is None else f"{value:>14.2f}{value / base:>8.1f}x"
            for value, base in zip(values, ours, strict=True)
        ]
        print(f"{name:28}" + "".join(cells))
    print(f"1-min load average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
