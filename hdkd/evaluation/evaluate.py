"""The `evaluate` stage: every trained network, once, on the untouched test split.

Writes under `reports/` (each folder is replaced whole, so a failed run leaves the previous one):
  metrics/<model>.json           headline metrics, a file (a row of `dvc metrics show`) per model, and
  metrics/hdkd_gain.json         HDKD minus the plain student (hdkd_gain, its interval, McNemar)
  evaluate/<model>.json          everything else: per-class P/R/F1, confusion matrix, per-class
                                 ROC-AUC, parameters, MACs, CPU latency, Grad-CAM picks
  plots/confusion/<model>.csv    one `actual,predicted` row per test image (DVC confusion template)
  plots/roc/<model>.csv          one-vs-rest ROC per class: `fpr,tpr,class`
  plots/reliability/<model>.csv  reliability diagram bins: `confidence,accuracy,count`
  figures/*.png                  the same as images, plus the training stages' learning curves
  gradcam/<model>_<i>.png        Grad-CAM of teacher and HDKD student: picture | overlay
  summary.md                     teacher, plain student and HDKD side by side
and with its MLflow run predictions/<model>.csv, a row per test image to pair versions on (predictions.py).
"""

from __future__ import annotations

import contextlib
import csv
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import DataLoader

from hdkd.config import Params
from hdkd.data.arrays import read_npz
from hdkd.data.loading import load_split, make_loader
from hdkd.errors import HDKDError
from hdkd.evaluation import plots
from hdkd.evaluation.gradcam import Pictures, gradcam_picks, pictures, write_gradcam
from hdkd.evaluation.predictions import PREDICTIONS_PATH, compare_paired, write_predictions
from hdkd.evaluation.report import COMPARISON, comparison_sentence, summary_markdown, teacher_gap_sentence
from hdkd.evaluation.stats import accuracy, bootstrap_ci, macro_f1_over
from hdkd.evaluation.timing import cpu_name, measure_latency
from hdkd.files import atomic_dir, atomic_path, write_json
from hdkd.kinds import KINDS, label
from hdkd.layout import Layout
from hdkd.models.complexity import count_macs, count_parameters
from hdkd.tracking import flat_params, stage_run
from hdkd.training.checkpoint import ModelMeta, load_trained
from hdkd.training.loop import predict_proba
from hdkd.training.metrics import classification_metrics, reliability_curve
from hdkd.training.train import default_device
from hdkd.tune.best import treatment

COMPARISON_METRICS = "hdkd_gain"  # reports/metrics/<this>.json: HDKD minus the plain student
GRADCAM_KINDS = ("teacher", "distilled")
OUTPUT_DIRS = ("evaluate", "plots/confusion", "plots/roc", "plots/reliability", "figures", "gradcam")
EVAL_BATCH = 64
RELIABILITY_BINS = 15  # the default of metrics.expected_calibration_error: the diagram shows the ECE's bins


class EvaluationError(HDKDError, ValueError):
    """Checkpoints and test data that cannot be evaluated together."""


def _load_checked(
    name: str, path: Path, classes: list[str], image_size: int, test_data: Path
) -> tuple[nn.Module, ModelMeta]:
    model, meta = load_trained(path)
    if name in KINDS and meta["kind"] != name:
        raise EvaluationError(f"{path}: holds a {meta['kind']!r} network but was given as the {name!r} model")
    if list(meta["classes"]) != classes:
        raise EvaluationError(
            f"{path}: the {name} model was trained for {len(meta['classes'])} classes {meta['classes']}, but the "
            f"test split {test_data} has {len(classes)} classes {classes}; retrain it on this data (dvc repro)"
        )
    if meta["img_size"] != image_size:
        raise EvaluationError(
            f"{path}: the {name} model was trained on {meta['img_size']}-pixel images, but data.image_size is "
            f"{image_size}; retrain it (dvc repro)"
        )
    return model, meta


