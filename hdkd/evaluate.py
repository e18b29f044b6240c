"""The `evaluate` stage: every trained network, once, on the untouched test split.

Writes under `reports/` (each folder is replaced whole, so a failed run leaves the previous one):
  metrics/evaluate.json          headline metrics per model, for `dvc metrics show`
  evaluate/<model>.json          everything else: per-class P/R/F1, confusion matrix, per-class
                                 ROC-AUC, parameters, MACs, CPU latency, Grad-CAM picks
  plots/confusion/<model>.csv    one `actual,predicted` row per test image (DVC confusion template)
  plots/roc/<model>.csv          one-vs-rest ROC per class: `fpr,tpr,class`
  plots/reliability/<model>.csv  reliability diagram bins: `confidence,accuracy,count`
  figures/*.png                  the same as images, plus the training stages' learning curves
  gradcam/<model>_<i>.png        Grad-CAM of teacher and HDKD student: picture | overlay
  summary.md                     teacher, plain student and HDKD side by side
"""

from __future__ import annotations

import contextlib
import csv
import json
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import DataLoader

from hdkd import plots
from hdkd.config import Params
from hdkd.data.loading import SplitArrays, eval_transform, load_split, make_loader
from hdkd.engine import predict_proba
from hdkd.errors import HDKDError
from hdkd.io import atomic_dir, atomic_path, write_json
from hdkd.layout import Layout
from hdkd.metrics import classification_metrics, reliability_curve
from hdkd.models import KINDS
from hdkd.models.complexity import count_macs, count_parameters
from hdkd.tracking import flat_params, stage_run
from hdkd.train import default_device, load_trained

MODEL_ORDER = KINDS  # teacher, student (no KD), distilled (HDKD)
LABELS = {"teacher": "Teacher (CNN)", "student": "Student, no KD", "distilled": "HDKD student"}
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr", "ece")
GRADCAM_KINDS = ("teacher", "distilled")
OUTPUT_DIRS = ("evaluate", "plots/confusion", "plots/roc", "plots/reliability", "figures", "gradcam")
EVAL_BATCH = 64
LATENCY_WARMUP = 5
RELIABILITY_BINS = 15  # the default of metrics.expected_calibration_error: the diagram shows the ECE's bins
GRADCAM_MIN_SIZE = 224  # overlays are scaled up to this: a 32-pixel picture is unreadable as is


class EvaluationError(HDKDError, ValueError):
    """Checkpoints and test data that cannot be evaluated together."""


def _load_checked(
    name: str, path: Path, classes: list[str], image_size: int, test_data: Path
) -> tuple[nn.Module, dict[str, Any]]:
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


def gradcam_picks(labels: np.ndarray, count: int) -> list[int]:
    """Test-image indices covering the classes first: each class's first image, then each one's second, ..."""
    seen: dict[int, int] = {}
    rank = []
    for label in labels.tolist():
        rank.append(seen.get(label, 0))
        seen[label] = rank[-1] + 1
    order = np.lexsort((labels, np.asarray(rank)))  # by rank within the class, then by class
    return sorted(order[:count].tolist())


@dataclass(frozen=True)
class _Pictures:
    """Some test images: their indices and labels, the model inputs, and float HWC in [0, 1] to draw on."""

    indices: list[int]
    labels: list[int]
    inputs: torch.Tensor
    pictures: np.ndarray


def _pictures(split: SplitArrays, indices: Sequence[int], image_size: int) -> _Pictures:
    chw = torch.from_numpy(split.images[list(indices)]).permute(0, 3, 1, 2)
    transform = eval_transform(image_size)
    inputs = torch.stack([transform(image) for image in chw])
    pictures = F.interpolate(chw.float() / 255, size=(image_size, image_size), mode="bilinear", antialias=True)
    return _Pictures(
        list(indices),
        split.labels[list(indices)].tolist(),
        inputs,
        pictures.clamp(0, 1).permute(0, 2, 3, 1).numpy().astype(np.float32),
    )


@torch.inference_mode()
def measure_latency(model: nn.Module, image: torch.Tensor, repeats: int = 30, warmup: int = LATENCY_WARMUP) -> float:
    """Median milliseconds of one eval-mode forward of one image on the CPU (median: robust to hiccups)."""
    model = model.cpu().eval()
    batch = image.unsqueeze(0).cpu()
    for _ in range(warmup):
        model(batch)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


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


