"""The main door end to end: a copy of the repository, real `dvc repro`, a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.repo import run


@pytest.mark.slow
def test_registered_models_carry_aliases_and_the_champion_predicts(pipeline_repo, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(pipeline_repo)
    mlflow.set_tracking_uri(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    client = MlflowClient()
    for name in ("hdkd-teacher", "hdkd-student", "hdkd-student-baseline"):
        version = client.get_model_version_by_alias(name, "champion")
        assert set(version.aliases) == {"champion", "challenger"}
        assert version.tags["kind"] in {"teacher", "distilled", "student"}
    model = mlflow.pyfunc.load_model("models:/hdkd-student@champion")
    batch = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    predictions = np.asarray(model.predict(batch))
    assert predictions.shape[0] == 3

    student = client.get_model_version_by_alias("hdkd-student", "champion")
    assert student.tags["compiled.built"] == "onnx"
    assert "CUDA" in student.tags["compiled.tensorrt.skipped"]
    assert float(student.tags["compiled.onnx.top1_agreement"]) == 1.0

    runs = mlflow.search_runs(experiment_names=["hdkd"])
    stages = set(runs["tags.stage"])
    assert {"train_teacher", "train_student", "tune", "train_distilled", "compile"} <= stages

    # distill trained with the tune stage's best settings
    tuned = json.loads((pipeline_repo / "reports/tune/best_params.json").read_text())
    assert tuned["n_trials"] == 2 and tuned["overrides"]
    distill_params = runs.loc[runs["tags.stage"] == "train_distilled"].iloc[0]
    for key, value in tuned["overrides"].items():
        assert distill_params[f"params.{key}"] == str(value), key
    stage_runs = runs[runs["tags.mlflow.parentRunId"].isna()]  # Optuna trials are runs nested in `tune`
    assert stage_runs["tags.data_manifest_sha256"].notna().all()


@pytest.mark.slow
def test_dvc_metrics_list_every_stage_and_second_repro_runs_nothing(pipeline_repo):
    shown = run(["dvc", "metrics", "show", "--json"], pipeline_repo).stdout
    files = {Path(name).name for entry in json.loads(shown).values() for name in entry["data"]}
    assert {"teacher.json", "student.json", "tune.json", "distilled.json", "compile.json", "validate.json"} <= files
    compiled = json.loads((pipeline_repo / "reports/metrics/compile.json").read_text())
    assert compiled["tensorrt"]["status"] == "skipped" and compiled["onnx"]["top1_agreement"] == 1.0
    again = run(["dvc", "repro"], pipeline_repo)
    assert "Data and pipelines are up to date." in again.stdout
    assert run(["dvc", "status", "-q"], pipeline_repo, check=False).returncode == 0
