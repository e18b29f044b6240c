"""The evaluate stage on tiny checkpoints: every report written and consistent, tracked in MLflow."""

import csv
import json

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from hdkd.config import Params, params_from_dict
from hdkd.data.loading import eval_transform
from hdkd.evaluation.evaluate import (
    EvaluationError,
    evaluate,
)
from hdkd.evaluation.gradcam import GRADCAM_MIN_SIZE, gradcam_picks
from hdkd.evaluation.report import comparison, comparison_sentence, model_reports
from hdkd.models import build_model
from hdkd.models.complexity import count_parameters
from hdkd.training.checkpoint import load_trained, save_checkpoint
from hdkd.tune.best import treatment
from tests.helpers import toy_images

CLASSES = ["akiec", "bcc", "nv"]
SIZE = 32
N_TEST = 30
KINDS = ("teacher", "student", "distilled")


def write_split(path, n, seed, classes=CLASSES):
    images, labels = toy_images(n, len(classes), SIZE, seed)
    ids = np.array([f"img_{i}.png" for i in range(n)])
    np.savez(path, images=images, labels=labels, classes=np.array(classes), ids=ids)
    return path


def write_checkpoint(path, kind, classes=CLASSES, seed=0):
    torch.manual_seed(seed)
    model = build_model(kind, "tiny", len(classes), img_size=SIZE)
    meta = {"kind": kind, "preset": "tiny", "block": "mbcsa", "img_size": SIZE, "classes": list(classes)}
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


