"""Ingest: every source layout to one manifest schema, image modes, broken inputs, atomic output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hdkd.data import MANIFEST_COLUMNS, DataError
from hdkd.data.ingest import ingest, read_classes, read_manifest
from hdkd.files import sha256_file
from tests import data_layouts as layouts


def _check_raw(out, n_images: int) -> pd.DataFrame:
    """The on-disk contract of data/raw, whatever the source."""
    manifest = read_manifest(out / "manifest.csv")
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert len(manifest) == n_images
    assert manifest["sha256"].is_unique and manifest["path"].is_unique
    for row in manifest.sample(min(5, len(manifest)), random_state=0).itertuples():
        file = out / row.path
        assert row.path.startswith(f"images/{row.label}/") and file.suffix == ".png"
        assert sha256_file(file) == row.sha256
        with Image.open(file) as image:
            assert image.mode == "RGB" and image.size == (16, 16)
            pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3)
        assert np.allclose(pixels.mean(0), [row.mean_r, row.mean_g, row.mean_b], atol=1e-3)
        assert np.allclose(pixels.std(0), [row.std_r, row.std_g, row.std_b], atol=1e-3)
    assert not list(out.parent.glob(".*.tmp")), "temporary folder left behind"
    return manifest


def test_imagefolder(tmp_path, capsys):
    root = layouts.imagefolder(tmp_path / "src", {"cat": 4, "dog": 3})
    (root / "dog" / "notes.txt").write_text("not an image, not an image suffix: ignored")
    out = tmp_path / "raw"
    ingest(layouts.params("imagefolder", root), out)
    manifest = _check_raw(out, 7)
    assert sorted(manifest["label"].unique()) == ["cat", "dog"] == read_classes(out)
    assert (manifest["given_split"] == "").all() and manifest["group"].is_unique
    assert set(manifest["width"]) == {24}
    assert "images/cat/nested/img_2.png" in set(manifest["path"])  # depth below the class folder kept
    assert "ingest: 7 images, 2 classes, 0 skipped" in capsys.readouterr().out


def test_ham10000_groups_and_labels(tmp_path):
    root = layouts.ham10000(tmp_path / "ham", lesions_per_class=3)
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    out = tmp_path / "raw"
    ingest(layouts.params("ham10000", root), out)
    manifest = _check_raw(out, len(meta))
    by_image = manifest.assign(image_id=manifest["path"].str.extract(r"/(ISIC_\d+)\.png$")[0]).set_index("image_id")
    expected = meta.set_index("image_id")
    assert (by_image.loc[expected.index, "group"] == expected["lesion_id"]).all()
    assert (by_image.loc[expected.index, "label"] == expected["dx"]).all()
    assert read_classes(out) == list(layouts.HAM_DX)
    assert manifest["group"].nunique() < len(manifest)  # some lesions have several images


def test_brain_tumor_mri(tmp_path):
    root = layouts.brain(tmp_path / "brain")
    out = tmp_path / "raw"
    ingest(layouts.params("brain_tumor_mri", root), out)
    manifest = _check_raw(out, 4 * 7)
    assert sorted(manifest["label"].unique()) == ["glioma", "meningioma", "notumor", "pituitary"]
    assert manifest["given_split"].value_counts().to_dict() == {"train": 20, "test": 8}
    assert (manifest.loc[manifest["source_file"].str.startswith("Testing/"), "given_split"] == "test").all()


@pytest.mark.parametrize("rgb", [False, True], ids=["grey_n1_labels", "rgb_flat_labels"])
def test_medmnist(tmp_path, rgb):
    npz = layouts.medmnist(tmp_path / "set.npz", rgb=rgb)
    out = tmp_path / "raw"
    ingest(layouts.params("medmnist", npz), out)
    manifest = _check_raw(out, 36)
    assert manifest["given_split"].value_counts().to_dict() == {"train": 20, "val": 8, "test": 8}
    assert read_classes(out) == ["class_0", "class_1", "class_2"]
    assert set(manifest["width"]) == {28}
    row = manifest[manifest["source_file"] == "set.npz:train[4]"].iloc[0]
    assert row["label"] == "class_1"  # 4 % 3


def test_synthetic(tmp_path):
    out = tmp_path / "raw"
    ingest(layouts.params(synthetic_images=60), out)
    manifest = _check_raw(out, 60)
    assert read_classes(out) == list(layouts.HAM_DX)
    assert set(manifest["label"]) == set(layouts.HAM_DX)
    assert manifest["group"].nunique() < 60


def test_image_modes_converted(tmp_path):
    root = tmp_path / "src"
    (root / "modes").mkdir(parents=True)
    Image.new("L", (20, 20), 77).save(root / "modes" / "grey.png")
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200  # colour under fully transparent pixels must not leak through
    Image.fromarray(rgba, "RGBA").save(root / "modes" / "rgba.png")
    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 10, 120, 230] + [0] * 762)
    palette.save(root / "modes" / "palette.bmp")
    deep = np.tile(np.linspace(1000, 4000, 20), (20, 1)).astype(np.uint16)
    Image.fromarray(deep).save(root / "modes" / "deep16.tif")
    with Image.open(root / "modes" / "deep16.tif") as check:
        assert check.mode.startswith("I;16")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(root / "modes" / "photo.jpg", quality=100)
    (root / "other").mkdir()  # a data set needs two classes
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "other" / "plain.png")

    out = tmp_path / "raw"
    ingest(layouts.params("imagefolder", root, image_size=20), out)

    def png(name: str) -> np.ndarray:
        return np.asarray(Image.open(out / "images" / "modes" / f"{name}.png"))

    assert (png("grey") == 77).all()
    assert (png("rgba") == 0).all()
    assert (png("palette") == [10, 120, 230]).all()
    deep_rgb = png("deep16")
    assert deep_rgb.shape == (20, 20, 3) and (deep_rgb[..., 0] == deep_rgb[..., 2]).all()
    assert deep_rgb[0, 0, 0] == 0 and deep_rgb[0, -1, 0] == 255  # stretched, not clipped to white
    assert np.abs(png("photo").astype(int) - [1, 2, 3]).max() <= 2


def _broken(root, kind: str):
    """One class folder of good images plus one broken file of `kind`; returns the bad path."""
    layouts.imagefolder(root, {"good": 3, "other": 3})
    folder = root / "other"
    if kind == "truncated_jpeg":
        bad = layouts.write_image(folder / "cut.jpg", 99, size=64)
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "zero_bytes":
        bad = folder / "empty.png"
        bad.write_bytes(b"")
    else:
        bad = folder / "letter.png"
        bad.write_text("Dear reviewer, this is not a PNG.\n")
    return bad


BROKEN = {
    "truncated_jpeg": "corrupt or truncated",
    "zero_bytes": "empty file (0 bytes)",
    "text_as_png": "not an image file",
}


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_file_stops_with_one_message_and_keeps_old_output(tmp_path, kind):
    bad = _broken(tmp_path / "src", kind)
    out = tmp_path / "raw"
    (out / "images").mkdir(parents=True)
    (out / "manifest.csv").write_text("previous run\n")
    with pytest.raises(DataError) as error:
        ingest(layouts.params("imagefolder", tmp_path / "src"), out)
    message = str(error.value)
    assert str(bad) in message and BROKEN[kind] in message and "on_bad_image: skip" in message
    assert "\n" not in message
    assert (out / "manifest.csv").read_text() == "previous run\n"
    assert not list(tmp_path.glob(".raw*")), "temporary folder left behind"


def test_skip_lists_every_bad_file(tmp_path, capsys):
    root = tmp_path / "src"
    bads = [_broken(root, kind) for kind in BROKEN]
    out = tmp_path / "raw"
    ingest(layouts.params("imagefolder", root, on_bad_image="skip"), out)
    _check_raw(out, 6)
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(skipped["source_file"]) == sorted(b.relative_to(root).as_posix() for b in bads)
    assert skipped["reason"].str.len().min() > 0
    assert f"6 images, 2 classes, 3 skipped (listed in {out / 'skipped.csv'})" in capsys.readouterr().out


def test_class_of_only_bad_files_is_an_error_even_when_skipping(tmp_path):
    root = layouts.imagefolder(tmp_path / "src", {"good": 2})
    (root / "ghost").mkdir()
    (root / "ghost" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"class 'ghost': none of its 1 image\(s\) could be read"):
        ingest(layouts.params("imagefolder", root, on_bad_image="skip"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_empty_class_folder(tmp_path):
    root = layouts.imagefolder(tmp_path / "src", {"good": 2})
    (root / "empty_class").mkdir()
    (root / "empty_class" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty_class: class folder 'empty_class' has no images") as error:
        ingest(layouts.params("imagefolder", root), tmp_path / "raw")
    assert str(root / "empty_class") in str(error.value)
    assert not (tmp_path / "raw").exists()


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: not found \(data.path for data.source 'imagefolder'\)"):
        ingest(layouts.params("imagefolder", tmp_path / "nowhere"), tmp_path / "raw")


def test_brain_without_testing_folder(tmp_path):
    root = layouts.brain(tmp_path / "brain")
    for file in (root / "Testing").rglob("*.jpg"):
        file.unlink()
    for folder in sorted((root / "Testing").iterdir()):
        folder.rmdir()
    (root / "Testing").rmdir()
    with pytest.raises(DataError, match=r"Testing: not found; the brain_tumor_mri layout is"):
        ingest(layouts.params("brain_tumor_mri", root), tmp_path / "raw")


def test_ham_csv_missing_column(tmp_path):
    root = layouts.ham10000(tmp_path / "ham", lesions_per_class=1)
    csv = root / "HAM10000_metadata.csv"
    pd.read_csv(csv).drop(columns="lesion_id").to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"HAM10000_metadata.csv: missing column\(s\) lesion_id \(found: image_id, dx"):
        ingest(layouts.params("ham10000", root), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_ham_row_without_image(tmp_path):
    root = layouts.ham10000(tmp_path / "ham", lesions_per_class=2)
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    gone = meta["image_id"].iloc[4]
    next(root.rglob(f"{gone}.jpg")).unlink()
    with pytest.raises(DataError) as error:
        ingest(layouts.params("ham10000", root), tmp_path / "raw")
    assert f"HAM10000_metadata.csv line 6: {gone}: listed in the metadata but no image file" in str(error.value)
    assert "1 of" in str(error.value) and not (tmp_path / "raw").exists()

    ingest(layouts.params("ham10000", root, on_bad_image="skip"), tmp_path / "raw")
    skipped = pd.read_csv(tmp_path / "raw" / "skipped.csv")
    assert skipped["source_file"].tolist() == [f"HAM10000_metadata.csv line 6: {gone}"]
    assert len(read_manifest(tmp_path / "raw" / "manifest.csv")) == len(meta) - 1


def test_medmnist_missing_array(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), np.uint8), train_labels=np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"bad.npz: missing array\(s\) val_images, val_labels, test_images"):
        ingest(layouts.params("medmnist", path), tmp_path / "raw")
