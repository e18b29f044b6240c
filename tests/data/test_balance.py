"""Balance: class-by-class SMOTE equals one whole-set call, reaches targets, fails clearly."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from imblearn.over_sampling import SMOTE

from hdkd.data import DataError
from hdkd.data.arrays import load_split, save_split
from hdkd.data.balance import balance, class_targets, smote_class
from tests import data_layouts as layouts


def _images(counts: list[int], size: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)  # classes interleaved, as in a real split
    images = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
    images[..., 0] = np.clip(images[..., 0].astype(int) // 4 + 60 * labels[:, None, None], 0, 255)
    return images, labels


def _split_dir(path, counts: dict[str, int], size: int = 6):
    """A data/split folder with only what balance reads: train.npz and manifest.csv."""
    images, labels = _images(list(counts.values()), size)
    classes = list(counts)
    ids = np.array([f"images/{classes[y]}/{i:04d}.png" for i, y in enumerate(labels)])
    path.mkdir(parents=True)
    save_split(path / "train.npz", images, labels, classes, ids)
    pd.DataFrame(
        {"path": ids, "label": [classes[y] for y in labels], "group": ids, "given_split": "", "split": "train"}
    ).to_csv(path / "manifest.csv", index=False)
    return path


def test_per_class_smote_is_bit_identical_to_whole_set():
    images, labels = _images([14, 6, 4, 3])
    flat = images.reshape(len(images), -1).astype(np.float32)
    targets = {1: 14, 2: 11, 3: 9}
    whole_x, whole_y = SMOTE(sampling_strategy=targets, k_neighbors=2, random_state=3).fit_resample(flat, labels)
    whole_new = np.clip(np.rint(whole_x[len(flat) :]), 0, 255).astype(np.uint8)
    whole_y = whole_y[len(flat) :]
    for cls, target in targets.items():
        mine = smote_class(images[labels == cls], target, k_neighbors=2, seed=3)
        assert mine.shape == (target - (labels == cls).sum(), 6, 6, 3) and mine.dtype == np.uint8
        assert np.array_equal(mine.reshape(len(mine), -1), whole_new[whole_y == cls])
    # Not vacuous: the samples are new images, not copies of the originals.
    assert not (mine[:, None] == images[labels == 3][None]).all(axis=(2, 3, 4)).any()


def test_uint8_wraparound_is_avoided():
    dark, bright = np.zeros((1, 2, 2, 3), np.uint8), np.full((1, 2, 2, 3), 250, np.uint8)
    new = smote_class(np.concatenate([dark, bright]), target=12, k_neighbors=1, seed=0)
    # On a segment between 0 and 250 every pixel of a sample is the same value in 0..250.
    assert new.min() >= 0 and new.max() <= 250
    assert all(len(np.unique(sample)) == 1 for sample in new)


def test_auto_targets_reach_the_largest_class_and_mark_synthetic(tmp_path, capsys):
    split_dir = _split_dir(tmp_path / "split", {"a": 12, "b": 5, "c": 3})
    manifest = balance(layouts.params(), split_dir, tmp_path / "balanced")
    out = load_split(tmp_path / "balanced" / "train.npz")
    assert np.bincount(out.labels).tolist() == [12, 12, 12]
    with np.load(tmp_path / "balanced" / "train.npz") as npz:
        synthetic, ids = npz["synthetic"], npz["ids"]
    assert synthetic.dtype == bool and synthetic.sum() == 16 and not synthetic[:20].any()
    before = load_split(split_dir / "train.npz")
    assert np.array_equal(out.images[:20], before.images)  # real images first, untouched
    assert manifest["path"].tolist() == ids.tolist()
    assert manifest["synthetic"].tolist() == synthetic.tolist()
    assert manifest.loc[manifest["synthetic"], "label"].value_counts().to_dict() == {"b": 7, "c": 9}
    saved = pd.read_csv(tmp_path / "balanced" / "manifest.csv")
    assert saved["synthetic"].sum() == 16
    assert "20 -> 36 train images (16 synthetic" in capsys.readouterr().out


def test_mapping_targets_and_lowered_k(tmp_path, caplog):
    split_dir = _split_dir(tmp_path / "split", {"a": 12, "b": 5, "c": 3})
    with caplog.at_level(logging.WARNING, logger="hdkd.data.balance"):
        balance(layouts.params(balance={"targets": {"c": 8}, "k_neighbors": 5}), split_dir, tmp_path / "out")
    assert np.bincount(load_split(tmp_path / "out" / "train.npz").labels).tolist() == [12, 5, 8]
    assert "class 'c' has only 3 train images: k_neighbors lowered from 5 to 2" in caplog.text
    assert "'b'" not in caplog.text  # untouched classes need no neighbours


def test_disabled_copies_train_unchanged(tmp_path):
    split_dir = _split_dir(tmp_path / "split", {"a": 12, "b": 5})
    balance(layouts.params(balance={"enabled": False}), split_dir, tmp_path / "out")
    before, after = load_split(split_dir / "train.npz"), load_split(tmp_path / "out" / "train.npz")
    assert np.array_equal(before.images, after.images) and np.array_equal(before.labels, after.labels)
    with np.load(tmp_path / "out" / "train.npz") as npz:
        assert not npz["synthetic"].any() and len(npz["synthetic"]) == 17


def test_single_image_class_is_a_clear_error_and_leaves_old_output(tmp_path):
    split_dir = _split_dir(tmp_path / "split", {"a": 6, "lonely": 1})
    out = tmp_path / "balanced"
    out.mkdir()
    (out / "train.npz").write_bytes(b"previous run")
    with pytest.raises(DataError, match=r"class 'lonely' has 1 train image\(s\): SMOTE needs at least 2"):
        balance(layouts.params(), split_dir, out)
    assert (out / "train.npz").read_bytes() == b"previous run"
    assert not list(tmp_path.glob(".balanced*"))


def test_bad_mapping_targets():
    counts = {"a": 10, "b": 4}
    with pytest.raises(DataError, match=r"unknown class\(es\) \['z'\]; the classes are \['a', 'b'\]"):
        class_targets(counts, {"z": 20})
    with pytest.raises(DataError, match=r"balance.targets.a = 5 is below the 10 train images of 'a'"):
        class_targets(counts, {"a": 5})
    assert class_targets(counts, {"b": 9}) == {"a": 10, "b": 9}
    assert class_targets(counts, "auto") == {"a": 10, "b": 10}