def tiny_params():
    return Params.model_validate(
        {"data": {"image_size": SIZE, "num_workers": 0}, "model": {"preset": "tiny"}, "tune": {"enabled": False}}
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    test_data = write_split(root / "test.npz", N_TEST, seed=3)
    models = {kind: write_checkpoint(root / f"{kind}.pt", kind, seed=i) for i, kind in enumerate(KINDS)}
    reports = root / "reports"
    learning = reports / "plots" / "learning"
    learning.mkdir(parents=True)
    for kind in ("teacher", "student"):
        (learning / f"{kind}.csv").write_text(
            "epoch,train_loss,val_accuracy,val_macro_f1\n1,1.1,0.4,0.3\n2,0.9,0.5,0.45\n"
        )
    threads = torch.get_num_threads()
    # One thread: batch-1 forwards of tiny models gain nothing from more, and stall when the cores are busy.
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow's local artifact store goes under the working directory
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        try:
            headline = evaluate(tiny_params(), models, test_data, reports, latency_repeats=3)
        finally:
            torch.set_num_threads(threads)
    return {"root": root, "reports": reports, "headline": headline, "models": models, "test_data": test_data}


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_headline_metrics_file_has_three_models_with_intervals_and_the_comparison(evaluated):
    reports = evaluated["reports"]
    metrics = {path.stem: json.loads(path.read_text()) for path in (reports / "metrics").glob("*.json")}
    assert metrics == evaluated["headline"]
    assert set(metrics) == {*KINDS, "hdkd_gain"}
    for kind in KINDS:
        scores = metrics[kind]
        assert set(scores) == {"accuracy", "macro_f1", "ci_low", "ci_high", "auc", "ece"}
        assert all(scores[key] is not None and 0.0 <= scores[key] <= 1.0 for key in scores)
        assert scores["ci_low"] <= scores["macro_f1"] <= scores["ci_high"]
        detail = json.loads((reports / "evaluate" / f"{kind}.json").read_text())
        assert set(detail["metrics"]["per_class"]) == set(CLASSES)
        assert np.asarray(detail["metrics"]["confusion_matrix"]).sum() == N_TEST
    diff = metrics["hdkd_gain"]
    expected = metrics["distilled"]["macro_f1"] - metrics["student"]["macro_f1"]
    assert diff["hdkd_gain"] == pytest.approx(expected, abs=1e-4)  # figures rounded to 4 decimals
    assert diff["ci_low"] <= diff["hdkd_gain"] <= diff["ci_high"]
    assert 0.0 <= diff["mcnemar_p"] <= 1.0


def test_plot_data_agrees_with_the_metrics(evaluated):
    plots = evaluated["reports"] / "plots"
    for kind in KINDS:
        confusion = read_csv(plots / "confusion" / f"{kind}.csv")
        assert len(confusion) == N_TEST
        accuracy = np.mean([row["actual"] == row["predicted"] for row in confusion])
        assert accuracy == pytest.approx(evaluated["headline"][kind]["accuracy"], abs=5e-5)  # 4 decimals
        assert {row["actual"] for row in confusion} == set(CLASSES)

        reliability = read_csv(plots / "reliability" / f"{kind}.csv")
        assert sum(float(row["count"]) for row in reliability) == N_TEST

        roc = read_csv(plots / "roc" / f"{kind}.csv")
        assert [c for c in CLASSES if any(row["class"] == c for row in roc)] == CLASSES
        for cls in CLASSES:
            points = [(float(row["fpr"]), float(row["tpr"])) for row in roc if row["class"] == cls]
            assert points[0] == (0.0, 0.0) and points[-1] == (1.0, 1.0)


def test_teacher_accuracy_matches_an_independent_forward_pass(evaluated):
    model, _ = load_trained(evaluated["models"]["teacher"])
    split = np.load(evaluated["test_data"])
    transform = eval_transform(SIZE)
    with torch.no_grad():
        batch = torch.stack([transform(torch.from_numpy(image).permute(2, 0, 1)) for image in split["images"]])
        predicted = model(batch).argmax(1).numpy()
    independent = np.mean(predicted == split["labels"])
    assert evaluated["headline"]["teacher"]["accuracy"] == pytest.approx(independent, abs=5e-5)  # 4 decimals

    # Each student's agreement with the teacher, from the same independent forward passes.
    for name in ("student", "distilled"):
        student, _ = load_trained(evaluated["models"][name])
        with torch.no_grad():
            followed = np.mean(student(batch).argmax(1).numpy() == predicted)
        report = json.loads((evaluated["reports"] / "evaluate" / f"{name}.json").read_text())
        assert report["metrics"]["teacher_agreement"] == pytest.approx(followed)


def test_summary_puts_the_three_models_side_by_side(evaluated):
    reports = model_reports(evaluated["reports"])
    assert list(reports) == list(KINDS)
    for kind, report in reports.items():
        expected = count_parameters(build_model(kind, "tiny", len(CLASSES), img_size=SIZE))
        assert report["complexity"]["parameters"] == expected
        assert report["complexity"]["macs"] > 0 and report["complexity"]["latency_ms"] > 0
    summary = (evaluated["reports"] / "summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("| ") and "Model" not in line]
    labels = [line.split("|")[1].strip() for line in table[:3]]
    assert labels == ["Teacher (CNN)", "Plain student (no KD)", "HDKD student"]
    assert comparison_sentence(comparison(evaluated["reports"])) in summary
    assert "Neither student was tuned" in summary  # tune.enabled is false in these params


def test_the_summary_says_both_students_were_tuned_alike_and_over_which_keys():
    tuned = params_from_dict(
        {
            "tune": {
                "enabled": True,
                "n_trials": 7,
                "epochs": 3,
                "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "alpha": {"low": 0.1, "high": 0.9}},
            }
        }
    )
    said = treatment(tuned)
    assert said.startswith("Both students were tuned alike: 7 Optuna trials each (3 epochs per trial")
    assert "same optimiser keys (lr)" in said and "HDKD also searched its distillation keys (alpha)" in said


def test_gradcam_overlays_for_teacher_and_hdkd_only(evaluated):
    reports = evaluated["reports"]
    for kind in ("teacher", "distilled"):
        detail = json.loads((reports / "evaluate" / f"{kind}.json").read_text())
        assert len(detail["gradcam"]) == 4
        for i, cam in enumerate(detail["gradcam"]):
            assert cam["file"] == f"gradcam/{kind}_{i}.png"
            with Image.open(reports / cam["file"]) as image:
                assert image.format == "PNG" and image.size == (2 * GRADCAM_MIN_SIZE, GRADCAM_MIN_SIZE)
                pixels = np.asarray(image.convert("RGB"))
            picture, overlay = pixels[:, :GRADCAM_MIN_SIZE], pixels[:, GRADCAM_MIN_SIZE:]
            assert np.abs(picture.astype(int) - overlay).mean() > 5  # the heat map is really drawn
    assert not list((reports / "gradcam").glob("student_*"))


def test_figures_are_valid_pngs(evaluated):
    figures = evaluated["reports"] / "figures"
    expected = {f"{plot}_{kind}.png" for plot in ("confusion", "roc", "reliability") for kind in KINDS}
    assert {path.name for path in figures.iterdir()} == expected | {"learning_curves.png"}
    for path in figures.iterdir():
        with Image.open(path) as image:
            image.verify()


def test_run_is_tracked_in_mlflow(evaluated):
    client = MlflowClient(tracking_uri=f"sqlite:///{evaluated['root'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tiny_params().mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'evaluate'")
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    for kind in KINDS:
        assert metrics[f"{kind}_macro_f1"] == pytest.approx(evaluated["headline"][kind]["macro_f1"])
        assert metrics[f"{kind}_latency_ms"] > 0
    logged = {item.path for item in client.list_artifacts(runs[0].info.run_id, "reports")}
    assert {"reports/summary.md", "reports/gradcam", "reports/plots"} <= logged


def test_each_networks_per_image_predictions_are_kept_with_the_run(evaluated, tmp_path):
    from hdkd.evaluation.predictions import PREDICTIONS_PATH, read_predictions

    client = MlflowClient(tracking_uri=f"sqlite:///{evaluated['root'] / 'mlflow.db'}")
    split = np.load(evaluated["test_data"])
    for kind in KINDS:
        run_id = json.loads((evaluated["reports"] / "evaluate" / f"{kind}.json").read_text())["evaluate_run_id"]
        path = client.download_artifacts(run_id, f"{PREDICTIONS_PATH}/{kind}.csv", str(tmp_path))
        stored = read_predictions(path)
        assert list(stored["image"]) == list(split["ids"])
        assert list(stored["label"]) == [CLASSES[i] for i in split["labels"]]
        confusion = read_csv(evaluated["reports"] / "plots" / "confusion" / f"{kind}.csv")
        assert list(stored["predicted"]) == [row["predicted"] for row in confusion]


def test_checkpoint_for_another_class_count_is_refused(tmp_path):
    test_data = write_split(tmp_path / "test.npz", 12, seed=1)
    models = {
        "teacher": write_checkpoint(tmp_path / "teacher.pt", "teacher", classes=["akiec", "nv"]),
        "student": write_checkpoint(tmp_path / "student.pt", "student"),
    }
    with pytest.raises(EvaluationError, match=r"teacher\.pt: the teacher model was trained for 2 classes"):
        evaluate(tiny_params(), models, test_data, tmp_path / "reports")
    assert not (tmp_path / "reports").exists()  # refused before anything was written


def test_checkpoint_given_under_the_wrong_name_is_refused(tmp_path):
    test_data = write_split(tmp_path / "test.npz", 12, seed=1)
    models = {"teacher": write_checkpoint(tmp_path / "student.pt", "student")}
    with pytest.raises(EvaluationError, match="holds a 'student' network but was given as the 'teacher' model"):
        evaluate(tiny_params(), models, test_data, tmp_path / "reports")


def test_gradcam_picks_cover_every_class_before_repeating_one():
    labels = np.array([0, 0, 0, 1, 0, 2, 1])
    assert gradcam_picks(labels, 3) == [0, 3, 5]
    assert gradcam_picks(labels, 5) == [0, 1, 3, 5, 6]
