"""Multi-label scores for report generation (docs/design.md "Evaluation").

The 18 labels extracted from a generated report are compared with the volume's labels; the paper
reports macro F1 / precision / recall and the per-class values. Per-class threshold optimisation
on classifier-head probabilities is the paper's "0.448 with per-class thresholds" figure: tuned on
the split it is scored on, it leaks, so it is flagged as an upper bound.

The scores are scikit-learn's ``precision_recall_fscore_support(average=None,
zero_division=0)``: a ratio whose denominator is 0 is 0. Concretely, per class with TP/FP/FN counts

* precision = TP / (TP + FP), 0 when nothing was predicted positive;
* recall    = TP / (TP + FN), 0 when the class has no positives;
* F1        = 2·TP / (2·TP + FP + FN), 0 when the class has no positives *and* no predictions.

Macro averages are unweighted means over *all* classes, including such empty ones (so a class
absent from the split and never predicted pulls the macro score down, as in scikit-learn).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_THRESHOLD_GRID: tuple[float, ...] = tuple(np.round(np.linspace(0.05, 0.95, 19), 2))


def _as_binary(array: Any, name: str) -> np.ndarray:
    out = np.asarray(array)
    if out.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [n, C] array, got shape {out.shape}")
    if out.dtype == bool:
        return out
    if not np.isin(out, (0, 1)).all():
        bad = np.argwhere(~np.isin(out, (0, 1)))[0]
        raise ValueError(
            f"{name} must hold only 0/1 values; {name}[{bad[0]}, {bad[1]}] = {out[tuple(bad)].item()!r}"
        )
    return out.astype(bool)


def _class_names(class_names: Sequence[str] | None, n_classes: int) -> list[str]:
    if class_names is None:
        return [f"class_{c}" for c in range(n_classes)]
    names = [str(n) for n in class_names]
    if len(names) != n_classes:
        raise ValueError(
            f"class_names has {len(names)} names but the label arrays have {n_classes} columns"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"class_names contains duplicates: {names}")
    return names


def _per_class_scores(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class ``(precision, recall, f1, support)`` of ``[n, C]`` 0/1 arrays (scikit-learn)."""
    from sklearn.metrics import precision_recall_fscore_support

    if truth.shape[1] == 1:  # one column reads as a binary vector to scikit-learn: score class 1
        return precision_recall_fscore_support(
            truth[:, 0], pred[:, 0], labels=[True], average=None, zero_division=0
        )
    return precision_recall_fscore_support(truth, pred, average=None, zero_division=0)


def multilabel_scores(
    y_true: Any, y_pred: Any, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Macro and per-class F1 / precision / recall of 0/1 predictions ``[n, C]`` vs labels ``[n, C]``.

    Returns ``{"macro_f1", "macro_precision", "macro_recall", "n",
    "per_class": {name: {"f1", "precision", "recall", "support"}}}``; ``support`` is the number
    of positive labels. Zero divisions give 0 (module docstring; matches scikit-learn's
    ``zero_division=0``).
    """
    truth = _as_binary(y_true, "y_true")
    pred = _as_binary(y_pred, "y_pred")
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has shape {truth.shape} but y_pred has shape {pred.shape}")
    if truth.shape[0] == 0:
        raise ValueError("cannot score an empty set: y_true has 0 rows")
    names = _class_names(class_names, truth.shape[1])
    precision, recall, f1, support = _per_class_scores(truth, pred)
    per_class = {
        name: {
            "f1": float(f1[c]),
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(names)
    }
    return {
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "n": int(truth.shape[0]),
        "per_class": per_class,
    }


def optimise_thresholds(
    y_true: Any,
    probs: Any,
    grid: Sequence[float] = DEFAULT_THRESHOLD_GRID,
    *,
    class_names: Sequence[str] | None = None,
    upper_bound: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-class decision thresholds on classifier-head probabilities that maximise each class's F1.

    A class is predicted positive when ``prob >= threshold``. Each class picks the grid value with
    the highest F1 on ``(y_true, probs)``; ties go to the value closest to 0.5 (the untuned
    default), then to the lower value. ``upper_bound`` must be True when the thresholds are tuned
    on the split being scored (docs/design.md "Evaluation": the paper's 0.448 leaks); it is copied into
    the returned scores so every consumer sees the flag.

    Returns ``(thresholds[C], scores)`` where ``scores`` is :func:`multilabel_scores` at those
    thresholds plus ``"thresholds": {name: t}`` and ``"upper_bound"``.
    """
    truth = _as_binary(y_true, "y_true")
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != truth.shape:
        raise ValueError(f"probs has shape {p.shape} but y_true has shape {truth.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    candidates = np.asarray(sorted({float(t) for t in grid}), dtype=np.float64)
    if candidates.size == 0:
        raise ValueError("grid must hold at least one threshold")
    names = _class_names(class_names, truth.shape[1])

    f1 = np.stack([_per_class_scores(truth, p >= t)[2] for t in candidates])  # [G, C]
    # lexicographic choice: highest F1, then closest to 0.5, then lowest threshold
    closeness = -np.abs(candidates - 0.5)
    shape = f1.shape
    order = np.lexsort(
        (
            np.broadcast_to(-candidates[:, None], shape),
            np.broadcast_to(closeness[:, None], shape),
            f1,
        ),
        axis=0,
    )
    best = order[-1]
    thresholds = candidates[best]

    scores = multilabel_scores(truth, p >= thresholds[None, :], names)
    scores["thresholds"] = {name: float(t) for name, t in zip(names, thresholds)}
    scores["upper_bound"] = bool(upper_bound)
    return thresholds, scores
