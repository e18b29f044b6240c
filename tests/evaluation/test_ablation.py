"""`hdkd ablate` end to end: queued DVC experiments, MLflow runs tagged by configuration, the report."""

import json

import numpy as np
import pytest
from mlflow import MlflowClient

from hdkd.config import Params, TrainParams
from hdkd.evaluation.ablation import CONFIGS, AblationError, Experiment, markdown, overrides, plan, summarize
from hdkd.evaluation.dvc_queue import batch_tasks, progress
from hdkd.tracking import use_store
from tests import data_layouts as layouts
from tests.repo import make_repo, run


def test_plan_always_includes_the_baseline_and_names_experiments_uniquely():
    experiments = plan(["logit_only", "mbconv"], seeds=2, first_seed=1, batch="abl-x")
    # The baselines first (the other experiments of a seed take its plain student from the run cache),
    # then mbconv (its teacher is shared by its seeds), then the rest.
    order = [("hdkd", 1), ("hdkd", 2), ("mbconv", 1), ("mbconv", 2), ("logit_only", 1), ("logit_only", 2)]
    assert [(e.config, e.seed) for e in experiments] == order
    assert len({e.name for e in experiments}) == 6
    with pytest.raises(AblationError, match="unknown configuration"):
        plan(["nope"], 1, 1, "abl-x")


def test_the_queue_is_watched_for_this_batch_only():
    status = """Task     Name                         Created    Status
fb3b23a  abl-49019b-hdkd-s1           07:19 AM   Failed
4d022fe  abl-aee564-hdkd-s1           07:30 AM   Running
2833f70  abl-aee564-hdkd-t4-s1        07:30 AM   Queued

Worker status: 1 active, 0 idle
"""
    assert [line.split()[1] for line in batch_tasks(status, "abl-aee564")] == [
        "abl-aee564-hdkd-s1",
        "abl-aee564-hdkd-t4-s1",
    ]
    assert [line.split()[-1] for line in batch_tasks(status, "abl-49019b")] == ["Failed"]


def test_progress_counts_an_experiment_listed_twice_once():
    # DVC listed an experiment both running and done for a moment while it finished.
    status = """Task     Name                         Created    Status
4d022fe  abl-aee564-hdkd-s1           07:30 AM   Running
2833f70  abl-aee564-hdkd-t4-s1        07:30 AM   Queued
4d022fe  abl-aee564-hdkd-s1           07:30 AM   Success
9b1c2aa  abl-aee564-hdkd-s2           07:30 AM   Success
"""
    assert progress(batch_tasks(status, "abl-aee564")) == "ablation: 1 of 3 experiment(s) done"


def test_every_experiment_runs_untuned_at_its_configuration_and_seed():
    for config in CONFIGS:
        changed = overrides(Experiment(config, 3, "x"), "abl-x", "sqlite:////tmp/m.db")
        assert changed["tune.enabled"] is False and changed["student.seed"] == changed["distill.seed"] == 3
        assert {key: changed[key] for key in CONFIGS[config]} == CONFIGS[config]
    assert overrides(Experiment("hdkd_t4", 1, "x"), "b", "u")["distill.temperature"] == 4.0


def test_the_table_has_a_vanilla_kd_row_with_best_epochs_and_runs_that_hit_their_maximum():
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c"] * 20)

    def predictions(accuracy: float) -> np.ndarray:
        return np.where(rng.random(len(labels)) < accuracy, labels, "a")

    caps = TrainParams(epochs=30, patience=5)
    params = Params(student=caps, distill={**caps.model_dump(), "epochs": 40})
    # 0-based best epochs: with patience 5 a run whose best came at epoch 25 of 30 trained to its end.
    results = {
        (config, seed): {
            "labels": labels,
            "student": predictions(0.6),
            "distilled": predictions(accuracy),
            "student_best_epoch": 25 if seed == 1 else 11,
            "distilled_best_epoch": best,
        }
        for config, accuracy, best in (("hdkd", 0.6, 12), ("vanilla_kd", 0.9, 36))
        for seed in (1, 2)
    }
    summary = summarize(results, ["vanilla_kd"], params)
    vanilla = summary["rows"]["vanilla_kd"]
    assert (vanilla["seeds"], vanilla["best_epoch_per_seed"], vanilla["hit_max_per_seed"]) == (2, [37, 37], [True] * 2)
    assert summary["rows"]["plain"]["hit_max_per_seed"] == [True, False]
    assert summary["rows"]["hdkd"]["hit_max_per_seed"] == [False, False]
    lines = [line for line in markdown(summary).splitlines() if line.startswith("|")]
    cells = {row[1]: row for row in ([c.strip() for c in line.split("|")] for line in lines)}
    assert cells["Vanilla KD (Hinton), plain student network"][-3:-1] == ["better", "37*, 37*"]
    assert cells["Plain student (no KD)"][-3:-1] == ["baseline", "26*, 12"]


