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

Beside the macro average (:func:`f1_averages`), with TP/FP/FN summed over classes:

* micro F1    = 2·ΣTP / (2·ΣTP + ΣFP + ΣFN), 0 when nothing is positive or predicted;
* weighted F1 = Σ_c support_c · F1_c / Σ_c support_c, 0 when no class has a positive

(scikit-learn's ``f1_score(average="micro" / "weighted", zero_division=0)``).

The CRG score (:func:`crg_score`) and the expected scores of reports that name findings at random
(:func:`expected_scores`, :func:`all_positive_baseline`, :func:`prevalence_baseline`) put a macro
F1 beside what trivial output gets on the same volumes; :func:`skill_score` rescales a score
between such a baseline and a ceiling.
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


def _label_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_pred`` as boolean ``[n, C]`` arrays of one shape with n >= 1."""
    truth = _as_binary(y_true, "y_true")
    pred = _as_binary(y_pred, "y_pred")
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has shape {truth.shape} but y_pred has shape {pred.shape}")
    if truth.shape[0] == 0:
        raise ValueError("cannot score an empty set: y_true has 0 rows")
    return truth, pred


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
    truth, pred = _label_pair(y_true, y_pred)
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


class MetricUnavailableError(RuntimeError):
    """A metric cannot be computed here: a program, data file or model it needs is absent.

    Raised instead of returning a placeholder value, so a missing metric is never read as a 0.
    """


def confusion_counts(y_true: Any, y_pred: Any) -> dict[str, np.ndarray]:
    """Per-class ``tp``, ``fp``, ``fn`` and ``support`` (= tp + fn) of 0/1 arrays ``[n, C]``."""
    truth, pred = _label_pair(y_true, y_pred)
    tp = (truth & pred).sum(axis=0)
    fp = (~truth & pred).sum(axis=0)
    fn = (truth & ~pred).sum(axis=0)
    return {"tp": tp, "fp": fp, "fn": fn, "support": tp + fn}


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2·TP / (2·TP + FP + FN) elementwise, 0 where the denominator is 0."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denominator = 2.0 * tp + fp + fn
    return np.divide(2.0 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def f1_averages(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Macro, micro and support-weighted F1 of 0/1 predictions ``[n, C]`` (module docstring).

    Returns ``{"macro_f1", "micro_f1", "weighted_f1"}``; each equals scikit-learn's
    ``f1_score(y_true, y_pred, average=..., zero_division=0)``.
    """
    counts = confusion_counts(y_true, y_pred)
    per_class = _f1(counts["tp"], counts["fp"], counts["fn"])
    support = counts["support"].astype(np.float64)
    total = support.sum()
    return {
        "macro_f1": float(per_class.mean()),
        "micro_f1": float(_f1(counts["tp"].sum(), counts["fp"].sum(), counts["fn"].sum())),
        "weighted_f1": float((support * per_class).sum() / total) if total > 0 else 0.0,
    }


def crg_from_counts(tp: Any, fn: Any, fp: Any, n_cells: Any, n_positive: Any) -> np.ndarray | float:
    """CRG from pooled counts (see :func:`crg_score`); NaN where it is undefined.

    Works elementwise on arrays (the bootstrap evaluates it on every resample at once).
    ``n_cells`` is T (volumes x classes), ``n_positive`` is A (positive reference cells).
    """
    tp, fn, fp, t, a = (np.asarray(x, dtype=np.float64) for x in (tp, fn, fp, n_cells, n_positive))
    defined = (a > 0) & (a < t)
    safe_a = np.where(defined, a, 1.0)
    w = np.where(defined, (t - a) / (2.0 * safe_a), 0.0)
    s_max = safe_a * w
    s = w * tp - w * fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        crg = np.where(defined, s_max / (2.0 * s_max - s), np.nan)
    return float(crg) if crg.ndim == 0 else crg


def crg_score(y_true: Any, y_pred: Any) -> dict[str, float]:
    """CRG score of 0/1 label predictions ``[n, C]`` (Hamamci et al., MIDL 2025, arXiv 2505.17167).

    With the counts pooled over all n·C label cells (the VLM3D challenge's reference scorer,
    ``ct_challenges/reportgen_evaluation/src/crg_score.py`` in github.com/forithmus/VLM3D-Dockers,
    counts them so: X = labels per exam x exams, A = all positive ground-truth cells):

        T = n·C,  A = Σ y_true,  w = w_TP = w_FN = (T - A) / (2A),  w_FP = 1,
        s = w·TP - w·FN - FP,  S_max = A·w = (T - A) / 2,
        CRG = S_max / (2·S_max - s)

    True negatives are ignored; a missed or a found finding weighs w, a false finding 1, so that
    the total weight of the positives (A·w) equals half that of the negatives. The score is
    bounded: s ≤ S_max (every positive found, nothing invented) gives CRG = 1, and s ≥ -3·S_max
    (nothing found, every negative cell claimed) gives 1/5. Both trivial reports, naming every
    finding (s = S_max - 2·S_max) and naming none (s = -S_max), score exactly 1/3. s is negative
    for most real systems; that is within the normalised range, not an edge case.

    Undefined, and a ``ValueError``, when A = 0 (no positive cell: the challenge's scorer raises
    too) or A = T (no negative cell: w = S_max = 0 and CRG = 0/0; the challenge's scorer returns
    0 there).

    Returns ``{"crg", "tp", "fn", "fp", "t", "a", "w", "s", "s_max"}``.
    """
    counts = confusion_counts(y_true, y_pred)
    truth = _as_binary(y_true, "y_true")
    t = int(truth.size)
    a = int(truth.sum())
    if a == 0:
        raise ValueError("CRG is undefined: y_true has no positive label (A = 0)")
    if a == t:
        raise ValueError("CRG is undefined: every label cell of y_true is positive (A = T)")
    tp, fn, fp = (int(counts[k].sum()) for k in ("tp", "fn", "fp"))
    w = (t - a) / (2.0 * a)
    s = w * tp - w * fn - fp
    return {
        "crg": float(crg_from_counts(tp, fn, fp, t, a)),
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "t": t,
        "a": a,
        "w": w,
        "s": s,
        "s_max": a * w,
    }


_PMF_FLOOR = 1e-20  # binomial terms below this are dropped; their total mass is < (n + 1) * 1e-20


def _binomial_pmf(n: int, p: float) -> tuple[int, np.ndarray]:
    """``(offset, pmf)`` of Binomial(n, p) over the values ``offset + i`` where the pmf is non-negligible."""
    from scipy.stats import binom

    pmf = binom.pmf(np.arange(n + 1), n, p)
    keep = np.flatnonzero(pmf >= _PMF_FLOOR)
    return int(keep[0]), pmf[keep[0] : keep[-1] + 1]


def _sum_pmf(parts: list[tuple[int, np.ndarray]]) -> tuple[int, np.ndarray]:
    """The pmf of a sum of independent variables, each given as ``(offset, pmf)``."""
    offset, pmf = 0, np.ones(1)
    for part_offset, part in parts:
        offset += part_offset
        pmf = np.convolve(pmf, part)
        keep = np.flatnonzero(pmf >= _PMF_FLOOR)
        offset += int(keep[0])
        pmf = pmf[keep[0] : keep[-1] + 1]
    return offset, pmf


def expected_scores(y_true: Any, probabilities: Any) -> dict[str, Any]:
    """Exact expected macro F1 and CRG of reports that name each finding c at random with probability p_c.

    Every label cell of a report is drawn independently, positive with probability p_c for its
    class c, whatever the volume. For class c with P_c positive and N_c negative volumes,
    TP_c ~ Binomial(P_c, p_c) and FP_c ~ Binomial(N_c, p_c) are independent, FN_c = P_c - TP_c, so

        E[F1_c] = Σ_k Σ_j Bin(k; P_c, p_c) · Bin(j; N_c, p_c) · 2k / (k + P_c + j)

    (F1_c = 2·TP / (2·TP + FP + FN); 0 when P_c = 0, as scored) and E[macro F1] is the mean of
    the E[F1_c] (linearity). CRG depends on the pooled counts TP = Σ_c TP_c and FP = Σ_c FP_c,
    independent sums of binomials whose pmfs are the convolutions of the class pmfs; with
    s = 2w·TP - S_max - FP (:func:`crg_score`),

        E[CRG] = Σ_i Σ_j Pr(TP = i) · Pr(FP = j) · S_max / (3·S_max - 2w·i + j).

    Both expectations are taken exactly, by these finite sums, not by sampling or a delta-method
    approximation. Binomial terms below 1e-20 are dropped; both scores lie in [0, 1], so the error
    is below the dropped probability mass, at most 1e-20 per dropped term (below 1e-11 up to a
    million volumes of 18 classes). A 0 or 1 probability gives the deterministic report: p = 1 for every
    class is the all-positive report.

    Returns ``{"macro_f1", "crg", "per_class_f1": [C]}``; ``crg`` is None where CRG is undefined
    (A = 0 or A = T, see :func:`crg_score`).
    """
    truth = _as_binary(y_true, "y_true")
    if truth.shape[0] == 0:
        raise ValueError("cannot score an empty set: y_true has 0 rows")
    p = np.asarray(probabilities, dtype=np.float64)
    n_classes = truth.shape[1]
    if p.shape != (n_classes,):
        raise ValueError(
            f"probabilities must hold one value per class ({n_classes}), got shape {p.shape}"
        )
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        bad = int(np.flatnonzero(~(np.isfinite(p) & (p >= 0) & (p <= 1)))[0])
        raise ValueError(f"probabilities[{bad}] = {float(p[bad])!r} is not a probability in [0, 1]")

    positives = truth.sum(axis=0).astype(int)
    negatives = truth.shape[0] - positives
    per_class = np.zeros(n_classes)
    tp_parts, fp_parts = [], []
    for c in range(n_classes):
        big_p, big_n = int(positives[c]), int(negatives[c])
        tp_offset, tp_pmf = _binomial_pmf(big_p, float(p[c]))
        fp_offset, fp_pmf = _binomial_pmf(big_n, float(p[c]))
        tp_parts.append((tp_offset, tp_pmf))
        fp_parts.append((fp_offset, fp_pmf))
        if big_p == 0:
            continue
        k = tp_offset + np.arange(tp_pmf.size, dtype=np.float64)[:, None]
        j = fp_offset + np.arange(fp_pmf.size, dtype=np.float64)[None, :]
        f1 = 2.0 * k / (k + big_p + j)
        per_class[c] = float(tp_pmf @ f1 @ fp_pmf)

    t, a = truth.size, int(positives.sum())
    crg = None
    if 0 < a < t:
        w = (t - a) / (2.0 * a)
        s_max = a * w
        tp_offset, tp_pmf = _sum_pmf(tp_parts)
        fp_offset, fp_pmf = _sum_pmf(fp_parts)
        i = tp_offset + np.arange(tp_pmf.size, dtype=np.float64)[:, None]
        j = fp_offset + np.arange(fp_pmf.size, dtype=np.float64)[None, :]
        crg = float(tp_pmf @ (s_max / (3.0 * s_max - 2.0 * w * i + j)) @ fp_pmf)
    return {"macro_f1": float(per_class.mean()), "crg": crg, "per_class_f1": per_class.tolist()}


def all_positive_baseline(y_true: Any) -> dict[str, Any]:
    """Macro F1 and CRG of the report that names every finding, on these volumes' labels.

    Deterministic (:func:`expected_scores` with p_c = 1): per class F1_c = 2·P_c / (2·P_c + N_c)
    (0 for a class with no positive), and CRG = 1/3 exactly (:func:`crg_score`).
    """
    truth = _as_binary(y_true, "y_true")
    return expected_scores(truth, np.ones(truth.shape[1]))


def prevalence_baseline(y_true: Any, prevalence: Any) -> dict[str, Any]:
    """Expected macro F1 and CRG of reports naming each finding c at random with its prevalence.

    ``prevalence[C]`` is each class's positive fraction on the *training* split; the labels
    scored are ``y_true`` (the evaluated volumes). An expectation, not a sample
    (:func:`expected_scores`).
    """
    return expected_scores(y_true, prevalence)


def skill_score(score: float, baseline: float, ceiling: float | None) -> float | None:
    """(score - baseline) / (ceiling - baseline): 0 at the baseline, 1 at the ceiling.

    With the all-positive report's macro F1 as ``baseline`` and a cohort oracle's as ``ceiling``
    this is the share of the achievable gain over trivial output that a model realises; it is
    negative below the baseline. None when there is no ceiling or the ceiling does not exceed the
    baseline (the ratio then says nothing).
    """
    for name, value in (("score", score), ("baseline", baseline), ("ceiling", ceiling)):
        if value is not None and not np.isfinite(value):
            raise ValueError(f"skill_score: {name} must be finite, got {value!r}")
    if ceiling is None or ceiling <= baseline:
        return None
    return float((score - baseline) / (ceiling - baseline))
