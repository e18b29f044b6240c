"""Confidence intervals, McNemar's test and the verdict sentence, on constructed predictions."""

import numpy as np
import pytest
from scipy.stats import binomtest

from hdkd.evaluation.evaluate import compare_students
from hdkd.evaluation.report import comparison_sentence
from hdkd.evaluation.stats import accuracy, bootstrap_ci, macro_f1_over, mcnemar, paired_difference_ci

CLASSES = 4


def predictions(labels: np.ndarray, accuracy_wanted: float, seed: int) -> np.ndarray:
    """`labels` with a random share `1 - accuracy_wanted` replaced by another class."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(labels)) > accuracy_wanted
    return np.where(wrong, (labels + rng.integers(1, CLASSES, len(labels))) % CLASSES, labels)


def test_bootstrap_interval_covers_the_true_accuracy_of_a_known_process():
    # Many test sets drawn from one process of accuracy 0.8: about 95% of their intervals must cover 0.8.
    covered = 0
    for seed in range(60):
        labels = np.random.default_rng(1000 + seed).integers(0, CLASSES, 300)
        rng = np.random.default_rng(seed)
        right = rng.random(300) < 0.8
        predicted = np.where(right, labels, (labels + 1) % CLASSES)
        interval = bootstrap_ci(labels, predicted, accuracy, seed=seed, resamples=1000)
        assert interval.low <= interval.value <= interval.high
        covered += interval.low <= 0.8 <= interval.high
    assert covered >= 52  # 95% of 60 is 57; binomial slack for the check itself


def test_interval_of_a_perfect_model_is_the_point():
    labels = np.arange(40) % CLASSES
    interval = bootstrap_ci(labels, labels, macro_f1_over(CLASSES))
    assert (interval.value, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_mcnemar_matches_the_exact_binomial_test_on_a_hand_made_table():
    # 10 images only a gets right, 3 only b, 20 both, 7 neither.
    labels = np.zeros(40, dtype=int)
    a = np.array([0] * 10 + [1] * 3 + [0] * 20 + [1] * 7)
    b = np.array([1] * 10 + [0] * 3 + [0] * 20 + [1] * 7)
    result = mcnemar(labels, a, b)
    assert (result.only_a, result.only_b) == (10, 3)
    assert result.p_value == pytest.approx(binomtest(3, 13, 0.5).pvalue)
    assert result.p_value == pytest.approx(0.09228515625)  # 2 * P(X <= 3), X ~ Bin(13, 1/2)


def _comparison(hdkd_accuracy: float, plain_accuracy: float, n: int = 400) -> dict:
    labels = np.random.default_rng(7).integers(0, CLASSES, n)
    predicted = {
        "teacher": predictions(labels, 0.9, seed=1),
        "student": predictions(labels, plain_accuracy, seed=2),
        "distilled": predictions(labels, hdkd_accuracy, seed=3),
    }
    f1 = macro_f1_over(CLASSES)
    macro = {kind: f1(labels, pred) for kind, pred in predicted.items()}
    result = compare_students(labels, predicted, macro, CLASSES, seed=0)
    assert result is not None
    return result


def test_verdict_follows_the_interval_in_all_three_cases():
    better = _comparison(0.85, 0.6)
    assert better["macro_f1_difference"]["low"] > 0
    assert comparison_sentence(better).startswith("HDKD beat the plain student: macro-F1 difference")

    worse = _comparison(0.6, 0.85)
    assert worse["macro_f1_difference"]["high"] < 0
    assert comparison_sentence(worse).startswith("HDKD did worse than the plain student")

    tied = _comparison(0.75, 0.75)
    diff = tied["macro_f1_difference"]
    assert diff["low"] < 0 < diff["high"]
    sentence = comparison_sentence(tied)
    assert sentence.startswith("HDKD and the plain student cannot be told apart on 400 test images")
    assert f"[{diff['low']:+.3f}, {diff['high']:+.3f}]" in sentence
    assert "beat" not in sentence


def test_paired_interval_is_narrower_than_the_two_separate_ones_for_correlated_models():
    labels = np.random.default_rng(0).integers(0, CLASSES, 300)
    a = predictions(labels, 0.8, seed=1)
    b = a.copy()
    b[:15] = (labels[:15] + 1) % CLASSES  # b = a with 15 more mistakes
    f1 = macro_f1_over(CLASSES)
    paired = paired_difference_ci(labels, a, b, f1)
    separate = bootstrap_ci(labels, a, f1).high - bootstrap_ci(labels, b, f1).low
    assert paired.high - paired.low < separate


def test_a_difference_one_seed_of_three_carries_gets_no_verdict_and_one_every_seed_shows_does():
    # Pooled over 3 seeds on 300 images: the first seed's distilled network is far better, the other two are level
    # with their plain students. Alone, that first pair is a sure gain; with the seeds resampled, the pooled gain
    # shows that it rests on one training.
    labels = np.random.default_rng(0).integers(0, CLASSES, 300)
    plain = np.stack([predictions(labels, 0.75, seed) for seed in (1, 2, 3)], axis=1)
    one_lucky_seed = np.stack(
        [predictions(labels, accuracy, seed) for seed, accuracy in ((4, 0.95), (5, 0.75), (6, 0.75))], axis=1
    )
    every_seed = np.stack([predictions(labels, 0.9, seed) for seed in (7, 8, 9)], axis=1)
    f1 = macro_f1_over(CLASSES)
    lucky = paired_difference_ci(labels, one_lucky_seed, plain, f1)
    assert lucky.value > 0.03 and lucky.verdict() == "cannot tell"
    assert paired_difference_ci(labels, every_seed, plain, f1).verdict() == "better"
    # One run: the images alone, as for a single pair of networks.
    single = paired_difference_ci(labels, one_lucky_seed[:, :1], plain[:, :1], f1)
    assert single.verdict() == "better"


def test_chance_level_students_get_no_verdict():
    labels = np.arange(200) % CLASSES
    constant = np.zeros(200, dtype=int)
    predicted = {"student": constant, "distilled": constant.copy()}
    result = compare_students(labels, predicted, {"student": 0.1, "distilled": 0.1}, CLASSES, seed=0)
    assert "both at chance level" in comparison_sentence(result)


def test_macro_f1_and_accuracy_equal_scikit_learns_with_missing_and_unknown_classes():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    f1 = macro_f1_over(5)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        labels = rng.integers(0, 5 if trial % 3 else 3, n)  # some trials lack classes 3 and 4 altogether
        predicted = np.where(rng.random(n) < 0.6, labels, rng.integers(-1, 5, n))  # -1: a class test lacks
        expected = f1_score(labels, predicted, labels=list(range(5)), average="macro", zero_division=0)
        assert f1(labels, predicted) == pytest.approx(expected, abs=1e-12)
        assert accuracy(labels, predicted) == pytest.approx(accuracy_score(labels, predicted))