@pytest.mark.slow
def test_two_configurations_one_seed_through_the_dvc_queue_on_own_data(tmp_path):
    """Also the newcomer's journey: an image folder with arbitrary class names and the default balance,
    validation and split settings go through every stage (the ablation to evaluate, then the rest)."""
    classes = {"benign naevus": 30, "Melanoma_in_situ": 24, "other-lesion": 18}
    images = layouts.imagefolder(tmp_path / "images", classes)
    own_data = {"data": {"source": "imagefolder", "path": str(images)}, "tune": {"enabled": False}}
    repo = make_repo(tmp_path / "repo", own_data)
    configs = ["--configs", "hdkd,feature_only,vanilla_kd", "--jobs", "2"]  # two DVC queue workers at once
    result = run(["hdkd", "ablate", "--seeds", "1", *configs], repo, timeout=1500)
    summary = json.loads((repo / "reports" / "ablation.json").read_text())
    assert summary["failed"] == []
    rows = summary["rows"]
    assert set(rows) == {"plain", "hdkd", "feature_only", "vanilla_kd"}
    for name in ("hdkd", "feature_only", "vanilla_kd"):
        assert rows[name]["seeds"] == 1
        diff = rows[name]["vs_plain_macro_f1"]
        assert diff["low"] <= diff["value"] <= diff["high"]
    table = (repo / "reports" / "ablation.md").read_text()
    assert "Feature distillation only (alpha 0)" in table and "Δ macro-F1 vs plain [95% CI]" in table
    assert "HDKD ablation" in result.stdout
    # Progress while the queue runs: `dvc queue start` returned at once, though its workers went on.
    assert "ablation: 0 of 3 experiment(s) done" in result.stdout

    shown = run(["dvc", "exp", "show", "--no-pager", "--md", "--keep", "ablation.config", "--drop", ".*"], repo)
    assert "feature_only" in shown.stdout and "hdkd" in shown.stdout

    use_store(f"sqlite:///{repo / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("hdkd")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`ablation.batch` = '{summary['batch']}'")
    configs = {(r.data.tags["stage"], r.data.tags["ablation.config"]) for r in runs}
    # The distilled student trained once per configuration; the teacher was trained before, not per experiment.
    for config in ("hdkd", "feature_only", "vanilla_kd"):
        assert {("train_distilled", config), ("evaluate", config)} <= configs
    assert not [r for r in runs if r.data.tags["stage"] == "train_teacher"]
    # The first two ran at once, each training the plain student; the third started after one of them had
    # finished, and took the plain student from DVC's run cache.
    assert ("train_student", "vanilla_kd") not in configs
    assert summary["classes"] == sorted(classes)

    # The report again, from MLflow alone: the same rows, no wall time; a batch that never ran is named.
    (repo / "reports" / "ablation.json").unlink()
    run(["hdkd", "ablate", "--report", summary["batch"]], repo)
    again = json.loads((repo / "reports" / "ablation.json").read_text())
    assert again["rows"] == rows and again["wall_seconds"] is None
    missing = run(["hdkd", "ablate", "--report", "abl-000000"], repo, check=False)
    assert missing.returncode != 0 and "no finished experiment of ablation batch 'abl-000000'" in missing.stderr

    run(["dvc", "repro"], repo)  # compile and register on the same own data
    registry = json.loads((repo / "reports" / "registry.json").read_text())
    assert set(registry) == {"hdkd-teacher", "hdkd-student", "hdkd-student-baseline"}
