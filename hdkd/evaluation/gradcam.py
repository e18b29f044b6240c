"""Grad-CAM for the evaluate stage: which test images to explain, and picture | overlay PNGs of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hdkd.data.loading import SplitArrays, eval_transform
from hdkd.evaluation import plots

GRADCAM_MIN_SIZE = 224  # overlays are scaled up to this: a 32-pixel picture is unreadable as is


def gradcam_picks(labels: np.ndarray, count: int) -> list[int]:
    """Test-image indices covering the classes first: each class's first image, then each one's second, ..."""
    seen: dict[int, int] = {}
    rank = []
    for value in labels.tolist():
        rank.append(seen.get(value, 0))
        seen[value] = rank[-1] + 1
    order = np.lexsort((labels, np.asarray(rank)))  # by rank within the class, then by class
    return sorted(order[:count].tolist())


@dataclass(frozen=True)
class Pictures:
    """Some test images: their indices and labels, the model inputs, and float HWC in [0, 1] to draw on."""

    indices: list[int]
    labels: list[int]
    inputs: torch.Tensor
    pictures: np.ndarray


def pictures(split: SplitArrays, indices: Sequence[int], image_size: int) -> Pictures:
    chw = torch.from_numpy(split.images[list(indices)]).permute(0, 3, 1, 2)
    inputs = eval_transform(image_size)(chw)
    pictures = F.interpolate(chw.float() / 255, size=(image_size, image_size), mode="bilinear", antialias=True)
    return Pictures(
        list(indices),
        split.labels[list(indices)].tolist(),
        inputs,
        pictures.clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float32),
    )


def write_gradcam(name: str, model: nn.Module, picks: Pictures, classes: Sequence[str], folder: Path) -> list[dict]:
    """Picture | overlay PNGs; the explained class is the one the model predicts for that image."""
    last_stage3_block = list(model.get_submodule("stage3").children())[-1]
    overlays, predicted = plots.gradcam_overlays(model, last_stage3_block, picks.inputs, picks.pictures)
    size = max(GRADCAM_MIN_SIZE, picks.pictures.shape[1])
    written = []
    for i, (picture, overlay) in enumerate(zip(picks.pictures, overlays, strict=True)):
        file = folder / f"{name}_{i}.png"
        plots.side_by_side((picture * 255).round().astype(np.uint8), overlay, size).save(file)
        written.append(
            {
                "file": f"gradcam/{file.name}",
                "test_index": picks.indices[i],
                "actual": classes[picks.labels[i]],
                "predicted": classes[int(predicted[i])],
            }
        )
    return written
