"""Training-side data API: decoded split arrays -> DataLoader of augmented, normalised batches.

The HDKD paper's augmentation (El-Assiouti et al., Eng. Appl. of AI, 2024; `hdkd.data.augment`) for train;
resize + normalise for eval. Both run on whole batches, in the loader's collate step: a transform call costs
the same Python overhead for one image as for 32. Pixels come from the decoded caches, so epochs never touch
image files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from hdkd.data.arrays import SplitArrays, load_split
from hdkd.data.augment import RandomBatchAugment

__all__ = [
    "ArrayDataset",
    "BatchTransform",
    "SplitArrays",
    "eval_transform",
    "load_split",
    "make_loader",
    "train_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(image_size: int) -> v2.Compose:
    """uint8 (N, C, H, W) batch or (C, H, W) image -> augmented, normalised float32."""
    return v2.Compose(
        [
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            RandomBatchAugment(),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> v2.Compose:
    """uint8 (N, C, H, W) batch or (C, H, W) image -> resized, normalised float32."""
    return v2.Compose(
        [
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ArrayDataset(Dataset):
    """(uint8 CHW tensor, int label) pairs from a SplitArrays; the loader transforms whole batches."""

    def __init__(self, split: SplitArrays) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.split.images[index]).permute(2, 0, 1), int(self.split.labels[index])


class BatchTransform:
    """The loader's collate step: stack a batch, then transform it as one tensor."""

    def __init__(self, transform: v2.Compose) -> None:
        self.transform = transform

    def __call__(self, samples: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = zip(*samples, strict=True)
        return self.transform(torch.stack(images)), torch.tensor(labels)


def make_loader(
    split: SplitArrays,
    *,
    train: bool,
    image_size: int,
    batch_size: int,
    num_workers: int = 0,
    generator: torch.Generator | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """Shuffled (by `generator`, which the caller may reseed per epoch) when training without a sampler."""
    transform = train_transform(image_size) if train else eval_transform(image_size)
    return DataLoader(
        ArrayDataset(split),
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        drop_last=False,
        collate_fn=BatchTransform(transform),
    )
