"""The batched augmentation against torchvision's functional transforms, image by image, with the same draws."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from hdkd.data.augment import (
    AugmentDraw,
    adjust_brightness,
    adjust_contrast,
    adjust_sharpness,
    augment,
    color_jitter,
    gaussian_blur,
    rotate_and_flip,
)

N = 12


@pytest.fixture
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(N, 3, 20, 20, generator=generator)


@pytest.fixture
def draw() -> AugmentDraw:
    return AugmentDraw.sample(N, torch.Generator().manual_seed(1))


def reference(image: torch.Tensor, draw: AugmentDraw, i: int) -> torch.Tensor:
    """torchvision's pipeline (MODEL_SPEC order) for image `i` with the draws of `draw`."""
    out = TF.rotate(image, float(draw.degrees[i]), interpolation=InterpolationMode.NEAREST)
    if draw.hflip[i]:
        out = TF.horizontal_flip(out)
    if draw.vflip[i]:
        out = TF.vertical_flip(out)
    brightness, contrast = float(draw.brightness[i]), float(draw.contrast[i])
    if draw.contrast_first[i]:
        out = TF.adjust_brightness(TF.adjust_contrast(out, contrast), brightness)
    else:
        out = TF.adjust_contrast(TF.adjust_brightness(out, brightness), contrast)
    if draw.sharpen[i]:
        out = TF.adjust_sharpness(out, 2.0)
    sigma = float(draw.sigma[i])
    return TF.gaussian_blur(out, [3, 3], [sigma, sigma])


def test_draws_cover_every_branch_and_the_spec_ranges(draw):
    big = AugmentDraw.sample(2000, torch.Generator().manual_seed(2))
    assert big.degrees.min() < -170 and big.degrees.max() > 170 and big.degrees.abs().max() <= 180
    assert big.brightness.min() >= 0.7 and big.brightness.max() <= 1.3
    assert big.contrast.min() >= 0.7 and big.contrast.max() <= 1.3
    assert big.sigma.min() >= 0.1 and big.sigma.max() <= 2.0
    for coin in (big.hflip, big.vflip, big.contrast_first, big.sharpen):
        assert 0.45 < coin.float().mean() < 0.55
    assert draw.hflip.any() and (~draw.hflip).any() and draw.sharpen.any() and (~draw.sharpen).any()


@pytest.mark.parametrize("degrees", [0.0, 90.0, -90.0, 180.0, 33.0])
def test_rotation_matches_torchvision(images, degrees):
    draw = dataclasses.replace(
        AugmentDraw.sample(N), degrees=torch.full((N,), degrees), hflip=torch.zeros(N, dtype=torch.bool)
    )
    draw = dataclasses.replace(draw, vflip=torch.zeros(N, dtype=torch.bool))
    ours = rotate_and_flip(images, draw)
    theirs = torch.stack([TF.rotate(image, degrees, interpolation=InterpolationMode.NEAREST) for image in images])
    same = (ours - theirs).abs().amax(1) < 1e-6  # per pixel, all channels
    # Nearest neighbour: a pixel whose source lies on a rounding boundary may take the neighbour (odd angles).
    assert same.float().mean() > (0.999 if degrees % 90 == 0 else 0.97)


def test_each_adjustment_matches_torchvision(images, draw):
    for i, image in enumerate(images):
        batch = image[None]
        factor = draw.brightness[i : i + 1]
        torch.testing.assert_close(adjust_brightness(batch, factor)[0], TF.adjust_brightness(image, float(factor)))
        factor = draw.contrast[i : i + 1]
        torch.testing.assert_close(adjust_contrast(batch, factor)[0], TF.adjust_contrast(image, float(factor)))
        torch.testing.assert_close(adjust_sharpness(batch, 2.0)[0], TF.adjust_sharpness(image, 2.0))
        sigma = float(draw.sigma[i])
        torch.testing.assert_close(
            gaussian_blur(batch, draw.sigma[i : i + 1])[0], TF.gaussian_blur(image, [3, 3], [sigma, sigma])
        )


def test_color_jitter_keeps_each_image_order(images, draw):
    ours = color_jitter(images, draw)
    for i, image in enumerate(images):
        b, c = float(draw.brightness[i]), float(draw.contrast[i])
        if draw.contrast_first[i]:
            expected = TF.adjust_brightness(TF.adjust_contrast(image, c), b)
        else:
            expected = TF.adjust_contrast(TF.adjust_brightness(image, b), c)
        torch.testing.assert_close(ours[i], expected)


def test_whole_augmentation_matches_torchvision_image_by_image(images, draw):
    ours = augment(images, draw)
    assert ours.shape == images.shape and ours.dtype == images.dtype
    for i, image in enumerate(images):
        close = (ours[i] - reference(image, draw, i)).abs() < 1e-5
        assert close.float().mean() > 0.99, i  # nearest-neighbour rounding at odd angles, then blurred


def test_draws_are_per_image_and_seeded():
    first = AugmentDraw.sample(64, torch.Generator().manual_seed(3))
    again = AugmentDraw.sample(64, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(dataclasses.astuple(first), dataclasses.astuple(again), strict=True))
    assert len(torch.unique(first.degrees)) == 64