def _write_gradcam(name: str, model: nn.Module, picks: _Pictures, classes: Sequence[str], folder: Path) -> list[dict]:
    """Picture | overlay PNGs; the explained class is the one the model predicts for that image."""
    last_stage3_block = list(model.get_submodule("stage3").children())[-1]
    overlays, predicted = plots.gradcam_overlays(model, last_stage3_block, picks.inputs, picks.pictures)
    size = max(GRADCAM_MIN_SIZE, picks.pictures.shape[1])
    written = []
    for i, (picture, overlay) in enumerate(zip(picks.pictures, overlays, strict=True)):
        file = folder / f"{name}_{i}.png"
        plots.side_by_side((picture * 255).round().astype(np.uint8), overlay, size).save(file)
        written.append(
            {
                "file": f"gradcam/{file.name}",
                "test_index": picks.indices[i],
                "actual": classes[picks.labels[i]],
                "predicted": classes[int(predicted[i])],
            }
        )
    return written


def _evaluate_one(
    name: str,
    model: nn.Module,
    loader: DataLoader,
    classes: list[str],
    image_size: int,
    picks: _Pictures,
    out: Mapping[str, Path],
    latency_repeats: int,
    teacher_predicted: np.ndarray | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics, plot data, figures, complexity and (teacher, HDKD) Grad-CAM of one network; returns the
    report and the top-1 predictions."""
    probs, labels = predict_proba(model, loader, default_device())
    metrics = classification_metrics(probs, labels, classes)
    title = LABELS.get(name, name)
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
        "latency_ms": measure_latency(model, picks.inputs[0], latency_repeats),
        "latency_repeats": latency_repeats,
        "threads": torch.get_num_threads(),
    }
    cams = _write_gradcam(name, model, picks, classes, out["gradcam"]) if name in GRADCAM_KINDS else []
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
    return (MODEL_ORDER.index(name) if name in MODEL_ORDER else len(MODEL_ORDER), name)


def _learning_histories(folder: Path) -> dict[str, list[dict[str, str]]]:
    """The per-epoch CSVs the training stages wrote, by network."""
    histories = {}
    for path in sorted(folder.glob("*.csv"), key=lambda p: _model_rank(p.stem)):
        with open(path, newline="") as handle:
            histories[LABELS.get(path.stem, path.stem)] = list(csv.DictReader(handle))
    return {name: rows for name, rows in histories.items() if rows}


def summary_rows(reports_dir: str | Path) -> list[dict[str, Any]]:
    """The comparison table, one row per evaluated model (teacher, plain student, HDKD first),
    read back from `reports/evaluate/*.json`."""
    folder = Path(reports_dir) / "evaluate"
    files = sorted(folder.glob("*.json"), key=lambda p: _model_rank(p.stem))
    if not files:
        raise EvaluationError(f"{folder}: no evaluation reports; run the evaluate stage first (dvc repro evaluate)")
    rows = []
    for file in files:
        report = json.loads(file.read_text())
        complexity = report["complexity"]
        rows.append(
            {
                "model": report["model"],
                "label": LABELS.get(report["model"], report["model"]),
                "parameters": complexity["parameters"],
                "macs": complexity["macs"],
                "latency_ms": complexity["latency_ms"],
                **{key: report["metrics"][key] for key in HEADLINE},
                "teacher_agreement": report["metrics"].get("teacher_agreement"),
                "test_images": report["test_images"],
                "num_classes": len(report["classes"]),
            }
        )
    return rows


def _count(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {suffix}"
    return str(value)


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of `summary_rows` as a Markdown table (also readable as plain text)."""
    lines = [
        "| Model | Parameters | MACs | CPU latency (ms/image) | Accuracy | Balanced acc. | Macro-F1 | ROC-AUC | ECE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        scores = " | ".join(_score(row[key]) for key in HEADLINE)
        size = f"{_count(row['parameters'])} | {_count(row['macs'])} | {row['latency_ms']:.2f}"
        lines.append(f"| {row['label']} | {size} | {scores} |")
    return "\n".join(lines)


def comparison_sentence(rows: Sequence[Mapping[str, Any]]) -> str:
    """One plain sentence: did HDKD beat the same student trained without distillation, on this test split?"""
    by_model = {row["model"]: row for row in rows}
    if not {"student", "distilled"} <= by_model.keys():
        return "HDKD and the plain student were not both evaluated, so they are not compared here."
    hdkd, plain = by_model["distilled"], by_model["student"]
    scores = (
        f"macro-F1 {hdkd['macro_f1']:.3f} vs {plain['macro_f1']:.3f}, "
        f"accuracy {hdkd['accuracy']:.3f} vs {plain['accuracy']:.3f}"
    )
    if hdkd["macro_f1"] > plain["macro_f1"]:
        verdict = f"HDKD beat the plain student on this test split ({scores})"
    elif hdkd["macro_f1"] == plain["macro_f1"]:
        verdict = f"HDKD tied with the plain student on this test split ({scores})"
    else:
        verdict = f"HDKD did not beat the plain student on this data ({scores})"
    chance = 1 / hdkd["num_classes"]
    # A network that predicts one class for everything has balanced accuracy 1/classes, whatever its accuracy.
    if max(hdkd["balanced_accuracy"], plain["balanced_accuracy"]) <= chance + 1e-9:
        return (
            f"{verdict}, but both are at chance level (balanced accuracy {hdkd['balanced_accuracy']:.3f} and "
            f"{plain['balanced_accuracy']:.3f}, chance {chance:.3f}), so this says nothing about distillation yet."
        )
    images = round(abs(hdkd["accuracy"] - plain["accuracy"]) * hdkd["test_images"])
    sentence = f"{verdict}; the accuracy gap is {images} of {hdkd['test_images']} test images."
    if hdkd.get("teacher_agreement") is not None and plain.get("teacher_agreement") is not None:
        sentence += (
            f" HDKD predicts the teacher's class for {hdkd['teacher_agreement']:.1%} of the test images, "
            f"the plain student for {plain['teacher_agreement']:.1%}."
        )
    return sentence


def _summary_markdown(
    rows: Sequence[Mapping[str, Any]], reports: Mapping[str, Mapping[str, Any]], image_size: int, learning: bool
) -> str:
    first = next(iter(reports.values()))
    classes, complexity = first["classes"], first["complexity"]
    lines = [
        "# Teacher, plain student and HDKD on the test split",
        "",
        f"{first['test_images']} test images, never used for training or model selection; "
        f"{len(classes)} classes: {', '.join(classes)}.",
        "",
        markdown_table(rows),
        "",
        comparison_sentence(rows),
        "",
        f"MACs of one {image_size}x{image_size} image. Latency: median of {complexity['latency_repeats']} "
        f"batch-1 forward passes after {LATENCY_WARMUP} warm-up runs, on this machine's CPU ("
        f"torch threads: {complexity['threads']}); compare the ratios, not the absolute values across machines.",
        "",
        "## Per-class F1",
        "",
        "| Class | " + " | ".join(LABELS.get(name, name) for name in reports) + " |",
        "|---|" + "---:|" * len(reports),
    ]
    for cls in classes:
        f1s = " | ".join(f"{report['metrics']['per_class'][cls]['f1']:.3f}" for report in reports.values())
        lines.append(f"| {cls} | {f1s} |")
    lines += ["", "## Figures", ""]
    for name in reports:
        label = LABELS.get(name, name)
        lines += [
            f"### {label}",
            "",
            f"![{label}: confusion matrix](figures/confusion_{name}.png) "
            f"![{label}: ROC](figures/roc_{name}.png) "
            f"![{label}: reliability](figures/reliability_{name}.png)",
            "",
        ]
        lines += [
            f"![Grad-CAM, actual {cam['actual']}, predicted {cam['predicted']}]({cam['file']})"
            for cam in reports[name]["gradcam"]
        ]
        if reports[name]["gradcam"]:
            lines += ["", "Grad-CAM (picture | overlay) on the last stage-3 block, for the predicted class.", ""]
    if learning:
        lines += ["### Learning curves", "", "![learning curves](figures/learning_curves.png)", ""]
    lines += [
        "## Files",
        "",
        "- `metrics/evaluate.json`: the headline metrics (`dvc metrics show`)",
        "- `evaluate/<model>.json`: per-class precision/recall/F1, confusion matrix, per-class ROC-AUC, complexity",
        "- `plots/confusion`, `plots/roc`, `plots/reliability`: plot data (`dvc plots show`); PNGs in `figures/`",
        "- `gradcam/`: Grad-CAM overlays",
        "",
    ]
    return "\n".join(lines)


def evaluate(
    params: Params,
    models: Mapping[str, str | Path],
    test_data: str | Path,
    reports_dir: str | Path,
    manifest: str | Path | None = None,
    gradcam_images: int = 4,
    latency_repeats: int = 30,
) -> dict[str, dict[str, float | None]]:
    """Evaluate each checkpoint (`{"teacher": .../best.pt, ...}`) once on `test_data`, write the reports,
    log them to an MLflow run named `evaluate`; returns the headline metrics per model."""
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
    picks = _pictures(split, gradcam_picks(split.labels, gradcam_images), size)
    reports: dict[str, dict[str, Any]] = {}
    with stage_run(params, "evaluate", manifest=manifest):
        mlflow.log_params(
            {**flat_params(params, ("model", "data")), **{f"checkpoint.{name}": str(models[name]) for name in networks}}
        )
        with contextlib.ExitStack() as stack:
            out = {folder: stack.enter_context(atomic_dir(reports_dir / folder)) for folder in OUTPUT_DIRS}
            teacher_predicted = None
            for name, (model, meta) in networks.items():
                report, predicted = _evaluate_one(
                    name, model, loader, classes, size, picks, out, latency_repeats, teacher_predicted
                )
                if name == "teacher":  # evaluated first (MODEL_ORDER)
                    teacher_predicted = predicted
                report["checkpoint"] = {
                    "path": str(models[name]),
                    "epoch": meta.get("epoch"),
                    "val_macro_f1": meta.get("val_macro_f1"),
                }
                write_json(out["evaluate"] / f"{name}.json", report)
                reports[name] = report
                m, c = report["metrics"], report["complexity"]
                print(
                    f"evaluate {name}: accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, "
                    f"ROC-AUC {_score(m['roc_auc_ovr'])}, ECE {m['ece']:.3f} | {_count(c['parameters'])} params, "
                    f"{_count(c['macs'])} MACs, {c['latency_ms']:.2f} ms/image",
                    flush=True,
                )
            learning = _learning_histories(reports_dir / "plots" / "learning")
            if learning:
                plots.learning_curves_png(out["figures"] / "learning_curves.png", learning)
        headline = {name: {key: report["metrics"][key] for key in HEADLINE} for name, report in reports.items()}
        write_json(reports_dir / "metrics" / "evaluate.json", headline)
        rows = summary_rows(reports_dir)
        with atomic_path(reports_dir / "summary.md") as tmp:
            tmp.write_text(_summary_markdown(rows, reports, size, bool(learning)))
        mlflow.log_metrics(
            {
                f"{row['model']}_{key}": float(row[key])
                for row in rows
                for key in (*HEADLINE, "parameters", "macs", "latency_ms")
                if row[key] is not None
            }
        )
        for folder in OUTPUT_DIRS:
            mlflow.log_artifacts(str(reports_dir / folder), artifact_path=f"reports/{folder}")
        mlflow.log_artifact(str(reports_dir / "metrics" / "evaluate.json"), artifact_path="reports/metrics")
        mlflow.log_artifact(str(reports_dir / "summary.md"), artifact_path="reports")
    print(comparison_sentence(rows))
    print(f"evaluate: reports in {reports_dir} (summary: {reports_dir / 'summary.md'})")
    return headline


def evaluate_stage(params: Params, layout: Layout | None = None) -> dict[str, dict[str, float | None]]:
    """The DVC stage: teacher, plain student and HDKD student from `models/`, on `data/split/test.npz`."""
    layout = layout or Layout()
    models = {kind: layout.checkpoint(kind) for kind in MODEL_ORDER}
    return evaluate(params, models, layout.split / "test.npz", layout.reports, manifest=layout.split / "manifest.csv")
