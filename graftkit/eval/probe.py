"""Linear probe on mean-pooled visual tokens (docs/design.md "Evaluation"; paper Table VIII).

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


def mil_probe(
    train_tokens: Any,
    train_labels: Any,
    valid_tokens: Any,
    valid_labels: Any,
    *,
    steps: int = 1500,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """Linear MIL probe: ``Linear(d, C)`` on each of K tokens, max over tokens (docs/design.md MIL head).

    The probe the bridge's own MIL head is, fitted from scratch: how much of the labels a linear
    reader of *localised* tokens can decode (the mean-pooled :func:`linear_probe` dilutes a finding
    that sits in one zone). ``*_tokens`` are ``[n, K, d]``; features are standardised with the
    training statistics; full-batch AdamW on the class-balanced BCE of the max-pooled logits; one
    threshold per class chosen for F1 on train; scored on valid. Returns ``{"macro_f1",
    "macro_precision", "macro_recall", "per_class", "thresholds"}``. ``device``: where the fit
    runs (default the CPU; at CT-RATE's 47k training volumes a full-batch step is about 0.2 TFLOP).
    """
    import torch

    from graftkit.eval.metrics import multilabel_scores, optimise_thresholds

    def tensor(x: Any) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        if t.dim() != 3:
            raise ValueError(f"mil_probe: tokens must be [n, K, d], got shape {tuple(t.shape)}")
        return t

    device = torch.device(device) if device is not None else torch.device("cpu")
    xt, xv = tensor(train_tokens).to(device), tensor(valid_tokens).to(device)
    yt = torch.as_tensor(np.asarray(train_labels), dtype=torch.float32).to(device)
    yv = np.asarray(valid_labels).astype(np.int64)
    mean, std = xt.mean((0, 1)), xt.std((0, 1)).clamp_min(1e-6)
    xt, xv = (xt - mean) / std, (xv - mean) / std
    pos = yt.sum(0)
    pos_weight = ((len(yt) - pos) / pos.clamp_min(1)).clamp(max=10.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(xt.shape[-1], yt.shape[1]).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            logits = head(xt).amax(dim=1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, yt, pos_weight=pos_weight
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        p_train = torch.sigmoid(head(xt).amax(dim=1)).cpu().numpy()
        p_valid = torch.sigmoid(head(xv).amax(dim=1)).cpu().numpy()
    thresholds, _ = optimise_thresholds(
        np.asarray(train_labels).astype(np.int64), p_train, upper_bound=False
    )
    scores = multilabel_scores(yv, (p_valid >= thresholds).astype(np.int64), class_names)
    scores["thresholds"] = [float(t) for t in thresholds]
    return scores
