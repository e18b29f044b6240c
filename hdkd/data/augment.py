"""The HDKD paper's training augmentation (MODEL_SPEC), drawn per image and applied to a whole batch at once.

Per image it draws what torchvision's transforms draw: a rotation angle in [-180, 180] degrees (nearest
neighbour, zeros outside), a horizontal and a vertical flip (each with probability 1/2), brightness and contrast
factors in [0.7, 1.3] in a random order (`ColorJitter`), a sharpness factor of 2 with probability 1/2
(`RandomAdjustSharpness`) and a 3x3 Gaussian blur of sigma in [0.1, 2] (`GaussianBlur`). Each operation is
torchvision's formula, checked image by image against `torchvision.transforms.v2.functional` in
tests/data/test_augment.py, but on the batch: one `grid_sample`, a few blends and two convolutions.

Why not torchvision's transforms or kornia: a transform call costs ~0.1 ms of Python whatever the image size, so
torchvision's per-image pipeline took 27 ms per batch of 32 32x32 images on one core, more than the student's
training step (20 ms), and kornia's batched one 6.8 ms; this takes 1.8 ms (benchmarks/augment.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAX_DEGREES = 180.0
BRIGHTNESS = CONTRAST = 0.3
SHARPNESS_FACTOR, SHARPNESS_P = 2.0, 0.5
BLUR_SIGMA = (0.1, 2.0)

# torchvision's sharpness kernel: a 3x3 smoothing whose blend with the image (factor 2) sharpens it.
_SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentDraw:
    """One batch's random draws, a value per image."""

    degrees: torch.Tensor  # counter-clockwise
    hflip: torch.Tensor  # bool
    vflip: torch.Tensor  # bool
    brightness: torch.Tensor
    contrast: torch.Tensor
    contrast_first: torch.Tensor  # bool: ColorJitter applies its adjustments in a random order
    sharpen: torch.Tensor  # bool
    sigma: torch.Tensor

    @classmethod
    def sample(cls, n: int, generator: torch.Generator | None = None) -> AugmentDraw:
        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.empty(n).uniform_(low, high, generator=generator)

        def coin(p: float = 0.5) -> torch.Tensor:
            return torch.rand(n, generator=generator) < p

        return cls(
            degrees=uniform(-MAX_DEGREES, MAX_DEGREES),
            hflip=coin(),
            vflip=coin(),
            brightness=uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS),
            contrast=uniform(1 - CONTRAST, 1 + CONTRAST),
            contrast_first=coin(),
            sharpen=coin(SHARPNESS_P),
            sigma=uniform(*BLUR_SIGMA),
        )


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).view(-1, 1, 1, 1)


def rotate_and_flip(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    """Rotate each image about its centre (nearest neighbour, zeros outside), then flip it; one `grid_sample`."""
    n, _, height, width = x.shape
    angle = draw.degrees.to(torch.float64) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    # The grid maps each output pixel to the input pixel it shows: un-flip, then un-rotate, in pixel units
    # (so that non-square images rotate without shearing), normalised back to [-1, 1].
    flip_x = torch.where(draw.hflip, -1.0, 1.0).double()
    flip_y = torch.where(draw.vflip, -1.0, 1.0).double()
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos * flip_x
    theta[:, 0, 1] = -sin * flip_y * height / width
    theta[:, 1, 0] = sin * flip_x * width / height
    theta[:, 1, 1] = cos * flip_y
    grid = F.affine_grid(theta.to(x.dtype), [n, 1, height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_image(factor, x)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    gray = torch.tensordot(x, x.new_tensor(_GRAY), dims=([1], [0])) if x.shape[1] == 3 else x[:, 0]
    mean = gray.mean((1, 2)).view(-1, 1, 1, 1)
    factor = _per_image(factor, x)
    return (factor * x + (1 - factor) * mean).clamp(0, 1)


def color_jitter(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    brightness_first = adjust_contrast(adjust_brightness(x, draw.brightness), draw.contrast)
    contrast_first = adjust_brightness(adjust_contrast(x, draw.contrast), draw.brightness)
    return torch.where(draw.contrast_first.view(-1, 1, 1, 1), contrast_first, brightness_first)


def adjust_sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's: blend with the 3x3-smoothed image, the one-pixel border left as it is."""
    n, channels, height, width = x.shape
    smooth = F.conv2d(x.reshape(n * channels, 1, height, width), _SMOOTH.to(x).view(1, 1, 3, 3))
    inner = x[..., 1:-1, 1:-1]
    sharpened = x.clone()
    sharpened[..., 1:-1, 1:-1] = (factor * inner + (1 - factor) * smooth.view_as(inner)).clamp(0, 1)
    return sharpened


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian blur, one sigma per image, reflected borders: one grouped convolution."""
    n, channels, height, width = x.shape
    taps = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype)
    kernel_1d = torch.exp(-(taps**2) / (2 * sigma.to(x.dtype).view(n, 1) ** 2))
    kernel_1d = kernel_1d / kernel_1d.sum(1, keepdim=True)
    kernels = (kernel_1d[:, :, None] * kernel_1d[:, None, :]).repeat_interleave(channels, 0).unsqueeze(1)
    padded = F.pad(x.reshape(1, n * channels, height, width), (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernels, groups=n * channels).view_as(x)


def augment(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    """The augmentation of float images in [0, 1], shape (N, C, H, W), with the given draws."""
    x = color_jitter(rotate_and_flip(x, draw), draw)
    x = torch.where(draw.sharpen.view(-1, 1, 1, 1), adjust_sharpness(x, SHARPNESS_FACTOR), x)
    return gaussian_blur(x, draw.sigma)


class RandomBatchAugment(nn.Module):
    """`augment` with fresh draws from torch's global generator (seeded per epoch by the training loop) on
    every call; a single (C, H, W) image is treated as a batch of one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x if x.dim() == 4 else x.unsqueeze(0)
        out = augment(batch, AugmentDraw.sample(batch.shape[0]))
        return out if x.dim() == 4 else out.squeeze(0)
