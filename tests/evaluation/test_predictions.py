"""Per-image predictions: paired image by image whatever their order, and refused, with the reason, when the
two sets are not on the same test images."""

import numpy as np
import pandas as pd
import pytest

from hdkd.evaluation.predictions import UnpairedError, compare_paired, pair, read_predictions, write_predictions
from hdkd.evaluation.stats import macro_f1_over, paired_difference_ci

CLASSES = ["akiec", "bcc", "nv"]


def table(labels, predicted, images=None):
    images = images if images is not None else [f"img_{i}.png" for i in range(len(labels))]
    return pd.DataFrame(
        {"image": images, "label": [CLASSES[i] for i in labels], "predicted": [CLASSES[i] for i in predicted]}
    )


def test_written_predictions_read_back(tmp_path):
    labels, predicted = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    ids = np.array([f"images/{i}.png" for i in range(4)])
    write_predictions(tmp_path / "p.csv", ids, labels, predicted, CLASSES)
    assert read_predictions(tmp_path / "p.csv").equals(table(labels, predicted, list(ids)))


def test_pairing_follows_the_image_ids_not_the_row_order():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    a, b = rng.integers(0, 3, 40), labels.copy()
    shuffled = table(labels, b).sample(frac=1, random_state=1)
    y, pa, pb = pair(table(labels, a), shuffled, CLASSES)
    assert (y == labels).all() and (pa == a).all() and (pb == b).all()
    result = compare_paired(y, pa, pb, len(CLASSES), seed=3)
    assert result["macro_f1_difference"] == paired_difference_ci(labels, a, b, macro_f1_over(3), 3).as_dict()
    assert result["test_images"] == 40 and result["mcnemar"]["only_a_correct"] == 0


@pytest.mark.parametrize(
    ("champion", "reason"),
    [
        (table([0, 1, 2], [0, 1, 2], ["a", "b", "z"]), r"other images \(1 test images only the challenger"),
        (table([0, 1, 1], [0, 1, 2], ["a", "b", "c"]), r"1 test images carry another label"),
        (table([0, 1, 2, 2], [0, 1, 2, 2], ["a", "b", "c", "c"]), "lists a test image twice"),
    ],
)
def test_predictions_on_other_images_are_not_paired(champion, reason):
    with pytest.raises(UnpairedError, match=reason):
        pair(table([0, 1, 2], [0, 0, 0], ["a", "b", "c"]), champion, CLASSES)


def test_classes_outside_the_versions_are_not_paired():
    with pytest.raises(UnpairedError, match=r"classes \['bcc', 'nv'\] outside"):
        pair(table([0, 1, 2], [0, 1, 2]), table([0, 1, 2], [0, 1, 2]), ["akiec"])