def latency_ms(model: nn.Module, image: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of one eval-mode forward of one image on the CPU (median: robust to hiccups)."""
    model, batch = model.cpu().eval(), image.unsqueeze(0).cpu()
    with torch.inference_mode():
        return measure_latency({"model": lambda: model(batch)}, repeats)["model"]["median_ms"]


def roc_curves(
    probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """One-vs-rest `(fpr, tpr, auc)` per class; a class absent from the test split has no curve."""
    curves = {}
    for index, name in enumerate(classes):
        positive = labels == index
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, index])
        curves[name] = (fpr, tpr, float(roc_auc_score(positive, probs[:, index])))
    return curves


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _evaluate_one(
    name: str,
    model: nn.Module,
    loader: DataLoader,
    classes: list[str],
    image_size: int,
    picks: Pictures,
    out: Mapping[str, Path],
    latency_repeats: int,
    teacher_predicted: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics, plot data, figures, complexity and (teacher, HDKD) Grad-CAM of one network; returns the
    report and the top-1 predictions."""
    probs, labels = predict_proba(model, loader, default_device())
    metrics = classification_metrics(probs, labels, classes)
    title = label(name)
    predicted = probs.argmax(axis=1)
    if teacher_predicted is not None:
        # How far a student follows the teacher, right or wrong: what distillation changes first.
        metrics["teacher_agreement"] = float(np.mean(predicted == teacher_predicted))
    _write_csv(
        out["plots/confusion"] / f"{name}.csv",
        ("actual", "predicted"),
        ((classes[a], classes[p]) for a, p in zip(labels, predicted, strict=True)),
    )
    plots.confusion_png(out["figures"] / f"confusion_{name}.png", metrics["confusion_matrix"], classes, title)
    curves = roc_curves(probs, labels, classes)
    _write_csv(
        out["plots/roc"] / f"{name}.csv",
        ("fpr", "tpr", "class"),
        ((f"{f:.6g}", f"{t:.6g}", cls) for cls, (fpr, tpr, _) in curves.items() for f, t in zip(fpr, tpr, strict=True)),
    )
    plots.roc_png(out["figures"] / f"roc_{name}.png", curves, title)
    reliability = reliability_curve(probs, labels, RELIABILITY_BINS)
    _write_csv(
        out["plots/reliability"] / f"{name}.csv",
        ("confidence", "accuracy", "count"),
        (
            (conf, acc, int(count))
            for conf, acc, count in zip(
                reliability["confidence"], reliability["accuracy"], reliability["count"], strict=True
            )
        ),
    )
    plots.reliability_png(
        out["figures"] / f"reliability_{name}.png", reliability, metrics["ece"], RELIABILITY_BINS, title
    )
    model = model.cpu()
    complexity = {
        "parameters": count_parameters(model),
        "macs": count_macs(model, image_size),
        "latency_ms": latency_ms(model, picks.inputs[0], latency_repeats),
        "cpu": cpu_name(),
        "latency_repeats": latency_repeats,
        "threads": torch.get_num_threads(),
    }
    cams = write_gradcam(name, model, picks, classes, out["gradcam"]) if name in GRADCAM_KINDS else []
    report = {
        "model": name,
        "classes": classes,
        "test_images": len(labels),
        "metrics": metrics,
        "roc_auc_per_class": {cls: auc for cls, (_, _, auc) in curves.items()},
        "complexity": complexity,
        "gradcam": cams,
    }
    return report, predicted


def _model_rank(name: str) -> tuple[int, str]:
    return (KINDS.index(name) if name in KINDS else len(KINDS), name)


def _learning_histories(folder: Path) -> dict[str, list[dict[str, str]]]:
    """The per-epoch CSVs the training stages wrote, by network."""
    histories = {}
    for path in sorted(folder.glob("*.csv"), key=lambda p: _model_rank(p.stem)):
        with open(path, newline="") as handle:
            histories[label(path.stem)] = list(csv.DictReader(handle))
    return {name: rows for name, rows in histories.items() if rows}


def intervals(labels: np.ndarray, predicted: np.ndarray, num_classes: int, seed: int) -> dict[str, dict[str, float]]:
    """95% bootstrap intervals of accuracy and macro-F1 over resampled test images."""
    return {
        "accuracy": bootstrap_ci(labels, predicted, accuracy, seed).as_dict(),
        "macro_f1": bootstrap_ci(labels, predicted, macro_f1_over(num_classes), seed).as_dict(),
    }


def compare_students(
    labels: np.ndarray, predicted: Mapping[str, np.ndarray], macro_f1: Mapping[str, float], num_classes: int, seed: int
) -> dict[str, Any] | None:
    """HDKD against the plain student on the same images: paired bootstrap of the macro-F1 difference, McNemar."""
    if not {"student", "distilled"} <= predicted.keys():
        return None
    result: dict[str, Any] = {
        **compare_paired(labels, predicted["distilled"], predicted["student"], num_classes, seed),
        "teacher_gap": teacher_gap_sentence(macro_f1),
        # A network that predicts one class for everything has balanced accuracy 1/classes, whatever its accuracy.
        "chance_level": all(
            balanced_accuracy_score(labels, predicted[kind]) <= 1 / num_classes + 1e-9
            for kind in ("student", "distilled")
        ),
    }
    return result


def headline_metrics(reports: Mapping[str, Mapping[str, Any]], result: Mapping[str, Any] | None) -> dict[str, Any]:
    """`{file stem: figures}` for `dvc metrics show`: one row per network and one for HDKD minus the plain
    student, on the same few columns (macro-F1 or its gain, and its 95% interval as `ci_low`, `ci_high`), so
    the table fits a terminal (4 decimals: a bootstrap interval is far wider than that). `hdkd_gain` is the
    only key of its name, so `dvc exp show` calls it just that."""
    headline: dict[str, Any] = {}
    for name, report in reports.items():
        metrics, interval = report["metrics"], report["intervals"]["macro_f1"]
        headline[name] = {
            "accuracy": round(metrics["accuracy"], 4),
            "macro_f1": round(metrics["macro_f1"], 4),
            "ci_low": round(interval["low"], 4),
            "ci_high": round(interval["high"], 4),
            "auc": None if metrics["roc_auc_ovr"] is None else round(metrics["roc_auc_ovr"], 4),  # one class only
            "ece": round(metrics["ece"], 4),
        }
    if result:
        diff = result["macro_f1_difference"]
        headline[COMPARISON_METRICS] = {
            "hdkd_gain": round(diff["value"], 4),
            "ci_low": round(diff["low"], 4),
            "ci_high": round(diff["high"], 4),
            "mcnemar_p": float(f"{result['mcnemar']['p_value']:.3g}"),
        }
    return headline


def evaluate(
    params: Params,
    models: Mapping[str, str | Path],
    test_data: str | Path,
    reports_dir: str | Path,
    manifest: str | Path | None = None,
    gradcam_images: int = 4,
    latency_repeats: int = 30,
) -> dict[str, Any]:
    """Evaluate each checkpoint (`{"teacher": .../best.pt, ...}`) once on `test_data`, write the reports,
    log them to an MLflow run named `evaluate`; returns the headline metrics."""
    if gradcam_images < 1 or latency_repeats < 1:
        raise ValueError("gradcam_images and latency_repeats must be at least 1")
    test_data, reports_dir = Path(test_data), Path(reports_dir)
    split = load_split(test_data)
    classes, size = list(split.classes), params.data.image_size
    # Every checkpoint is checked before any work, so a mismatch leaves no half-written report.
    networks = {name: _load_checked(name, Path(path), classes, size, test_data) for name, path in models.items()}
    networks = dict(sorted(networks.items(), key=lambda item: _model_rank(item[0])))
    loader = make_loader(
        split, train=False, image_size=size, batch_size=EVAL_BATCH, num_workers=params.data.num_workers
    )
    picks = pictures(split, gradcam_picks(split.labels, gradcam_images), size)
    image_ids = read_npz(test_data, ("ids",), "run the split stage again")["ids"]
    reports: dict[str, dict[str, Any]] = {}
    predictions: dict[str, np.ndarray] = {}
    with stage_run(params, "evaluate", manifest=manifest) as run, tempfile.TemporaryDirectory() as per_image:
        mlflow.log_params(
            {**flat_params(params, ("model", "data")), **{f"checkpoint.{name}": str(models[name]) for name in networks}}
        )
        with contextlib.ExitStack() as stack:
            out = {folder: stack.enter_context(atomic_dir(reports_dir / folder)) for folder in OUTPUT_DIRS}
            for name, (model, meta) in networks.items():
                report, predicted = _evaluate_one(
                    name, model, loader, classes, size, picks, out, latency_repeats, predictions.get("teacher")
                )
                predictions[name] = predicted
                report["intervals"] = intervals(split.labels, predicted, len(classes), params.seed)
                report["treatment"] = treatment(params)
                report["evaluate_run_id"] = run.info.run_id  # where predictions/<name>.csv is kept
                write_predictions(Path(per_image) / f"{name}.csv", image_ids, split.labels, predicted, classes)
                report["checkpoint"] = {
                    "path": str(models[name]),
                    "epoch": meta.get("epoch"),
                    "val_macro_f1": meta.get("val_macro_f1"),
                }
                reports[name] = report
                m, c, ci = report["metrics"], report["complexity"], report["intervals"]
                print(
                    f"evaluate {name}: accuracy {m['accuracy']:.3f} [{ci['accuracy']['low']:.3f}, "
                    f"{ci['accuracy']['high']:.3f}], macro-F1 {m['macro_f1']:.3f} [{ci['macro_f1']['low']:.3f}, "
                    f"{ci['macro_f1']['high']:.3f}], ECE {m['ece']:.3f} | {c['parameters']:,} params, "
                    f"{c['macs'] / 1e6:.1f} MMACs, {c['latency_ms']:.2f} ms/image",
                    flush=True,
                )
            macro_f1 = {name: report["metrics"]["macro_f1"] for name, report in reports.items()}
            result = compare_students(split.labels, predictions, macro_f1, len(classes), params.seed)
            if result and "teacher" in reports:  # each student's agreement, computed once in _evaluate_one
                result["teacher_agreement"] = {
                    kind: reports[kind]["metrics"]["teacher_agreement"] for kind in ("student", "distilled")
                }
            for name, report in reports.items():
                write_json(out["evaluate"] / f"{name}.json", report)
            if result:
                write_json(out["evaluate"] / COMPARISON, result)
            learning = _learning_histories(reports_dir / "plots" / "learning")
            if learning:
                plots.learning_curves_png(out["figures"] / "learning_curves.png", learning)
        headline = headline_metrics(reports, result)
        for stem, figures in headline.items():
            write_json(reports_dir / "metrics" / f"{stem}.json", figures)
        with atomic_path(reports_dir / "summary.md") as tmp:
            tmp.write_text(summary_markdown(reports_dir, size, bool(learning)))
        complexity = {
            f"{name}_{key}": float(report["complexity"][key])
            for name, report in reports.items()
            for key in ("parameters", "macs", "latency_ms")
        }
        mlflow.log_metrics(
            {
                **{
                    f"{name}_{key}": float(v)
                    for name, row in headline.items()
                    for key, v in row.items()
                    if v is not None
                },
                **complexity,
            }
        )
        for folder in OUTPUT_DIRS:
            mlflow.log_artifacts(str(reports_dir / folder), artifact_path=f"reports/{folder}")
        mlflow.log_artifacts(per_image, artifact_path=PREDICTIONS_PATH)
        mlflow.log_artifacts(str(reports_dir / "metrics"), artifact_path="reports/metrics")
        mlflow.log_artifact(str(reports_dir / "summary.md"), artifact_path="reports")
    print(comparison_sentence(result))
    print(f"evaluate: reports in {reports_dir} (summary: {reports_dir / 'summary.md'})")
    return headline


def evaluate_stage(params: Params, layout: Layout | None = None) -> dict[str, Any]:
    """The DVC stage: teacher, plain student and HDKD student from `models/`, on `data/split/test.npz`."""
    layout = layout or Layout()
    models = {kind: layout.checkpoint(kind) for kind in KINDS}
    return evaluate(params, models, layout.split / "test.npz", layout.reports, manifest=layout.split / "manifest.csv")
