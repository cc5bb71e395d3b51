"""Linear probe on mean-pooled visual tokens (DESIGN.md "Evaluation"; paper Table VIII).

How much label information is linearly decodable from a representation, independent of the
language model: raw slice embeddings, then the tokens after each phase's checkpoint. For each of
the C classes a one-vs-rest logistic regression (standardised features, ``class_weight=
"balanced"``) is scored by stratified k-fold cross-validation; F1 and ROC AUC are computed on the
pooled out-of-fold predictions (every sample is scored exactly once, by a model that never saw
it). Classes with fewer positives (or negatives) than folds cannot be stratified and are skipped;
the result names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def _probe_model(seed: int, max_iter: int):
    return make_pipeline(
        StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=max_iter, random_state=seed),
    )


def out_of_fold_probabilities(
    features: np.ndarray, target: np.ndarray, folds: int, seed: int, max_iter: int = 1000
) -> np.ndarray:
    """P(positive) for every sample from the fold model that held it out (one binary class)."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = np.empty(len(target), dtype=np.float64)
    for train_idx, test_idx in splitter.split(features, target):
        model = _probe_model(seed, max_iter).fit(features[train_idx], target[train_idx])
        probs[test_idx] = model.predict_proba(features[test_idx])[:, 1]
    return probs


def linear_probe(
    features: Any,
    labels: Any,
    folds: int = 5,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
    max_iter: int = 1000,
) -> dict[str, Any]:
    """Cross-validated one-vs-rest logistic-regression probe of ``features[n, D]`` for ``labels[n, C]``.

    Returns ``{"macro_f1", "macro_auc", "per_class": {name: {"f1", "auc", "support"}},
    "evaluated": [...], "skipped": {name: reason}, "folds", "n"}``. Macro values average the
    evaluated classes only; they are ``None`` when every class was skipped. A sample is predicted
    positive when its out-of-fold probability is >= 0.5.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise ValueError(f"features must be [n, D] (mean-pooled tokens), got shape {x.shape}")
    if y.ndim != 2:
        raise ValueError(f"labels must be [n, C], got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features has {x.shape[0]} rows but labels has {y.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("features contains NaN or infinite values")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must hold only 0/1 values")
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    y = y.astype(np.int64)
    n_classes = y.shape[1]
    if class_names is None:
        names = [f"class_{c}" for c in range(n_classes)]
    else:
        names = [str(n) for n in class_names]
        if len(names) != n_classes:
            raise ValueError(
                f"class_names has {len(names)} names but labels has {n_classes} columns"
            )

    per_class: dict[str, dict[str, float | int]] = {}
    skipped: dict[str, str] = {}
    for c, name in enumerate(names):
        positives = int(y[:, c].sum())
        negatives = int(len(y) - positives)
        if positives < folds or negatives < folds:
            skipped[name] = (
                f"{positives} positives / {negatives} negatives: fewer than {folds} folds"
            )
            continue
        probs = out_of_fold_probabilities(x, y[:, c], folds, seed, max_iter)
        per_class[name] = {
            "f1": float(f1_score(y[:, c], probs >= 0.5, zero_division=0)),
            "auc": float(roc_auc_score(y[:, c], probs)),
            "support": positives,
        }

    evaluated = list(per_class)
    return {
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])) if evaluated else None,
        "macro_auc": float(np.mean([v["auc"] for v in per_class.values()])) if evaluated else None,
        "per_class": per_class,
        "evaluated": evaluated,
        "skipped": skipped,
        "folds": int(folds),
        "n": int(x.shape[0]),
    }
