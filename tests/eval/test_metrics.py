"""Multi-label scores and per-class threshold optimisation, checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from graftkit.eval.metrics import DEFAULT_THRESHOLD_GRID, multilabel_scores, optimise_thresholds


def _random_labels(seed: int, n: int = 60, c: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, c)) < rng.uniform(0.05, 0.6, c)).astype(int)
    flip = rng.random((n, c)) < 0.3
    y_pred = np.where(flip, 1 - y_true, y_true)
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn_zero_division_0(seed):
    y_true, y_pred = _random_labels(seed)
    # a class with no positives and no predictions, one with no positives but predictions,
    # one with positives but no predictions: the three zero-division cases
    y_true[:, 0], y_pred[:, 0] = 0, 0
    y_true[:, 1], y_pred[:, 1] = 0, 0
    y_pred[:3, 1] = 1
    y_pred[:, 2] = 0
    names = [f"c{i}" for i in range(y_true.shape[1])]
    got = multilabel_scores(y_true, y_pred, names)
    kw = {"average": None, "zero_division": 0}
    f1 = f1_score(y_true, y_pred, **kw)
    precision = precision_score(y_true, y_pred, **kw)
    recall = recall_score(y_true, y_pred, **kw)
    for c, name in enumerate(names):
        assert got["per_class"][name]["f1"] == pytest.approx(f1[c], abs=1e-12)
        assert got["per_class"][name]["precision"] == pytest.approx(precision[c], abs=1e-12)
        assert got["per_class"][name]["recall"] == pytest.approx(recall[c], abs=1e-12)
        assert got["per_class"][name]["support"] == int(y_true[:, c].sum())
    macro = {"average": "macro", "zero_division": 0}
    assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, **macro), abs=1e-12)
    assert got["macro_precision"] == pytest.approx(
        precision_score(y_true, y_pred, **macro), abs=1e-12
    )
    assert got["macro_recall"] == pytest.approx(recall_score(y_true, y_pred, **macro), abs=1e-12)
    assert got["per_class"]["c0"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "support": 0}
    assert got["n"] == y_true.shape[0]


def test_one_class_is_scored_as_its_positive_label():
    """A single column reads as a binary vector to scikit-learn; it is still one class."""
    y_true, y_pred = _random_labels(4, c=1)
    got = multilabel_scores(y_true, y_pred)["per_class"]["class_0"]
    assert got["f1"] == pytest.approx(f1_score(y_true[:, 0], y_pred[:, 0], zero_division=0))
    assert got["support"] == int(y_true.sum())
    empty = multilabel_scores(np.zeros((3, 1), int), np.zeros((3, 1), int))
    assert empty["per_class"]["class_0"] == {
        "f1": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "support": 0,
    }


def test_perfect_and_inverted_predictions():
    y_true, _ = _random_labels(3)
    y_true[0] = 1  # every class has a positive
    y_true[1] = 0  # and a negative
    assert multilabel_scores(y_true, y_true)["macro_f1"] == 1.0
    inverted = multilabel_scores(y_true, 1 - y_true)
    assert inverted["macro_f1"] == 0.0 and inverted["macro_recall"] == 0.0


def test_bad_inputs_name_the_problem():
    y = np.zeros((4, 3), dtype=int)
    with pytest.raises(ValueError, match=r"y_pred\[1, 2\] = 2"):
        bad = y.copy()
        bad[1, 2] = 2
        multilabel_scores(y, bad)
    with pytest.raises(ValueError, match="shape"):
        multilabel_scores(y, y[:, :2])
    with pytest.raises(ValueError, match="class_names has 2 names"):
        multilabel_scores(y, y, ["a", "b"])


def _brute_force_thresholds(y_true, probs, grid):
    best = []
    for c in range(y_true.shape[1]):
        scored = [
            (f1_score(y_true[:, c], probs[:, c] >= t, zero_division=0), -abs(t - 0.5), -t)
            for t in grid
        ]
        best.append(-max(scored)[2])
    return np.array(best)


@pytest.mark.parametrize("seed", [0, 1])
def test_thresholds_equal_brute_force_per_class_search(seed):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((80, 4)) < 0.3).astype(int)
    # informative but miscalibrated probabilities: the best threshold is not 0.5
    probs = np.clip(0.15 + 0.3 * y_true + rng.normal(0, 0.12, y_true.shape), 0, 1)
    grid = DEFAULT_THRESHOLD_GRID
    thresholds, scores = optimise_thresholds(y_true, probs, grid, upper_bound=True)
    np.testing.assert_allclose(thresholds, _brute_force_thresholds(y_true, probs, grid))
    reference = multilabel_scores(y_true, probs >= thresholds)
    assert scores["macro_f1"] == pytest.approx(reference["macro_f1"])
    # tuning can only help on the tuning split
    assert scores["macro_f1"] >= multilabel_scores(y_true, probs >= 0.5)["macro_f1"]
    assert scores["macro_f1"] > multilabel_scores(y_true, probs >= 0.5)["macro_f1"] + 0.05
    assert scores["upper_bound"] is True
    assert list(scores["thresholds"].values()) == pytest.approx(list(thresholds))


def test_threshold_ties_prefer_the_untuned_default_and_flag_is_copied():
    y_true = np.array([[0], [0], [0], [0]])
    probs = np.array([[0.1], [0.2], [0.3], [0.4]])
    # no positives: every threshold above 0.4 scores F1 = 0 and so does every other: pick 0.5
    thresholds, scores = optimise_thresholds(y_true, probs, upper_bound=False)
    assert thresholds[0] == 0.5
    assert scores["upper_bound"] is False
    # perfect separation anywhere in (0.2, 0.3]: 0.3 is the tied value closest to 0.5
    y_true = np.array([[0], [0], [1], [1]])
    thresholds, _ = optimise_thresholds(y_true, probs, grid=[0.25, 0.3, 0.35])
    assert thresholds[0] == 0.3


def test_threshold_inputs_are_validated():
    with pytest.raises(ValueError, match="NaN"):
        optimise_thresholds(np.zeros((2, 1)), np.array([[np.nan], [0.1]]))
    with pytest.raises(ValueError, match="probs has shape"):
        optimise_thresholds(np.zeros((2, 1)), np.zeros((2, 2)))
