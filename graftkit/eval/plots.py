"""Figures for the run report, drawn with matplotlib's Agg canvas.

Every function takes already-parsed run data and returns a :class:`matplotlib.figure.Figure`
bound to an Agg canvas (no pyplot, no global backend switch, safe in a training process), or
``None`` when the data hold nothing to draw. :func:`figure_png` renders a figure to PNG bytes.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from graftkit.rundir import HISTORY_BOOKKEEPING

DPI = 110
PHASE_SHADES = ("#f2f2f2", "#ffffff")
ABLATION_ORDER = ("real", "zero", "shuffle", "random")
ABLATION_LABELS = {
    "real": "real",
    "zero": "zeroed",
    "shuffle": "shuffled\n(other patient)",
    "random": "random",
}
METRIC_LABELS = {"f1": "F1", "precision": "precision", "recall": "recall"}
#: history keys that are bookkeeping, not metrics: the run folder's contract
#: (:data:`graftkit.rundir.HISTORY_BOOKKEEPING`) plus an event row's keys
NON_METRIC_KEYS = frozenset({*HISTORY_BOOKKEEPING, "event", "changes"})
#: prefixes of the per-term loss columns the trainer writes (``train_bce``, ``valid_total``, ...)
LOSS_PREFIXES = ("train_", "valid_")
#: words that make a column a score even under a loss prefix (``valid_macro_f1``, ``val_auc``)
SCORE_WORDS = frozenset(
    {"f1", "auc", "acc", "accuracy", "precision", "recall", "top1", "top5", "reliance"}
)


def is_loss_key(key: str) -> bool:
    """Loss-like series (plotted as loss curves, not as scores).

    A column is a loss when its name contains ``loss`` or ``nll``, or when it is a per-term
    column of ``history.jsonl`` (``train_<term>`` / ``valid_<term>``: ``train_bce``,
    ``valid_total``, ...), unless one of its words names a score (``valid_macro_f1``).
    """
    lowered = key.lower()
    words = set(lowered.replace(".", "_").replace(" ", "_").split("_"))
    if words & SCORE_WORDS:
        return False
    return "loss" in lowered or "nll" in lowered or lowered.startswith(LOSS_PREFIXES)


def loss_term(key: str) -> tuple[str, str]:
    """``(split, term)`` of a loss column: ``valid_total`` -> ``("valid", "total")``;
    an unprefixed column (``loss``) is a training series."""
    lowered = key.lower()
    for prefix in LOSS_PREFIXES:
        if lowered.startswith(prefix):
            return ("train" if prefix == "train_" else "valid"), key[len(prefix) :]
    return "train", key


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _phase_of(row: Mapping[str, Any]) -> int:
    return int(row["phase"])


def _group_by_phase(rows: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_phase_of(row), []).append(row)
    return dict(sorted(groups.items()))


def _series_keys(rows: Sequence[Mapping[str, Any]], want_loss: bool) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key in NON_METRIC_KEYS or key in keys or not is_number(value):
                continue
            if is_loss_key(key) == want_loss:
                keys.append(key)
    return keys


def _epoch_axis(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    return [float(row.get("epoch", i)) for i, row in enumerate(rows)]


def _shade_phases(ax, spans: list[tuple[int, float, float]]) -> None:
    """Alternate background bands, one per phase, labelled at the top of the axes."""
    for i, (phase, start, stop) in enumerate(spans):
        ax.axvspan(start - 0.5, stop + 0.5, color=PHASE_SHADES[i % 2], zorder=0)
        ax.text(
            (start + stop) / 2,
            1.0,
            f"phase {phase}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=9,
            color="#444444",
        )


def loss_curves(history: Sequence[Mapping[str, Any]]) -> Figure | None:
    """One panel per phase: every loss term of ``history.jsonl`` against the epoch.

    A term keeps one colour within a panel; training is solid, validation dashed.
    """
    groups = {p: rows for p, rows in _group_by_phase(history).items() if _series_keys(rows, True)}
    if not groups:
        return None
    cols = 1 if len(groups) == 1 else 2
    nrows = math.ceil(len(groups) / cols)
    fig = new_figure(5.2 * cols + 0.6, 3.3 * nrows + 0.5)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    for ax, (phase, rows) in zip(axes, groups.items()):
        terms: list[str] = []
        epochs = _epoch_axis(rows)
        for key in _series_keys(rows, True):
            split, term = loss_term(key)
            if term not in terms:
                terms.append(term)
            points = [(x, r[key]) for x, r in zip(epochs, rows) if is_number(r.get(key))]
            xs, ys = zip(*points)
            ax.plot(
                xs,
                ys,
                color=f"C{terms.index(term) % 10}",
                ls="-" if split == "train" else "--",
                marker="o" if split == "train" else "s",
                markersize=4 if split == "train" else 3,
                mfc="none" if split == "valid" else None,
            )
        # one legend entry per term (its colour) and one per split (its line style)
        handles = [Line2D([], [], color=f"C{i % 10}", lw=2, label=t) for i, t in enumerate(terms)]
        handles += [
            Line2D([], [], color="#444444", ls="-", marker="o", markersize=4, label="train"),
            Line2D([], [], color="#444444", ls="--", marker="s", mfc="none", label="validation"),
        ]
        ax.set_title(f"Phase {phase}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(
            handles=handles,
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0,
        )
    fig.suptitle("Training loss per phase (solid: train, dashed: validation)")
    return fig


def flatten_numeric(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_numeric(value, f"{name}."))
        elif is_number(value):
            flat[name] = float(value)
    return flat


def flatten_phase_metrics(phases: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """``metrics.json`` ``phases`` as ``{phase: {dotted.key: value}}`` (numeric leaves only).

    The engine's ``{"metric": "gen_f1", "best": 0.41}`` pair becomes ``"gen_f1 (best)": 0.41``, so
    the value is named by what it measures.
    """
    out: dict[int, dict[str, float]] = {}
    for p, value in sorted(phases.items(), key=lambda kv: int(kv[0])):
        value = dict(value)
        if isinstance(value.get("metric"), str) and is_number(value.get("best")):
            value[f"{value.pop('metric')} (best)"] = value.pop("best")
        out[int(p)] = flatten_numeric(value)
    return out


def _is_score(key: str, value: float) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return leaf not in NON_METRIC_KEYS and not is_loss_key(key) and 0.0 <= value <= 1.0


def _legend_outside(ax, entries: int) -> None:
    ax.legend(
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
        ncol=1 if entries <= 14 else 2,
    )


def metric_progression(
    history: Sequence[Mapping[str, Any]], phases: Mapping[str, Any] | None
) -> Figure | None:
    """Score metrics across the curriculum.

    Top: per-epoch non-loss metrics of ``history.jsonl`` on one epoch axis spanning all phases.
    Bottom: end-of-phase scores from ``metrics.json`` ``phases`` (leaves in [0, 1]) by phase.
    Legends sit beside the axes, so many series never squash the plot.
    """
    epoch_keys = _series_keys(history, False)
    flat = flatten_phase_metrics(phases or {})
    all_keys = {k for m in flat.values() for k in m}
    score_keys = sorted(
        k for k in all_keys if all(_is_score(k, m[k]) for m in flat.values() if k in m)
    )
    panels = [keys for keys in (epoch_keys, score_keys) if keys]
    if not panels:
        return None
    heights = [max(3.0, 1.2 + 0.2 * min(len(keys), 14)) for keys in panels]
    fig = new_figure(9.0, sum(heights) + 0.6)
    axes = list(fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0])
    if epoch_keys:
        ax = axes.pop(0)
        spans = []
        offset = 0
        for phase, rows in _group_by_phase(history).items():
            spans.append((phase, offset, offset + len(rows) - 1))
            offset += len(rows)
        _shade_phases(ax, spans)
        for k, key in enumerate(epoch_keys):
            index, label = 0, key
            # one line per phase: epochs of different phases are not one continuous curve
            for rows in _group_by_phase(history).values():
                xs, ys = [], []
                for row in rows:
                    if is_number(row.get(key)):
                        xs.append(index)
                        ys.append(row[key])
                    index += 1
                if xs:
                    ax.plot(xs, ys, marker="o", markersize=3, color=f"C{k % 10}", label=label)
                    label = None
        ax.set_xlabel("epoch (all phases, in order)")
        ax.set_ylabel("value")
        values = [r[k] for r in history for k in epoch_keys if is_number(r.get(k))]
        if all(0.0 <= v <= 1.0 for v in values):
            ax.set_ylim(-0.02, 1.02)
        ax.set_title("Per-epoch metrics (history.jsonl)", pad=16)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        _legend_outside(ax, len(epoch_keys))
    if score_keys:
        ax = axes.pop(0)
        for key in score_keys:
            points = [(p, m[key]) for p, m in flat.items() if key in m]
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=key)
        ax.set_xticks(sorted(flat))
        ax.set_xticklabels([f"P{p}" for p in sorted(flat)])
        ax.set_xlabel("phase")
        ax.set_ylabel("score")
        ax.set_ylim(0, 1.02)
        ax.set_title("End-of-phase scores (metrics.json phases)")
        ax.grid(alpha=0.3)
        _legend_outside(ax, len(score_keys))
    fig.suptitle("Metric progression across phases")
    return fig


def f1_of(value: Any) -> float | None:
    if isinstance(value, Mapping):
        value = value.get("f1")
    return float(value) if is_number(value) else None


def per_class_f1(
    per_class: Mapping[str, Mapping[str, Any]],
    prevalence: Mapping[str, float] | None = None,
    oracle_per_class: Mapping[str, Any] | None = None,
    macro_f1: float | None = None,
    oracle_macro_f1: float | None = None,
) -> Figure:
    """Per-class generation F1 next to the class's prevalence and the oracle's F1.

    Classes are sorted by prevalence (most frequent on top) when prevalence is known.
    """
    names = list(per_class)
    if prevalence:
        names.sort(key=lambda n: -float(prevalence.get(n, 0.0)))
    series: list[tuple[str, list[float], str]] = [
        ("generation F1", [float(per_class[n]["f1"]) for n in names], "#1f77b4")
    ]
    if oracle_per_class:
        series.append(
            ("oracle F1", [f1_of(oracle_per_class.get(n)) or 0.0 for n in names], "#ff7f0e")
        )
    if prevalence:
        series.append(("prevalence", [float(prevalence.get(n, 0.0)) for n in names], "#7f7f7f"))
    fig = new_figure(8.5, 1.8 + 0.15 * len(names) * len(series) + 0.1 * len(names))
    ax = fig.subplots()
    y = np.arange(len(names))
    height = 0.8 / len(series)
    for i, (label, values, color) in enumerate(series):
        ax.barh(y - 0.4 + height * (i + 0.5), values, height=height, label=label, color=color)
    if macro_f1 is not None:
        ax.axvline(macro_f1, color="#1f77b4", ls="--", lw=1, label=f"macro F1 {macro_f1:.3f}")
    if oracle_macro_f1 is not None:
        ax.axvline(
            oracle_macro_f1,
            color="#ff7f0e",
            ls=":",
            lw=1.2,
            label=f"oracle macro F1 {oracle_macro_f1:.3f}",
        )
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 / fraction of volumes")
    fig.suptitle("Per-class F1 vs prevalence and oracle")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    return fig


def ablation_scores(value: Any) -> dict[str, float]:
    """``{"f1", "precision", "recall"}`` of one ablation condition: a bare F1, a ``{f1, ...}``
    dict or the ``{macro_f1, macro_precision, macro_recall}`` dict ``graftkit eval`` writes."""
    if isinstance(value, Mapping):
        out = {}
        for k in ("f1", "precision", "recall"):
            v = value.get(k, value.get(f"macro_{k}"))
            if is_number(v):
                out[k] = float(v)
        return out
    return {"f1": float(value)} if is_number(value) else {}


def ablation_bars(ablation: Mapping[str, Any]) -> Figure | None:
    """Generation scores with real / zeroed / shuffled / random visual tokens, and (when present)
    teacher-forced NLL on finding words vs other words (paper Table X)."""
    conditions = [c for c in ABLATION_ORDER if ablation_scores(ablation.get(c))]
    nll = ablation.get("nll") if isinstance(ablation.get("nll"), Mapping) else {}
    nll_conditions = [c for c in ABLATION_ORDER if isinstance(nll.get(c), Mapping)]
    panels = int(bool(conditions)) + int(bool(nll_conditions))
    if panels == 0:
        return None
    fig = new_figure(5.8 * panels, 4.0)
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if conditions:
        ax = axes.pop(0)
        scores = {c: ablation_scores(ablation[c]) for c in conditions}
        metrics = [m for m in ("f1", "precision", "recall") if any(m in s for s in scores.values())]
        x = np.arange(len(conditions))
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            present = [j for j, c in enumerate(conditions) if metric in scores[c]]
            bars = ax.bar(
                x[present] - 0.4 + width * (i + 0.5),
                [scores[conditions[j]][metric] for j in present],
                width=width,
                label=f"macro {METRIC_LABELS[metric]}",
            )
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
        ax.set_xticks(x)
        ax.set_xticklabels([ABLATION_LABELS[c] for c in conditions], fontsize=9)
        ax.set_ylabel("score")
        top = max(v for s in scores.values() for v in s.values())
        ax.set_ylim(0, max(0.1, top * 1.2))
        title = "Generation with ablated visual tokens"
        if "real" in scores and "zero" in scores and scores["real"]["f1"] > 0:
            drop = 1 - scores["zero"]["f1"] / scores["real"]["f1"]
            title += f"\nzeroing removes {100 * drop:.1f} % of F1"
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    if nll_conditions:
        ax = axes.pop(0)
        word_kinds = [k for k in ("finding", "other") if any(k in nll[c] for c in nll_conditions)]
        x = np.arange(len(nll_conditions))
        width = 0.8 / max(1, len(word_kinds))
        for i, kind in enumerate(word_kinds):
            values = [float(nll[c].get(kind, np.nan)) for c in nll_conditions]
            bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width=width, label=f"{kind} words")
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.set_xticks(x)
        ax.set_xticklabels([ABLATION_LABELS[c] for c in nll_conditions], fontsize=9)
        ax.set_ylabel("teacher-forced NLL (nats/token)")
        ax.set_title("NLL with ablated visual tokens")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


PROBE_METRIC_LABELS = {"macro_f1": "macro F1", "macro_auc": "macro ROC AUC"}


#: The pooled linear probe's key for the raw slice embeddings: ``slice_mean`` (``raw`` in
#: metrics.json files written before it was renamed, still read).
SLICE_MEAN_KEYS = ("slice_mean", "raw")


def probe_stages(probe: Mapping[str, Any]) -> list[str]:
    """The probe keys in curriculum order: the raw slice embeddings (``slice_mean``, or ``raw``
    in older files) first, then ``p{n}`` by phase number (``p10`` after ``p9``). A curriculum has
    any number of phases, so the keys are read, not listed."""
    phases = sorted((k for k in probe if re.fullmatch(r"p[1-9]\d*", k)), key=lambda k: int(k[1:]))
    return [k for k in SLICE_MEAN_KEYS if k in probe][:1] + phases


def probe_label(stage: str) -> str:
    """``slice-embedding mean`` or the phase's compressor tokens as written in the paper's
    tables (``P3``)."""
    return "slice-embedding mean" if stage in SLICE_MEAN_KEYS else stage.upper()


def probe_scores(value: Any) -> dict[str, float]:
    """``{"macro_f1", "macro_auc"}`` from a :func:`linear_probe` dict or a bare macro F1."""
    if isinstance(value, Mapping):
        return {k: float(value[k]) for k in ("macro_f1", "macro_auc") if is_number(value.get(k))}
    return {"macro_f1": float(value)} if is_number(value) else {}


def probe_progression(probe: Mapping[str, Any]) -> Figure | None:
    """Linear-probe macro F1 / AUC for raw slices and each phase's tokens (paper Table VIII)."""
    stages = [s for s in probe_stages(probe) if probe_scores(probe[s])]
    if not stages:
        return None
    scores = {s: probe_scores(probe[s]) for s in stages}
    fig = new_figure(6.5, 3.8)
    ax = fig.subplots()
    x = np.arange(len(stages))
    for metric, marker in (("macro_f1", "o"), ("macro_auc", "s")):
        points = [(i, scores[s][metric]) for i, s in enumerate(stages) if metric in scores[s]]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=marker, label=PROBE_METRIC_LABELS[metric])
            for xi, yi in points:
                ax.annotate(
                    f"{yi:.3f}",
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    fontsize=8,
                )
    ax.set_xticks(x)
    ax.set_xticklabels([probe_label(s) for s in stages])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("representation")
    ax.set_ylabel("cross-validated score")
    ax.set_title("Pooled linear probe (paper Table VIII)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def zone_grounding(labels: Sequence[str], weights: np.ndarray) -> Figure:
    """Occlusion heatmap: for each finding (rows), the share of the rise in its sentence's
    teacher-forced NLL when one zone's visual token is zeroed (columns, first → last along z)."""
    n_rows, n_zones = weights.shape
    fig = new_figure(max(6.5, 0.22 * n_zones + 4.0), max(2.8, 0.34 * n_rows + 1.8))
    ax = fig.subplots()
    image = ax.imshow(weights, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(np.arange(n_rows))
    ax.set_yticklabels(labels, fontsize=9)
    step = 1 if n_zones <= 16 else 4
    ticks = list(range(0, n_zones, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks], fontsize=8)
    ax.set_xlabel("zone token zeroed (first → last along z)")
    ax.set_title(
        "Zone grounding by occlusion\nrise of each finding's NLL when one zone's token is zeroed",
        fontsize=10,
    )
    fig.colorbar(image, ax=ax, label="share of the finding's NLL rise")
    return fig


def quality_ladder(rows: Sequence[Mapping[str, Any]]) -> Figure | None:
    """Macro F1 at each stage of the pipeline, in the order given (top to bottom), so the
    stage where the signal is lost stands out."""
    stages = [(str(r["stage"]), r.get("macro_f1")) for r in rows]
    if not stages:
        return None
    fig = new_figure(8.5, 1.4 + 0.38 * len(stages))
    ax = fig.subplots()
    y = np.arange(len(stages))
    values = [float(v) if is_number(v) else 0.0 for _, v in stages]
    bars = ax.barh(y, values, height=0.6, color="#1f77b4")
    ax.bar_label(
        bars,
        labels=[f"{v:.3f}" if is_number(v) else "n/a" for _, v in stages],
        fontsize=8,
        padding=2,
    )
    ax.set_yticks(y)
    ax.set_yticklabels([s for s, _ in stages], fontsize=9)
    ax.set_ylim(len(stages) - 0.5, -0.5)
    ax.set_xlim(0, max(1.08, max(values) * 1.12))
    ax.set_xlabel("macro F1")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Quality ladder: where the signal is lost")
    return fig


def collapse_monitor(history: Sequence[Mapping[str, Any]]) -> Figure | None:
    """F1 with real vs zeroed tokens and the visual-reliance ratio per epoch (phases 3-4)."""
    if not history:
        return None
    fig = new_figure(8.5, 4.0)
    ax = fig.subplots()
    spans = []
    index = 0
    for phase, rows in _group_by_phase(history).items():
        spans.append((phase, index, index + len(rows) - 1))
        index += len(rows)
    ordered = [row for rows in _group_by_phase(history).values() for row in rows]
    _shade_phases(ax, spans)
    x = np.arange(len(ordered))
    ax.plot(
        x, [r["f1_real"] for r in ordered], marker="o", color="#1f77b4", label="F1, real tokens"
    )
    ax.plot(
        x,
        [r["f1_zero"] for r in ordered],
        marker="o",
        ls="--",
        color="#7f7f7f",
        label="F1, zeroed tokens",
    )
    ax.set_ylabel("generation macro F1")
    ax.set_xlabel("epoch (phases in order)")
    ax.set_xticks(x)
    ax.set_xticklabels([str(r["epoch"]) for r in ordered], fontsize=8)
    if len(x) > 20:
        for i, label in enumerate(ax.get_xticklabels()):
            label.set_visible(i % 5 == 0)
    twin = ax.twinx()
    reliance = [r["reliance"] for r in ordered]
    twin.plot(x, reliance, marker="^", color="#2ca02c", label="visual reliance")
    floors = {float(r["reliance_floor"]) for r in ordered if is_number(r.get("reliance_floor"))}
    for floor in floors:
        twin.axhline(floor, color="#d62728", ls=":", lw=1.2, label=f"reliance floor {floor:.2f}")
    warned = [i for i, r in enumerate(ordered) if r.get("warnings")]
    if warned:
        twin.scatter(
            warned,
            [reliance[i] for i in warned],
            s=90,
            facecolors="none",
            edgecolors="#d62728",
            linewidths=1.5,
            zorder=5,
            label="warning raised",
        )
    # one shared scale, so the floor line reads against both axes
    limits = (min(0.0, min(reliance) - 0.05), max(1.02, max(reliance) + 0.05))
    ax.set_ylim(*limits)
    twin.set_ylim(*limits)
    twin.set_ylabel("visual reliance (F1_real − F1_zero) / F1_real")
    handles = ax.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    ax.legend(
        handles[0] + twin_handles[0],
        handles[1] + twin_handles[1],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.12, 1.0),
    )
    ax.set_title("Posterior-collapse monitor", pad=16)
    return fig
