"""Per-image test predictions and the paired comparison of two networks on them.

The evaluate stage stores each network's predictions with its MLflow run (`predictions/<kind>.csv`: one
row per test image, its id in the split, the true and the predicted class), so that any two networks, or
two registered versions, tested on the same split can be compared image by image later (`hdkd promote`).
Paired on the same images, a difference has a far narrower interval than two intervals side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hdkd.errors import HDKDError
from hdkd.evaluation.stats import accuracy, macro_f1_over, mcnemar, paired_difference_ci

PREDICTIONS_PATH = "predictions"  # the folder of the evaluate run's artifacts that holds <kind>.csv
COLUMNS = ["image", "label", "predicted"]


class UnpairedError(HDKDError, ValueError):
    """Two sets of predictions that are not on the same test images, so they cannot be paired."""


def write_predictions(
    path: Path, images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]
) -> None:
    """One row per test image: its id in the split (the manifest path), the true and the predicted class."""
    names = np.asarray(classes)
    pd.DataFrame({"image": images, "label": names[labels], "predicted": names[predicted]}).to_csv(path, index=False)


def read_predictions(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if missing := [column for column in COLUMNS if column not in table.columns]:
        raise UnpairedError(f"{path}: no column {', '.join(missing)}; not a predictions file of the evaluate stage")
    return table[COLUMNS]


def pair(
    challenger: pd.DataFrame, champion: pd.DataFrame, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, challenger's and champion's predictions as class indices, image by image.

    Raises UnpairedError, saying why, unless both hold the same images with the same labels and classes."""
    for table in (challenger, champion):
        if table["image"].duplicated().any():
            raise UnpairedError("a predictions file lists a test image twice")
    only_challenger = len(set(challenger["image"]) - set(champion["image"]))
    only_champion = len(set(champion["image"]) - set(challenger["image"]))
    if only_challenger or only_champion:
        raise UnpairedError(
            f"they were tested on other images ({only_challenger} test images only the challenger was tested on, "
            f"{only_champion} only the champion)"
        )
    both = challenger.merge(champion, on="image", suffixes=("", "_champion"))
    if relabelled := int((both["label"] != both["label_champion"]).sum()):
        raise UnpairedError(f"{relabelled} test images carry another label in each")
    index = {name: position for position, name in enumerate(classes)}
    if unknown := sorted(set(both[["label", "predicted", "predicted_champion"]].to_numpy().ravel()) - index.keys()):
        raise UnpairedError(f"the predictions name classes {unknown} outside the version's classes {list(classes)}")
    as_index = np.vectorize(index.__getitem__, otypes=[np.int64])
    return as_index(both["label"]), as_index(both["predicted"]), as_index(both["predicted_champion"])


def compare_paired(
    labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray, num_classes: int, seed: int
) -> dict[str, Any]:
    """Network a against b on the same test images: paired bootstrap intervals of the macro-F1 and accuracy
    differences (a - b) and McNemar's exact test."""
    return {
        "test_images": len(labels),
        "macro_f1_difference": paired_difference_ci(
            labels, predicted_a, predicted_b, macro_f1_over(num_classes), seed
        ).as_dict(),
        "accuracy_difference": paired_difference_ci(labels, predicted_a, predicted_b, accuracy, seed).as_dict(),
        "mcnemar": mcnemar(labels, predicted_a, predicted_b).as_dict(),
    }
