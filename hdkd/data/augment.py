"""The HDKD paper's training augmentation (MODEL_SPEC), drawn per image and applied to a whole batch at once.

Per image it draws what torchvision's transforms draw: a rotation angle in [-180, 180] degrees (nearest
neighbour, zeros outside), a horizontal and a vertical flip (each with probability 1/2), brightness and contrast
factors in [0.7, 1.3] in a random order (`ColorJitter`), a sharpness factor of 2 with probability 1/2
(`RandomAdjustSharpness`) and a 3x3 Gaussian blur of sigma in [0.1, 2] (`GaussianBlur`). Each operation is
torchvision's formula, checked image by image against `torchvision.transforms.v2.functional` in
tests/data/test_augment.py, but on the batch: one `grid_sample`, a few blends and two convolutions.

Why not torchvision's transforms or kornia: a transform call costs ~0.1 ms of Python whatever the image size, so
torchvision's per-image pipeline costs more than the student's training step at the tiny preset. Per batch of 32
on one thread of an idle 2-core AVX-512 EPYC (benchmarks/augment.py): 32 px 24.8 ms (torchvision), 6.6 ms (kornia),
2.5 ms (this); 64 px 34.6 / 14.0 / 6.8 ms; 224 px 153 / 334 / 99 ms.
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
    return x.mul(_per_image(factor, x)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean grey level; the mean of the luma is the luma of the channel means (both linear)."""
    channel_means = x.mean((2, 3))
    mean = channel_means @ x.new_tensor(_GRAY) if x.shape[1] == 3 else channel_means[:, 0]
    mean = mean.view(-1, 1, 1, 1)
    return x.sub(mean).mul_(_per_image(factor, x)).add_(mean).clamp_(0, 1)


def color_jitter(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    out = torch.empty_like(x)
    for contrast_first in (False, True):
        pick = draw.contrast_first == contrast_first
        part, brightness, contrast = x[pick], draw.brightness[pick], draw.contrast[pick]
        if contrast_first:
            out[pick] = adjust_brightness(adjust_contrast(part, contrast), brightness)
        else:
            out[pick] = adjust_contrast(adjust_brightness(part, brightness), contrast)
    return out


def _per_plane_conv(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each (image, channel) plane of `x` with its own kernel, `kernels` (N * C, 1, kh, kw), as one
    depthwise convolution (no padding): oneDNN's fast path (11 ms for 32x3x224x224, 3x3, one thread, against
    115 ms as a 3-channel grouped convolution of the batch and 180 ms as a one-channel one)."""
    n, channels, height, width = x.shape
    out = F.conv2d(x.reshape(1, n * channels, height, width), kernels, groups=n * channels)
    return out.view(n, channels, *out.shape[2:])


def adjust_sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's: blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, the one-pixel
    border left as it is."""
    smoothing = x.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13
    smooth = _per_plane_conv(x, smoothing.expand(x.shape[0] * x.shape[1], 1, 3, 3))
    sharpened = x.clone()
    sharpened[..., 1:-1, 1:-1] = smooth.lerp_(x[..., 1:-1, 1:-1], factor).clamp_(0, 1)
    return sharpened


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian blur, one sigma per image, reflected borders."""
    n, channels = x.shape[:2]
    taps = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma.to(x.dtype).view(n, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernels = (kernel[:, :, None] * kernel[:, None, :]).repeat_interleave(channels, 0).unsqueeze(1)
    return _per_plane_conv(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernels)


def augment(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    """The augmentation of float images in [0, 1], shape (N, C, H, W), with the given draws."""
    x = color_jitter(rotate_and_flip(x, draw), draw)
    if draw.sharpen.any():
        x[draw.sharpen] = adjust_sharpness(x[draw.sharpen], SHARPNESS_FACTOR)
    return gaussian_blur(x, draw.sigma)


class RandomBatchAugment(nn.Module):
    """`augment` with fresh draws from torch's global generator (seeded per epoch by the training loop) on
    every call; a single (C, H, W) image is treated as a batch of one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x if x.dim() == 4 else x.unsqueeze(0)
        out = augment(batch, AugmentDraw.sample(batch.shape[0]))
        return out if x.dim() == 4 else out.squeeze(0)
