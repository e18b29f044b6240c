"""Figures of the evaluate stage: PNG twins of the DVC plot data, and Grad-CAM overlays.

Figures are built with `matplotlib.figure.Figure` directly, never pyplot: no global backend or
figure registry, so nothing leaks between calls and no display is ever needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from hdkd.files import save_figure
from hdkd.kinds import label

DPI = 100


def _save_png(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    save_figure(fig, path, DPI)


def confusion_png(path: Path, matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> None:
    """Counts in the cells; colour is the row share (recall), so small classes stay readable."""
    counts = np.asarray(matrix)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = 2.5 + 0.6 * len(classes)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the actual class")
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    _save_png(fig, path)


def roc_png(path: Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> None:
    """One-vs-rest ROC, one line per class: `curves[class] = (fpr, tpr, auc)`."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    _save_png(fig, path)


def reliability_png(path: Path, curve: Mapping[str, Sequence[float]], ece: float, bins: int, title: str) -> None:
    """Accuracy per confidence bin against the diagonal of perfect calibration, bin sizes below."""
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = 1.0 / bins
    top.bar(curve["confidence"], curve["accuracy"], width=width, edgecolor="black", alpha=0.7, label="accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title} (ECE {ece:.3f})")
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(curve["confidence"], curve["count"], width=width, color="grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("images")
    _save_png(fig, path)


def learning_curves_png(path: Path, histories: Mapping[str, Sequence[Mapping[str, str]]]) -> None:
    """The training stages' per-epoch CSV rows (by network label), one panel per metric, one line per network.

    HDKD's training loss (cross-entropy + distillation + lambda * feature MSE) gets a panel of its own: on the
    cross-entropy's axis it is several times larger and flattens the other networks' curves."""
    hdkd = label("distilled")
    others = [name for name in histories if name != hdkd]
    wanted = [
        ("train loss (cross-entropy)", "train_loss", others),
        ("HDKD train loss (CE + KD + lambda x features)", "train_loss", [hdkd]),
        ("val_accuracy", "val_accuracy", list(histories)),
        ("val_macro_f1", "val_macro_f1", list(histories)),
    ]
    panels = [
        (title, column, shown)
        for title, column, names in wanted
        if (shown := [name for name in names if name in histories and any(row.get(column) for row in histories[name])])
    ]
    fig = Figure(figsize=(4.5 * len(panels), 4))
    for ax, (title, column, names) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for name in names:
            points = [(int(row["epoch"]), float(row[column])) for row in histories[name] if row.get(column)]
            ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize="small")
    _save_png(fig, path)


def gradcam_overlays(
    model: nn.Module, target_layer: nn.Module, inputs: torch.Tensor, images: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of the predicted class on `target_layer`, blended over `images`.

    `inputs` is the normalised batch the model sees; `images` the same pictures as float HWC in
    [0, 1] at the input size. Returns the uint8 overlays and the predicted class indices.
    """
    with GradCAM(model=model, target_layers=[target_layer]) as cam:
        masks = cam(input_tensor=inputs, targets=None)  # None: explain the predicted class
        predicted = cam.outputs.argmax(dim=1).cpu().numpy()
    overlays = np.stack(
        [show_cam_on_image(image, mask, use_rgb=True) for image, mask in zip(images, masks, strict=True)]
    )
    return overlays, predicted


def side_by_side(image: np.ndarray, overlay: np.ndarray, size: int) -> Image.Image:
    """The picture and its overlay next to each other, each scaled to `size` pixels square."""
    panel = Image.new("RGB", (2 * size, size))
    for i, array in enumerate((image, overlay)):
        panel.paste(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC), (i * size, 0))
    return panel
