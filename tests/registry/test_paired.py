"""`hdkd promote` pairs the challenger with the champion on the same test images, in a real MLflow store whose
evaluate runs keep real per-image prediction files: a worse challenger is refused unless forced, the verdict
is written on the version, and versions tested on other data are said to be unpairable."""

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from hdkd.config import params_from_dict
from hdkd.evaluation.predictions import PREDICTIONS_PATH, write_predictions
from hdkd.registry.paired import PARAGRAPH, with_paragraph
from hdkd.registry.promote import RegistryError, promote
from hdkd.tracking import use_store

NAME = "hdkd-student"
CLASSES = ["akiec", "bcc", "nv"]
IMAGES = 90
MANIFEST = "a" * 64


def evaluated_version(client, tmp_path, version, correct, manifest=MANIFEST):
    """A version whose evaluate run kept predictions that get the first `correct` test images right."""
    rng = np.random.default_rng(version)
    labels = np.arange(IMAGES) % len(CLASSES)
    predicted = labels.copy()
    wrong = np.arange(correct, IMAGES)
    predicted[wrong] = (labels[wrong] + rng.integers(1, len(CLASSES), len(wrong))) % len(CLASSES)
    folder = tmp_path / f"predictions_{version}"
    folder.mkdir()
    ids = np.array([f"images/{i}.png" for i in range(IMAGES)])
    write_predictions(folder / "distilled.csv", ids, labels, predicted, CLASSES)
    with mlflow.start_run(run_name="evaluate", tags={"data_manifest_sha256": manifest}) as run:
        mlflow.log_artifacts(str(folder), artifact_path=PREDICTIONS_PATH)
    source = tmp_path / f"model_{version}"
    source.mkdir()
    tags = {
        "kind": "distilled",
        "classes": json.dumps(CLASSES),
        "data_manifest_sha256": manifest,
        "evaluate_run_id": run.info.run_id,
        "test_macro_f1": f"{correct / IMAGES:.2f}",
    }
    client.create_model_version(NAME, str(source), tags=tags, description=f"version {version}.")


@pytest.fixture
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the runs' local artifact store
    use_store(uri)
    mlflow.set_experiment("hdkd")  # in this store, not the one an earlier test left active
    client = MlflowClient()
    client.create_registered_model(NAME)
    for version, correct in ((1, 70), (2, 30), (3, 88)):
        evaluated_version(client, tmp_path, version, correct)
    evaluated_version(client, tmp_path, 4, 88, manifest="b" * 64)
    client.set_registered_model_alias(NAME, "champion", "1")
    return client, params_from_dict({"mlflow": {"tracking_uri": uri}})


def test_a_worse_challenger_is_refused_with_its_paired_interval_unless_forced(registry):
    client, params = registry
    with pytest.raises(RegistryError, match=r"version 2 is worse than the champion: .* Verdict: worse.*--force"):
        promote(params, NAME, 2)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    refused = client.get_model_version(NAME, "2")
    assert refused.tags["paired.verdict"] == "worse" and refused.tags["paired.champion_version"] == "1"
    value, interval = refused.tags["paired.macro_f1_diff"].split(" ", 1)
    low, high = (float(bound) for bound in interval.strip("[]").split(", "))
    assert low <= float(value) <= high < 0
    assert refused.tags["paired.test_images"] == str(IMAGES)
    assert refused.description.startswith("version 2.\n\nAgainst the champion (version 1) on the same 90 test images")

    result = promote(params, NAME, 2, force=True)
    assert result["promoted"] and "Verdict: worse" in result["paired"]


def test_a_better_challenger_is_promoted_and_says_so(registry):
    client, params = registry
    result = promote(params, NAME, 3)
    assert result["promoted"] and "Verdict: better (the interval is above zero)" in result["paired"]
    assert client.get_model_version(NAME, "3").tags["paired.verdict"] == "better"
    assert "Lineage:" in result["lineage"]


def test_versions_tested_on_other_data_cannot_be_paired_and_say_why(registry):
    client, params = registry
    result = promote(params, NAME, 4)
    assert result["promoted"]
    assert "cannot be paired, they were tested on other data (data manifest bbbbbbbbbbbb" in result["paired"]
    tags = client.get_model_version(NAME, "4").tags
    assert tags["paired.verdict"] == "cannot be paired" and "other data" in tags["paired.reason"]


def test_a_new_check_replaces_the_paired_paragraph_and_tags(registry):
    client, params = registry
    with pytest.raises(RegistryError):
        promote(params, NAME, 2)
    client.set_model_version_tag(NAME, "3", "data_manifest_sha256", "c" * 64)
    client.set_registered_model_alias(NAME, "champion", "3")  # a champion set in the UI, tested on other data
    promote(params, NAME, 2)
    version = client.get_model_version(NAME, "2")
    assert version.description.count(PARAGRAPH) == 1 and "cannot be paired" in version.description
    assert "paired.macro_f1_diff" not in version.tags and version.tags["paired.champion_version"] == "3"


def test_the_paired_paragraph_is_replaced_in_place_of_appended():
    text = with_paragraph("What it is.\n\nLineage: x.\n\nAgainst the champion (version 1): old.", "Against new.")
    assert text == "What it is.\n\nLineage: x.\n\nAgainst new."
