"""Micro / weighted F1, the CRG score and the exact expected scores of random reports."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import f1_score

from graftkit.eval.metrics import (
    all_positive_baseline,
    crg_from_counts,
    crg_score,
    expected_scores,
    f1_averages,
    multilabel_scores,
    prevalence_baseline,
    skill_score,
)


def _labels(seed: int, n: int = 50, c: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, c)) < rng.uniform(0.05, 0.5, c)).astype(int)
    y_pred = np.where(rng.random((n, c)) < 0.25, 1 - y_true, y_true)
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_averages_match_sklearn(seed):
    y_true, y_pred = _labels(seed)
    y_true[:, 0], y_pred[:, 0] = 0, 0  # a class with no positives and no predictions
    y_pred[:, 1] = 0  # a class never predicted
    got = f1_averages(y_true, y_pred)
    for average in ("macro", "micro", "weighted"):
        expected = f1_score(y_true, y_pred, average=average, zero_division=0)
        assert got[f"{average}_f1"] == pytest.approx(expected, abs=1e-12)
    assert got["macro_f1"] == pytest.approx(multilabel_scores(y_true, y_pred)["macro_f1"])


def test_f1_averages_of_an_empty_truth_are_zero_as_in_sklearn():
    y_true = np.zeros((4, 3), int)
    y_pred = np.zeros((4, 3), int)
    y_pred[0, 0] = 1
    assert f1_averages(y_true, y_pred) == {"macro_f1": 0.0, "micro_f1": 0.0, "weighted_f1": 0.0}


def test_crg_hand_derived_example():
    # T = 6 cells, A = 3 positives, w = (6 - 3) / (2 * 3) = 0.5, S_max = 1.5
    y_true = np.array([[1, 0, 0], [1, 1, 0]])
    y_pred = np.array([[1, 1, 0], [0, 1, 0]])
    # TP = 2 ((0,0), (1,1)), FN = 1 ((1,0)), FP = 1 ((0,1)); s = 0.5*2 - 0.5*1 - 1 = -0.5
    got = crg_score(y_true, y_pred)
    assert (got["tp"], got["fn"], got["fp"], got["t"], got["a"]) == (2, 1, 1, 6, 3)
    assert got["w"] == 0.5 and got["s_max"] == 1.5 and got["s"] == -0.5
    assert got["crg"] == pytest.approx(1.5 / (3.0 + 0.5))  # 3/7


def test_crg_bounds_and_trivial_reports():
    y_true, _ = _labels(3, n=40)
    assert crg_score(y_true, y_true)["crg"] == pytest.approx(1.0)
    assert crg_score(y_true, 1 - y_true)["crg"] == pytest.approx(1 / 5)
    assert crg_score(y_true, np.ones_like(y_true))["crg"] == pytest.approx(1 / 3)
    assert crg_score(y_true, np.zeros_like(y_true))["crg"] == pytest.approx(1 / 3)
    for seed in range(5):
        _, y_pred = _labels(seed, n=40)
        assert 0.2 <= crg_score(y_true, y_pred)["crg"] <= 1.0


def test_crg_undefined_cases_raise_and_counts_give_nan():
    with pytest.raises(ValueError, match="A = 0"):
        crg_score(np.zeros((3, 2), int), np.ones((3, 2), int))
    with pytest.raises(ValueError, match="A = T"):
        crg_score(np.ones((3, 2), int), np.ones((3, 2), int))
    values = crg_from_counts(
        np.array([2, 0]), np.array([1, 0]), np.array([1, 0]), 6, np.array([3, 0])
    )
    assert values[0] == pytest.approx(3 / 7) and np.isnan(values[1])


def _enumerate_expectation(y_true: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """E[macro F1] and E[CRG] by enumerating every prediction matrix with its probability."""
    n, c = y_true.shape
    preds = np.array(list(itertools.product((0, 1), repeat=n * c))).reshape(-1, n, c)
    prob = np.prod(np.where(preds == 1, p, 1 - p), axis=(1, 2))
    truth = y_true[None].astype(bool)
    tp = (preds.astype(bool) & truth).sum(axis=1)
    fp = (preds.astype(bool) & ~truth).sum(axis=1)
    fn = (~preds.astype(bool) & truth).sum(axis=1)
    denominator = 2 * tp + fp + fn
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)  # [M, C]
    t, a = y_true.size, y_true.sum()
    w = (t - a) / (2 * a)
    s = w * tp.sum(1) - w * fn.sum(1) - fp.sum(1)
    crg = a * w / (2 * a * w - s)
    return float(prob @ f1.mean(axis=1)), float(prob @ crg)


def test_expected_scores_equal_exhaustive_enumeration():
    # 4 volumes x 3 classes = 4096 prediction matrices; class 2 has no positive
    y_true = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0]])
    p = np.array([0.3, 0.6, 0.2])
    e_f1, e_crg = _enumerate_expectation(y_true, p)
    got = expected_scores(y_true, p)
    assert got["macro_f1"] == pytest.approx(e_f1, abs=1e-12)
    assert got["crg"] == pytest.approx(e_crg, abs=1e-12)
    assert got["per_class_f1"][2] == 0.0


def test_prevalence_baseline_agrees_with_sampled_reports():
    y_true, _ = _labels(5, n=120, c=5)
    prevalence = np.array([0.1, 0.25, 0.4, 0.05, 0.3])
    rng = np.random.default_rng(0)
    draws = 3000
    f1s, crgs = np.empty(draws), np.empty(draws)
    for d in range(draws):
        pred = (rng.random(y_true.shape) < prevalence).astype(int)
        f1s[d] = f1_averages(y_true, pred)["macro_f1"]
        crgs[d] = crg_score(y_true, pred)["crg"]
    got = prevalence_baseline(y_true, prevalence)
    # within 5 standard errors of the Monte Carlo means
    assert abs(got["macro_f1"] - f1s.mean()) < 5 * f1s.std() / np.sqrt(draws)
    assert abs(got["crg"] - crgs.mean()) < 5 * crgs.std() / np.sqrt(draws)


def test_all_positive_baseline_is_the_closed_form():
    y_true, _ = _labels(6, n=30)
    y_true[:, 0] = 0
    got = all_positive_baseline(y_true)
    positives = y_true.sum(axis=0)
    negatives = y_true.shape[0] - positives
    closed_form = np.where(positives > 0, 2 * positives / (2 * positives + negatives), 0.0)
    np.testing.assert_allclose(got["per_class_f1"], closed_form, atol=1e-12)
    assert got["macro_f1"] == pytest.approx(closed_form.mean(), abs=1e-12)
    assert got["crg"] == pytest.approx(1 / 3, abs=1e-12)
    scored = multilabel_scores(y_true, np.ones_like(y_true))["macro_f1"]
    assert got["macro_f1"] == pytest.approx(scored, abs=1e-12)


def test_all_positive_macro_f1_on_the_shipped_ct_rate_labels():
    """The issue's figure: naming every finding scores macro F1 0.316 on CT-RATE's labels."""
    pd = pytest.importorskip("pandas")
    from importlib.resources import files

    path = files("graftkit_ct_rate") / "data" / "ct_rate_labeled_reports.csv"
    y_true = pd.read_csv(path).iloc[:, 2:].to_numpy()
    assert y_true.shape == (800, 18)
    assert all_positive_baseline(y_true)["macro_f1"] == pytest.approx(0.316, abs=5e-4)


def test_expected_scores_validate_probabilities():
    y = np.array([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"probabilities\[1\] = 1.5"):
        expected_scores(y, [0.5, 1.5])
    with pytest.raises(ValueError, match="one value per class"):
        expected_scores(y, [0.5])
    assert expected_scores(np.zeros((2, 2), int), [0.5, 0.5])["crg"] is None


def test_skill_score():
    assert skill_score(0.5, 0.3, 0.7) == pytest.approx(0.5)
    assert skill_score(0.2, 0.3, 0.7) == pytest.approx(-0.25)
    assert skill_score(0.5, 0.3, None) is None
    assert skill_score(0.5, 0.3, 0.3) is None
    with pytest.raises(ValueError, match="score must be finite"):
        skill_score(float("nan"), 0.3, 0.7)
