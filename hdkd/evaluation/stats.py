"""Confidence intervals and tests for comparing networks on one test split.

Every comparison of two networks in this project carries a 95% interval and its verdict follows the
interval: with a hundred test images a few predictions move macro-F1 by several points, so a bare
difference says nothing. The resampling is scipy's (`scipy.stats.bootstrap`, percentile method,
seeded); McNemar's exact test is statsmodels'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as _mcnemar

CONFIDENCE = 0.95
RESAMPLES = 1000
SEED = 0

Metric = Callable[[np.ndarray, np.ndarray], float]
Verdict = Literal["better", "worse", "cannot tell"]


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predicted)))


def macro_f1_over(num_classes: int) -> Metric:
    """Macro-F1 over all `num_classes` classes, so that a resample missing a class still scores it (as 0).

    Labels are class indices; a prediction outside them (a class the test split lacks, encoded -1) is no class.
    Equal to scikit-learn's `f1_score(labels=range(num_classes), average="macro", zero_division=0)`
    (tests/evaluation/test_stats.py), from one `bincount`: sklearn's input checks cost ~1 ms a call, which made
    the 1000 resamples of each interval take seconds (14 s of the demo's evaluate stage on an idle 2-core
    AVX-512 EPYC).
    """
    width = num_classes + 1  # the last column: predictions of no class

    def macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
        predicted = np.asarray(predicted)
        predicted = np.where((predicted >= 0) & (predicted < num_classes), predicted, num_classes)
        counts = np.bincount(np.asarray(labels) * width + predicted, minlength=num_classes * width)
        confusion = counts.reshape(num_classes, width)
        true_positives = np.diagonal(confusion).astype(float)
        support_plus_predicted = confusion.sum(1) + confusion[:, :num_classes].sum(0)
        f1 = np.divide(
            2 * true_positives, support_plus_predicted, out=np.zeros(num_classes), where=support_plus_predicted > 0
        )
        return float(f1.mean())

    return macro_f1


@dataclass(frozen=True)
class Interval:
    """A point estimate on the test split and its bootstrap interval."""

    value: float
    low: float
    high: float
    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES

    @classmethod
    def from_dict(cls, stored: Mapping[str, float]) -> Interval:
        """Back from `as_dict()` (a metrics JSON, an MLflow tag)."""
        return cls(stored["value"], stored["low"], stored["high"], stored["confidence"], int(stored["resamples"]))

    def verdict(self) -> Verdict:
        """The one rule for a difference a - b: "better" or "worse" only when the interval excludes zero."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "cannot tell"

    def as_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items()}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _interval(data: tuple[np.ndarray, ...], statistic: Callable[..., float], seed: int, resamples: int) -> Interval:
    value = statistic(*data)
    images = len(data[0])
    if images < 2:
        return Interval(value, value, value, resamples=0)

    def on_images(index: np.ndarray) -> float:
        # Test images are resampled with everything that belongs to them: label, predictions, all runs.
        return statistic(*(array[index] for array in data))

    result = stats.bootstrap(
        (np.arange(images),),
        on_images,
        vectorized=False,
        n_resamples=resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    # Every resample equal (a perfect or constant model): the interval is the point.
    low, high = (value, value) if np.isnan(low) else (float(low), float(high))
    return Interval(value, low, high, resamples=resamples)


def bootstrap_ci(
    labels: np.ndarray, predicted: np.ndarray, metric: Metric, seed: int = SEED, resamples: int = RESAMPLES
) -> Interval:
    """95% percentile-bootstrap interval of `metric(labels, predicted)` over resampled test images."""
    return _interval((np.asarray(labels), np.asarray(predicted)), metric, seed, resamples)


def _runs_and_images_interval(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], statistic: Callable[..., float], seed: int, resamples: int
) -> Interval:
    """Percentile interval of a two-level bootstrap over `(images, runs)` predictions: each resample draws test
    images (an image with all its runs) and, independently, runs (a run's a and b together, as a pair).
    scipy's `bootstrap` resamples one axis only."""
    labels, a, b = data
    images, runs = a.shape
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for i in range(resamples):
        rows, columns = rng.integers(0, images, images), rng.integers(0, runs, runs)
        values[i] = statistic(labels[rows], a[np.ix_(rows, columns)], b[np.ix_(rows, columns)])
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(statistic(*data), float(low), float(high), resamples=resamples)


def paired_difference_ci(
    labels: np.ndarray,
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    metric: Metric,
    seed: int = SEED,
    resamples: int = RESAMPLES,
) -> Interval:
    """95% paired-bootstrap interval of `metric(a) - metric(b)`: both networks scored on the same resampled images.

    Predictions of shape `(images, runs)` pool several runs on the same test images, run j of a paired with
    run j of b (the same seed). Then the runs are resampled too, not only the images: two trainings of one
    network differ by more than the test sample says (on digits, a student's test macro-F1 moved by up to 0.09
    from one seed to the next), and an interval over images alone would pass that luck of the seeds off as
    an effect. With three runs it is wide, as three runs warrant. (Resampling every source of variation:
    Bouthillier et al., "Accounting for Variance in Machine Learning Benchmarks", MLSys 2021.)
    """

    def difference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        if a.ndim == 2:
            y, a, b = np.repeat(y, a.shape[1]), a.ravel(), b.ravel()
        return metric(y, a) - metric(y, b)

    data = (np.asarray(labels), np.asarray(predicted_a), np.asarray(predicted_b))
    if data[1].ndim == 2 and len(data[0]) > 1:
        return _runs_and_images_interval(data, difference, seed, resamples)
    return _interval(data, difference, seed, resamples)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test on correctness: `only_a` images only network a gets right, `only_b` only b."""

    only_a: int
    only_b: int
    p_value: float

    def as_dict(self) -> dict[str, float]:
        return {"only_a_correct": self.only_a, "only_b_correct": self.only_b, "p_value": self.p_value}


def mcnemar(labels: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray) -> McNemar:
    labels = np.asarray(labels)
    right_a, right_b = np.asarray(predicted_a) == labels, np.asarray(predicted_b) == labels
    table = np.array(
        [
            [np.sum(right_a & right_b), np.sum(right_a & ~right_b)],
            [np.sum(~right_a & right_b), np.sum(~right_a & ~right_b)],
        ]
    )
    result = _mcnemar(table, exact=True)
    return McNemar(int(table[0, 1]), int(table[1, 0]), float(result.pvalue))
