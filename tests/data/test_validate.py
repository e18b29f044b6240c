"""The real Great Expectations suite: passes a good manifest, fails bad ones with GX's own summary."""

from __future__ import annotations

import json
import shutil

import pytest

from hdkd.data import DataError
from hdkd.data.ingest import ingest, read_manifest
from hdkd.data.validate import validate
from tests import data_layouts as layouts


@pytest.fixture(scope="module")
def good_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    layouts.imagefolder(root, {"cat": 4, "dog": 3, "eel": 3})
    raw = tmp_path_factory.mktemp("ok") / "raw"
    ingest(layouts.params("imagefolder", root), raw)
    return raw


def _tampered(good_raw, tmp_path, edit) -> object:
    raw = tmp_path / "raw"
    shutil.copytree(good_raw, raw)
    manifest = read_manifest(raw / "manifest.csv")
    edit(manifest)
    manifest.to_csv(raw / "manifest.csv", index=False)
    return raw


def test_good_manifest_passes_and_reports(good_raw, tmp_path, capsys):
    summary = validate(layouts.params(min_per_class=3), good_raw, tmp_path / "reports")
    assert summary["success"] and summary["failed_expectations"] == 0
    assert summary["per_class"] == {"cat": 4, "dog": 3, "eel": 3}
    saved = json.loads((tmp_path / "reports" / "stages" / "validate.json").read_text())
    assert saved == summary
    index = tmp_path / "reports" / "data_docs" / "index.html"
    assert index.is_file() and "raw_manifest" in index.read_text()
    assert list((tmp_path / "reports" / "data_docs" / "validations").rglob("*.html"))
    page = (tmp_path / "reports" / "data_docs" / "validation.html").read_text()
    assert "Data validation passed" in page and page.count(">passed<") == summary["expectations"]
    assert "<script" not in page and "http" not in page  # readable offline
    assert "validation.html" in capsys.readouterr().out
    assert not (tmp_path / "gx").exists()


def test_duplicate_hash_and_unknown_label_fail(good_raw, tmp_path):
    def edit(m):
        m.loc[1, "sha256"] = m.loc[0, "sha256"]
        m.loc[5, "label"] = "zebra"

    raw = _tampered(good_raw, tmp_path, edit)
    with pytest.raises(DataError) as error:
        validate(layouts.params(), raw, tmp_path / "reports")
    message = str(error.value)
    assert "2 of" in message and "expectations failed" in message
    assert 'expect_column_values_to_be_unique [no exact duplicate images]: kwargs={"column": "sha256"}' in message
    assert "expect_column_values_to_be_in_set" in message and '"zebra"' in message
    first = read_manifest(raw / "manifest.csv")["path"]
    assert f"identical files: {first[0]} = {first[1]}" in message
    saved = json.loads((tmp_path / "reports" / "stages" / "validate.json").read_text())
    assert saved["success"] is False and saved["failed_expectations"] == 2
    assert (tmp_path / "reports" / "data_docs" / "index.html").is_file()
    page = (tmp_path / "reports" / "data_docs" / "validation.html").read_text()
    assert "Data validation FAILED" in page and page.count(">FAILED<") == 2


def test_class_with_a_single_image_fails_naming_the_class(tmp_path):
    root = layouts.imagefolder(tmp_path / "src", {"cat": 4, "dog": 1, "eel": 3})
    ingest(layouts.params("imagefolder", root), tmp_path / "raw")  # ingest accepts it: counts are validate's job
    with pytest.raises(DataError) as error:
        validate(layouts.params(min_per_class=2), tmp_path / "raw", tmp_path / "reports")
    message = str(error.value)
    assert "1 of" in message and "at least 2 images of class 'dog' (data.min_per_class)" in message
    assert '"observed_value": 1' in message and "'cat'" not in message


def test_blank_image_and_bad_sizes_fail(good_raw, tmp_path):
    def edit(m):
        m.loc[2, ["std_r", "std_g", "std_b"]] = 0.0
        m.loc[3, "width"] = 0

    raw = _tampered(good_raw, tmp_path, edit)
    with pytest.raises(DataError) as error:
        validate(layouts.params(), raw, tmp_path / "reports")
    assert "no blank (single-colour) images" in str(error.value)
    assert 'expect_column_values_to_be_between: kwargs={"column": "width"' in str(error.value)


def test_missing_column_fails(good_raw, tmp_path):
    raw = _tampered(good_raw, tmp_path, lambda m: m.drop(columns="group", inplace=True))
    with pytest.raises(DataError, match=r'expect_column_to_exist: kwargs=\{"column": "group"\}'):
        validate(layouts.params(), raw, tmp_path / "reports")
