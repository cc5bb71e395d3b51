"""Linear probe: cross-validated logistic regression per class, skipped classes, signal vs noise."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from graftkit.eval.probe import linear_probe


def _cohort(seed: int = 0, n: int = 120, d: int = 12):
    """Class 0 is linearly encoded in feature 0, class 1 is pure noise, class 2 has 3 positives."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 3), dtype=int)
    labels[:, 0] = rng.random(n) < 0.3
    labels[:, 1] = rng.random(n) < 0.4
    labels[rng.choice(n, 3, replace=False), 2] = 1
    features = rng.normal(size=(n, d)) * rng.uniform(0.5, 20, d)  # unequal scales: needs scaling
    features[:, 0] += 3.0 * features[:, 0].std() * labels[:, 0]
    return features, labels


def _reference_class(features, target, folds, seed):
    """The protocol written out by hand for one class."""
    probs = np.empty(len(target))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(
        features, target
    ):
        scaler = StandardScaler().fit(features[train])
        model = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed)
        model.fit(scaler.transform(features[train]), target[train])
        probs[test] = model.predict_proba(scaler.transform(features[test]))[:, 1]
    return f1_score(target, probs >= 0.5), roc_auc_score(target, probs)


def test_probe_matches_hand_written_protocol_and_skips_rare_classes():
    features, labels = _cohort()
    result = linear_probe(
        features, labels, folds=5, seed=0, class_names=["signal", "noise", "rare"]
    )
    assert result["evaluated"] == ["signal", "noise"]
    assert list(result["skipped"]) == ["rare"]
    assert "3 positives" in result["skipped"]["rare"]
    for c, name in enumerate(["signal", "noise"]):
        f1, auc = _reference_class(features, labels[:, c], 5, 0)
        assert result["per_class"][name]["f1"] == pytest.approx(f1, abs=1e-9)
        assert result["per_class"][name]["auc"] == pytest.approx(auc, abs=1e-9)
        assert result["per_class"][name]["support"] == int(labels[:, c].sum())
    assert result["macro_f1"] == pytest.approx(
        np.mean([result["per_class"][n]["f1"] for n in ("signal", "noise")])
    )
    assert result["folds"] == 5 and result["n"] == len(features)


def test_probe_separates_signal_from_noise_and_shuffling_destroys_signal():
    features, labels = _cohort(seed=1)
    result = linear_probe(features, labels)
    assert result["per_class"]["class_0"]["auc"] > 0.9
    assert abs(result["per_class"]["class_1"]["auc"] - 0.5) < 0.2
    shuffled = features[np.random.default_rng(0).permutation(len(features))]
    broken = linear_probe(shuffled, labels)
    assert broken["per_class"]["class_0"]["auc"] < 0.75


def test_folds_decide_what_is_skipped_and_all_skipped_gives_none():
    features, labels = _cohort()
    assert "class_2" in linear_probe(features, labels, folds=3)["evaluated"]
    result = linear_probe(features[:, :2], labels[:, 2:], folds=5)
    assert result["macro_f1"] is None and result["macro_auc"] is None
    assert result["evaluated"] == []


def test_probe_input_errors():
    features, labels = _cohort()
    with pytest.raises(ValueError, match="features has 119 rows but labels has 120"):
        linear_probe(features[1:], labels)
    with pytest.raises(ValueError, match=r"\[n, D\]"):
        linear_probe(features[None], labels)
    with pytest.raises(ValueError, match="0/1"):
        linear_probe(features, labels * 2)
