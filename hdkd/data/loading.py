"""Training-side data API: decoded split arrays -> augmented tensors -> DataLoader.

The HDKD paper's augmentation (El-Assiouti et al., Eng. Appl. of AI, 2024) on uint8 CHW tensors for
train; resize + normalise for eval. Pixels come from the decoded caches, so epochs never touch image files.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from hdkd.data.arrays import SplitArrays, load_split

__all__ = ["ArrayDataset", "SplitArrays", "eval_transform", "load_split", "make_loader", "train_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(image_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize((image_size, image_size), antialias=True),
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


def eval_transform(image_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ArrayDataset(Dataset):
    """(float CHW tensor, int label) pairs from a SplitArrays, through `transform`."""

    def __init__(self, split: SplitArrays, transform: v2.Transform) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = torch.from_numpy(self.split.images[index]).permute(2, 0, 1)
        return self.transform(tv_tensors.Image(pixels)).as_subclass(torch.Tensor), int(self.split.labels[index])


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
        ArrayDataset(split, transform),
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        drop_last=False,
    )
