"""The main door end to end: a copy of the repository, real `dvc repro`, a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hdkd.deploy.tensorrt_engines import tensorrt_unavailable
from hdkd.tracking import use_store
from tests.repo import run


@pytest.mark.slow
def test_registered_models_carry_aliases_and_the_champion_predicts(pipeline_repo, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(pipeline_repo)
    use_store(f"sqlite:///{pipeline_repo / 'mlflow.db'}")
    client = MlflowClient()
    for name in ("hdkd-teacher", "hdkd-student", "hdkd-student-baseline"):
        version = client.get_model_version_by_alias(name, "champion")
        assert set(version.aliases) == {"champion", "challenger"}
        assert version.tags["kind"] in {"teacher", "distilled", "student"}
    model = mlflow.pyfunc.load_model("models:/hdkd-student@champion")
    batch = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    predictions = model.predict({"image": list(batch)})  # the signature's one column; float arrays go in it too
    assert len(predictions) == 3

    student = client.get_model_version_by_alias("hdkd-student", "champion")
    assert student.description.startswith("HDKD student (tiny preset, mbcsa blocks)")
    assert "test_macro_f1" in student.tags and "verdict" in student.tags and "params_sha256" in student.tags
    assert student.tags["compiled.built"] == "onnx"
    if tensorrt_unavailable() is not None:  # on a CUDA machine with torch-tensorrt the engines are built instead
        assert "CUDA" in student.tags["compiled.tensorrt.skipped"]
    assert float(student.tags["compiled.onnx.top1_agreement"]) == 1.0

    runs = mlflow.search_runs(experiment_names=["hdkd"])
    stages = set(runs["tags.stage"])
    assert {"train_teacher", "train_student", "tune", "train_distilled", "compile"} <= stages

    # both students trained with their own study's best settings, the same budget each
    for kind in ("student", "distilled"):
        tuned = json.loads((pipeline_repo / f"reports/tune/{kind}.json").read_text())
        assert tuned["n_trials"] == 2 and tuned["overrides"]
        trained_with = runs.loc[runs["tags.stage"] == f"train_{kind}"].iloc[0]
        for key, value in tuned["overrides"].items():
            assert trained_with[f"params.{key}"] == str(value), key
    stage_runs = runs[runs["tags.mlflow.parentRunId"].isna()]  # Optuna trials are runs nested in `tune`
    assert stage_runs["tags.data_manifest_sha256"].notna().all()


@pytest.mark.slow
def test_dvc_metrics_show_the_headline_only_and_second_repro_runs_nothing(pipeline_repo):
    shown = run(["dvc", "metrics", "show", "--json"], pipeline_repo).stdout
    files = {Path(name).name for entry in json.loads(shown).values() for name in entry["data"]}
    # A file per network, the stages' own numbers in reports/stages/, not in every table.
    assert files == {"teacher.json", "student.json", "distilled.json", "hdkd_gain.json"}
    for stage in ("validate", "teacher", "student", "tune", "distilled", "compile"):
        assert (pipeline_repo / "reports" / "stages" / f"{stage}.json").is_file()
    compiled = json.loads((pipeline_repo / "reports/stages/compile.json").read_text())
    assert compiled["onnx"]["top1_agreement"] == 1.0
    assert compiled["tensorrt"]["status"] == ("skipped" if tensorrt_unavailable() else "built")
    again = run(["dvc", "repro"], pipeline_repo)
    assert "Data and pipelines are up to date." in again.stdout
    assert run(["dvc", "status", "-q"], pipeline_repo, check=False).returncode == 0


@pytest.mark.slow
def test_dvc_plots_page_works_offline(pipeline_repo, tmp_path):
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], pipeline_repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "<script" not in page  # no Vega from a CDN: nothing missing without internet
    images = [line for line in page.splitlines() if "<img" in line]
    assert len(images) >= 9  # learning curves + confusion, ROC and reliability of three networks + Grad-CAM
