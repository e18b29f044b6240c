"""Split: lesions never span two splits, given splits are kept, caches match the manifest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hdkd.data import DataError
from hdkd.data.arrays import load_split
from hdkd.data.ingest import ingest
from hdkd.data.split import assign_splits, split
from tests import data_layouts as layouts


@pytest.fixture(scope="module")
def ham_raw(tmp_path_factory):
    root = layouts.ham10000(tmp_path_factory.mktemp("ham"), lesions_per_class=9)
    raw = tmp_path_factory.mktemp("out") / "raw"
    ingest(layouts.params("ham10000", root), raw)
    return raw


def test_ham_split_never_puts_a_lesion_in_two_splits(ham_raw, tmp_path, capsys):
    manifest = split(layouts.params("ham10000", ham_raw), ham_raw, tmp_path / "split")
    assert manifest.groupby("group")["split"].nunique().max() == 1
    assert manifest.groupby("group").size().max() > 1  # the check above is not vacuous
    counts = manifest["split"].value_counts()
    assert 0.08 < counts["test"] / len(manifest) < 0.25 and 0.08 < counts["val"] / len(manifest) < 0.25
    table = pd.crosstab(manifest["label"], manifest["split"])
    assert (table["train"] > 0).all() and (table["val"] > 0).all() and (table["test"] > 0).all()
    assert "groups kept whole" in capsys.readouterr().out


def test_split_is_seeded(ham_raw, tmp_path):
    first = split(layouts.params("ham10000", ham_raw), ham_raw, tmp_path / "a")["split"]
    again = split(layouts.params("ham10000", ham_raw), ham_raw, tmp_path / "b")["split"]
    other = split(layouts.params("ham10000", ham_raw).model_copy(update={"seed": 7}), ham_raw, tmp_path / "c")
    assert first.equals(again) and not first.equals(other["split"])


def test_caches_match_manifest(ham_raw, tmp_path):
    out = tmp_path / "split"
    manifest = split(layouts.params("ham10000", ham_raw), ham_raw, out)
    assert (out / "manifest.csv").is_file()
    classes = sorted(layouts.HAM_DX)
    for name in ("train", "val", "test"):
        arrays = load_split(out / f"{name}.npz")
        rows = manifest[manifest["split"] == name]
        assert arrays.classes == classes
        assert arrays.images.dtype == np.uint8 and arrays.images.shape == (len(rows), 16, 16, 3)
        assert arrays.labels.dtype == np.int64
        assert [classes[i] for i in arrays.labels] == rows["label"].tolist()
        with np.load(out / f"{name}.npz", allow_pickle=False) as npz:
            assert npz["ids"].tolist() == rows["path"].tolist()
        first = np.asarray(Image.open(ham_raw / rows["path"].iloc[0]))
        assert (arrays.images[0] == first).all()


def test_brain_keeps_testing_as_test(tmp_path):
    root = layouts.brain(tmp_path / "brain", train_per_class=10, test_per_class=3)
    ingest(layouts.params("brain_tumor_mri", root), tmp_path / "raw")
    manifest = split(layouts.params("brain_tumor_mri", root), tmp_path / "raw", tmp_path / "split")
    from_testing = manifest["source_file"].str.startswith("Testing/")
    assert (manifest.loc[from_testing, "split"] == "test").all()
    assert (manifest.loc[~from_testing, "split"] != "test").all()
    assert (manifest.loc[~from_testing, "split"] == "val").sum() > 0  # val carved from Training


def test_medmnist_keeps_all_three_splits(tmp_path):
    npz = layouts.medmnist(tmp_path / "set.npz")
    ingest(layouts.params("medmnist", npz), tmp_path / "raw")
    manifest = split(layouts.params("medmnist", npz), tmp_path / "raw", tmp_path / "split")
    assert (manifest["split"] == manifest["given_split"]).all()
    assert len(load_split(tmp_path / "split" / "val.npz")) == 8


def test_too_few_groups_is_a_clear_error():
    manifest = pd.DataFrame({"label": ["a", "b"] * 3, "group": ["g1", "g2", "g3"] * 2, "given_split": ""})
    with pytest.raises(DataError, match=r"cannot carve a test split of 15%: only 3 image groups"):
        assign_splits(manifest, 0.15, 0.15, seed=0)


def test_single_image_class_stays_in_train(tmp_path):
    root = layouts.imagefolder(tmp_path / "src", {"big": 30, "tiny": 1})
    ingest(layouts.params("imagefolder", root), tmp_path / "raw")
    manifest = split(layouts.params("imagefolder", root), tmp_path / "raw", tmp_path / "split")
    assert manifest.loc[manifest["label"] == "tiny", "split"].tolist() == ["train"]


def test_class_without_train_images_is_a_clear_error(tmp_path):
    npz = layouts.medmnist(tmp_path / "set.npz", classes=3)
    with np.load(npz) as data:
        arrays = dict(data)
    arrays["test_labels"][0] = 3  # class_3 exists only in the given test split
    np.savez(npz, **arrays)
    ingest(layouts.params("medmnist", npz), tmp_path / "raw")
    with pytest.raises(DataError, match=r"class 'class_3': none of its 1 images landed in train \(0 val, 1 test"):
        split(layouts.params("medmnist", npz), tmp_path / "raw", tmp_path / "split")
    assert not (tmp_path / "split").exists()
