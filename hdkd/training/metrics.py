"""Classification metrics from scikit-learn, on predicted probabilities and true labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm


def reliability_curve(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, list[float]]:
    """Mean confidence, accuracy and count of each non-empty equal-width confidence bin."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)
    curve: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": []}
    for b in np.unique(which):
        mask = which == b
        curve["confidence"].append(float(confidence[mask].mean()))
        curve["accuracy"].append(float(correct[mask].mean()))
        curve["count"].append(float(mask.sum()))
    return curve


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: the count-weighted gap between confidence and accuracy over the bins."""
    curve = reliability_curve(probs, labels, bins)
    counts = np.asarray(curve["count"])
    gaps = np.abs(np.asarray(curve["accuracy"]) - np.asarray(curve["confidence"]))
    return float((counts * gaps).sum() / counts.sum())


def roc_auc_ovr(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> float | None:
    """Macro one-vs-rest ROC-AUC over the classes present in `labels`; None if fewer than two."""
    present = np.unique(labels)
    if len(present) < 2:
        return None
    if len(present) == num_classes:
        if num_classes == 2:
            return float(skm.roc_auc_score(labels, probs[:, 1]))
        return float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    # A small split can miss a class; score the present ones one-vs-rest.
    return float(np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in present]))


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1, confusion matrix, ROC-AUC, ECE."""
    labels = np.asarray(labels)
    preds = probs.argmax(axis=1)
    indices = list(range(len(class_names)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(labels, preds, labels=indices, zero_division=0)
    return {
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, preds)),
        "macro_f1": float(skm.f1_score(labels, preds, labels=indices, average="macro", zero_division=0)),
        "roc_auc_ovr": roc_auc_ovr(probs, labels, len(class_names)),
        "ece": expected_calibration_error(probs, labels),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=indices).tolist(),
    }
