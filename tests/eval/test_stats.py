"""Bootstrap intervals over volumes and paired comparisons."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import f1_score

from graftkit.eval import stats
from graftkit.eval.metrics import crg_score


def _system(seed: int, y_true: np.ndarray, error: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(y_true.shape) < error, 1 - y_true, y_true)


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((150, 8)) < rng.uniform(0.1, 0.5, 8)).astype(int)


def test_point_values_equal_the_scorers(labels):
    pred = _system(1, labels, 0.2)
    assert stats.macro_f1_statistic(labels, pred).value() == pytest.approx(
        f1_score(labels, pred, average="macro", zero_division=0)
    )
    assert stats.crg_statistic(labels, pred).value() == pytest.approx(
        crg_score(labels, pred)["crg"]
    )


def test_resampled_values_equal_rescoring_the_drawn_rows(labels):
    """Each vectorised resample equals scikit-learn / crg_score on the rows it drew."""
    pred = _system(2, labels, 0.2)
    statistics = [stats.macro_f1_statistic(labels, pred), stats.crg_statistic(labels, pred)]
    values = stats.bootstrap_distribution(statistics, n_resamples=20, seed=7)
    counts = stats.resample_counts(np.random.default_rng(7), labels.shape[0], 20)
    for b in range(20):
        rows = np.repeat(np.arange(labels.shape[0]), counts[b].astype(int))
        expected_f1 = f1_score(labels[rows], pred[rows], average="macro", zero_division=0)
        assert values[0, b] == pytest.approx(expected_f1, abs=1e-12)
        assert values[1, b] == pytest.approx(crg_score(labels[rows], pred[rows])["crg"], abs=1e-12)


def test_interval_contains_estimate_and_is_seeded(labels):
    pred = _system(3, labels, 0.25)
    rouge = np.random.default_rng(4).beta(4, 8, labels.shape[0])
    first = stats.label_intervals(labels, pred, rouge, n_resamples=500, seed=11)
    again = stats.label_intervals(labels, pred, rouge, n_resamples=500, seed=11)
    other = stats.label_intervals(labels, pred, rouge, n_resamples=500, seed=12)
    assert first == again
    assert first["macro_f1"]["low"] != other["macro_f1"]["low"]
    for name in ("macro_f1", "crg", "rouge_l"):
        ci = first[name]
        assert ci["low"] < ci["estimate"] < ci["high"], name
        assert ci["undefined"] == 0 and ci["level"] == 0.95 and ci["n_resamples"] == 500


def test_mean_interval_matches_the_normal_approximation():
    values = np.random.default_rng(5).normal(0.4, 0.1, 400)
    ci = stats.bootstrap_ci(stats.mean_statistic(values, "rouge_l"), n_resamples=4000, seed=0)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)  # 0.0098
    assert ci["estimate"] == pytest.approx(values.mean())
    assert ci["high"] - ci["low"] == pytest.approx(2 * half_width, rel=0.08)
    assert (ci["low"] + ci["high"]) / 2 == pytest.approx(values.mean(), abs=0.1 * half_width)


def test_identical_systems_differ_by_zero_with_p_one(labels):
    pred = _system(6, labels, 0.2)
    rouge = np.random.default_rng(6).random(labels.shape[0])
    out = stats.compare_systems(labels, pred, pred, rouge, rouge, n_permutations=500)
    for name in ("macro_f1", "crg", "rouge_l"):
        assert out[name]["difference"] == 0.0
        assert out[name]["p_value"] == 1.0
        assert out[name]["low"] == out[name]["high"] == 0.0


def test_a_large_difference_has_a_small_p_value(labels):
    good, bad = _system(7, labels, 0.05), _system(8, labels, 0.35)
    out = stats.compare_systems(labels, good, bad, n_permutations=2000, seed=1)
    for name in ("macro_f1", "crg"):
        assert out[name]["difference"] > 0
        assert out[name]["p_value"] == pytest.approx(1 / 2001)  # no permutation as extreme
        assert 0 < out[name]["low"] < out[name]["difference"] < out[name]["high"]
    swapped = stats.compare_systems(labels, bad, good, n_permutations=2000, seed=1)
    assert swapped["macro_f1"]["difference"] == pytest.approx(-out["macro_f1"]["difference"])


def test_equally_good_systems_are_not_told_apart(labels):
    a, b = _system(9, labels, 0.2), _system(10, labels, 0.2)
    out = stats.compare_systems(labels, a, b, n_permutations=2000, seed=2)
    assert out["macro_f1"]["p_value"] > 0.05
    assert out["macro_f1"]["low"] < 0 < out["macro_f1"]["high"]


def test_permutation_p_values_are_uniform_under_the_null():
    """Under H0 (both systems draw from the same error process) P(p <= 0.1) is about 0.1."""
    rng = np.random.default_rng(3)
    y_true = (rng.random((60, 4)) < 0.3).astype(int)
    p_values = []
    for trial in range(200):
        a, b = _system(100 + trial, y_true, 0.2), _system(500 + trial, y_true, 0.2)
        pair = stats.paired_comparison(
            stats.macro_f1_statistic(y_true, a),
            stats.macro_f1_statistic(y_true, b),
            n_resamples=1,
            n_permutations=199,
            seed=trial,
        )
        p_values.append(pair["p_value"])
    rejected = np.mean(np.array(p_values) <= 0.1)
    assert 0.04 <= rejected <= 0.17  # binomial(200, 0.1): mean 0.1, sd 0.021


def test_vectorised_speed():
    rng = np.random.default_rng(0)
    y_true = (rng.random((200, 18)) < 0.25).astype(int)
    pred = _system(1, y_true, 0.2)
    t = time.perf_counter()
    stats.label_intervals(y_true, pred, rng.random(200), n_resamples=1000, seed=0)
    assert time.perf_counter() - t < 2.0  # about 0.05 s; a per-resample loop takes seconds


def test_inputs_are_validated(labels):
    pred = _system(1, labels, 0.2)
    with pytest.raises(ValueError, match="different metrics"):
        stats.paired_comparison(
            stats.macro_f1_statistic(labels, pred), stats.crg_statistic(labels, pred)
        )
    with pytest.raises(ValueError, match="same volumes"):
        stats.paired_comparison(
            stats.macro_f1_statistic(labels, pred), stats.macro_f1_statistic(labels[:5], pred[:5])
        )
    with pytest.raises(ValueError, match="level must be in"):
        stats.bootstrap_ci(stats.mean_statistic([1.0, 2.0]), level=95)
    with pytest.raises(ValueError, match="row 1 holds NaN"):
        stats.mean_statistic([1.0, float("nan")], "rouge_l")
    with pytest.raises(ValueError, match="given together"):
        stats.compare_systems(labels, pred, pred, rouge_l_a=np.zeros(labels.shape[0]))
