"""The run report: ``RUN/report.html``, one self-contained file (issue 8 item 4; docs/evaluation.md).

Inputs, all optional (a missing one skips its sections with a note):

* ``RUN/metrics.json``: ``eval`` (macro/per-class scores), ``phases`` (end-of-phase metrics),
  ``ablation`` (real / zero / shuffle / random generation scores, optional ``nll``), ``probe``
  (raw, p1..p4), ``oracle`` (``macro_f1``, optional ``per_class``), ``prevalence``;
* ``RUN/history.jsonl``: one row per epoch, ``{"phase", "epoch", "step", "loss", ...}``;
* ``RUN/collapse.jsonl``: :class:`~graftkit.eval.collapse.CollapseMonitor` history;
* ``RUN/grounding.json``: ``{"zones": K, "rows": [{"label", "weights": [K floats]}]}``.

Every figure is embedded as a base64 PNG data URI (no external JS, CSS or fonts, so the file
opens offline) and also written to ``RUN/plots/<name>.png``. Malformed inputs raise a
``ValueError`` naming the file and the field or line.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from graftkit.eval import plots
from graftkit.eval.collapse import CollapseMonitor, read_jsonl

PLOT_NAMES = (
    "loss_curves",
    "metric_progression",
    "per_class_f1",
    "ablation",
    "linear_probe",
    "zone_grounding",
    "collapse_monitor",
)

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { border-bottom: 2px solid #1f77b4; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
img { max-width: 100%; height: auto; display: block; margin: .6em 0; }
p.note { color: #8a6d3b; background: #fcf8e3; border: 1px solid #faebcc; padding: .4em .8em; }
ul.warnings li { color: #a94442; }
"""


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc


def load_history(path: Path) -> list[dict[str, Any]]:
    """``history.jsonl`` rows; each needs an integer ``phase``."""
    rows = read_jsonl(path)
    for lineno, row in enumerate(rows, start=1):
        phase = row.get("phase")
        if isinstance(phase, bool) or not isinstance(phase, int):
            raise ValueError(f"{path}: row {lineno} has no integer 'phase' (got {phase!r})")
    return rows


def load_grounding(path: Path) -> tuple[list[str], np.ndarray]:
    """``grounding.json`` as (labels, weights[rows, K]), checking every row has K weights."""
    data = _load_json(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{path}: expected an object with a 'rows' list")
    zones = data.get("zones")
    if isinstance(zones, bool) or not isinstance(zones, int) or zones <= 0:
        raise ValueError(f"{path}: 'zones' must be a positive integer, got {zones!r}")
    if not data["rows"]:
        raise ValueError(f"{path}: 'rows' is empty")
    labels, weights = [], []
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, Mapping) or "label" not in row or "weights" not in row:
            raise ValueError(f"{path}: rows[{i}] needs 'label' and 'weights'")
        values = row["weights"]
        if not isinstance(values, list) or len(values) != zones:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise ValueError(
                f"{path}: rows[{i}] ({row['label']!r}) has {got} weights, expected zones={zones}"
            )
        if not all(plots.is_number(v) for v in values):
            raise ValueError(f"{path}: rows[{i}] ({row['label']!r}) has non-numeric weights")
        labels.append(str(row["label"]))
        weights.append([float(v) for v in values])
    return labels, np.asarray(weights, dtype=np.float64)


def _section_dict(metrics: Mapping[str, Any], key: str, source: Path) -> Mapping[str, Any] | None:
    value = metrics.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{source}: '{key}' must be an object, got {type(value).__name__}")
    return value


def _check_per_class(per_class: Any, where: str) -> dict[str, Mapping[str, Any]]:
    if not isinstance(per_class, Mapping):
        raise ValueError(f"{where} must be an object {{class: {{f1, precision, recall, support}}}}")
    for name, scores in per_class.items():
        if not isinstance(scores, Mapping) or not plots.is_number(scores.get("f1")):
            raise ValueError(f"{where}.{name}.f1 must be a number, got {scores!r}")
    return dict(per_class)


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return html.escape(str(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


class _Report:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.plot_dir = run_dir / "plots"
        self.sections: list[str] = []
        self.written: set[str] = set()

    def figure(self, name: str, fig, alt: str) -> str:
        png = plots.figure_png(fig)
        self.plot_dir.mkdir(parents=True, exist_ok=True)
        (self.plot_dir / f"{name}.png").write_bytes(png)
        self.written.add(name)
        data = base64.b64encode(png).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'

    def section(self, anchor: str, title: str, body: str) -> None:
        self.sections.append(
            f'<section id="{anchor}"><h2>{html.escape(title)}</h2>\n{body}\n</section>'
        )


def _headline_rows(metrics: Mapping[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    ev = metrics.get("eval") or {}
    for key, label in (
        ("macro_f1", "F1"),
        ("macro_precision", "precision"),
        ("macro_recall", "recall"),
    ):
        if plots.is_number(ev.get(key)):
            rows.append([f"generation macro {label}", ev[key]])
    for key, value in ev.items():
        if key in ("macro_f1", "macro_precision", "macro_recall", "per_class"):
            continue
        if plots.is_number(value):
            rows.append([f"eval.{key}", value])
        elif isinstance(value, Mapping) and plots.is_number(value.get("macro_f1")):
            flag = " (upper bound: tuned on this split)" if value.get("upper_bound") else ""
            rows.append([f"eval.{key} macro F1{flag}", value["macro_f1"]])
    oracle = metrics.get("oracle") or {}
    if plots.is_number(oracle.get("macro_f1")):
        rows.append(["oracle macro F1", oracle["macro_f1"]])
    ablation = metrics.get("ablation") or {}
    real = plots.ablation_scores(ablation.get("real")).get("f1")
    zero = plots.ablation_scores(ablation.get("zero")).get("f1")
    if real is not None and zero is not None and real > 0:
        rows.append(["F1 removed by zeroing visual tokens", f"{100 * (1 - zero / real):.1f} %"])
    probe = metrics.get("probe") or {}
    for stage in reversed(plots.PROBE_ORDER):
        scores = plots.probe_scores(probe.get(stage))
        if "macro_f1" in scores:
            rows.append(
                [f"linear probe macro F1 ({plots.PROBE_LABELS[stage]})", scores["macro_f1"]]
            )
            break
    return rows


def write_report(run_dir: str | Path) -> Path:
    """Render ``RUN/report.html`` and ``RUN/plots/*.png`` from whatever run outputs exist."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    report = _Report(run)

    metrics_path = run / "metrics.json"
    metrics: Mapping[str, Any] = {}
    if metrics_path.exists():
        loaded = _load_json(metrics_path)
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{metrics_path}: expected a JSON object at the top level")
        metrics = loaded
    history_path = run / "history.jsonl"
    history = load_history(history_path) if history_path.exists() else []
    collapse_path = run / "collapse.jsonl"
    collapse = CollapseMonitor.from_jsonl(collapse_path).history if collapse_path.exists() else []
    grounding_path = run / "grounding.json"
    grounding = load_grounding(grounding_path) if grounding_path.exists() else None

    eval_ = _section_dict(metrics, "eval", metrics_path) or {}
    phases = _section_dict(metrics, "phases", metrics_path)
    ablation = _section_dict(metrics, "ablation", metrics_path)
    probe = _section_dict(metrics, "probe", metrics_path)
    oracle = _section_dict(metrics, "oracle", metrics_path) or {}
    prevalence = _section_dict(metrics, "prevalence", metrics_path)
    per_class = (
        _check_per_class(eval_["per_class"], f"{metrics_path}: eval.per_class")
        if "per_class" in eval_
        else None
    )

    # headline numbers
    rows = _headline_rows(metrics)
    report.section(
        "headline",
        "Headline numbers",
        _table(["metric", "value"], rows) if rows else _note("no metrics.json scores found"),
    )

    # loss curves
    fig = plots.loss_curves(history)
    report.section(
        "loss-curves",
        "Loss curves per phase",
        report.figure("loss_curves", fig, "training loss per phase")
        if fig
        else _note("history.jsonl is missing or has no loss columns: no loss curves"),
    )

    # metric progression
    fig = plots.metric_progression(history, phases)
    body = (
        report.figure("metric_progression", fig, "metric progression across phases")
        if fig
        else _note("no per-epoch or per-phase score metrics (history.jsonl / metrics.json phases)")
    )
    if phases:
        flat = plots.flatten_phase_metrics(phases)
        keys = sorted({k for m in flat.values() for k in m})
        body += _table(
            ["metric", *[f"phase {p}" for p in flat]],
            [[k, *[flat[p].get(k, "") for p in flat]] for k in keys],
        )
    report.section("progression", "Metric progression across phases", body)

    # per-class F1
    if per_class is not None:
        oracle_pc = (
            oracle.get("per_class") if isinstance(oracle.get("per_class"), Mapping) else None
        )
        fig = plots.per_class_f1(
            per_class,
            prevalence,
            oracle_pc,
            eval_.get("macro_f1") if plots.is_number(eval_.get("macro_f1")) else None,
            oracle.get("macro_f1") if plots.is_number(oracle.get("macro_f1")) else None,
        )
        table_rows = [
            [
                name,
                s.get("support", ""),
                (prevalence or {}).get(name, ""),
                s.get("precision", ""),
                s.get("recall", ""),
                s["f1"],
                plots.f1_of((oracle_pc or {}).get(name)) if oracle_pc else "",
            ]
            for name, s in per_class.items()
        ]
        body = report.figure("per_class_f1", fig, "per-class F1 vs prevalence and oracle")
        body += _table(
            ["class", "support", "prevalence", "precision", "recall", "F1", "oracle F1"], table_rows
        )
        if prevalence is None:
            body += _note("metrics.json has no 'prevalence': bars show F1 only")
    else:
        body = _note("metrics.json has no eval.per_class: run `graftkit eval` first")
    report.section("per-class", "Per-class F1, prevalence and oracle", body)

    # ablations
    fig = plots.ablation_bars(ablation) if ablation else None
    report.section(
        "ablation",
        "Visual-token ablations",
        report.figure("ablation", fig, "generation and NLL with ablated visual tokens")
        if fig
        else _note("metrics.json has no 'ablation' scores: run `graftkit eval --ablations`"),
    )

    # linear probe
    fig = plots.probe_progression(probe) if probe else None
    report.section(
        "probe",
        "Linear probe per phase",
        report.figure("linear_probe", fig, "linear probe macro F1 and AUC per phase")
        if fig
        else _note("metrics.json has no 'probe' scores"),
    )

    # zone grounding
    if grounding is not None:
        labels, weights = grounding
        body = report.figure(
            "zone_grounding", plots.zone_grounding(labels, weights), "zone-grounding heatmap"
        )
    else:
        body = _note("grounding.json is missing: no zone-grounding heatmap")
    report.section("grounding", "Zone grounding", body)

    # collapse monitor
    fig = plots.collapse_monitor(collapse)
    if fig:
        body = report.figure("collapse_monitor", fig, "posterior-collapse monitor")
        warnings = [w for row in collapse for w in row.get("warnings", [])]
        if warnings:
            body += (
                '<ul class="warnings">'
                + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
                + "</ul>"
            )
    else:
        body = _note("collapse.jsonl is missing or empty: the collapse monitor did not run")
    report.section("collapse", "Posterior-collapse monitor", body)

    for name in PLOT_NAMES:
        stale = report.plot_dir / f"{name}.png"
        if name not in report.written and stale.exists():
            stale.unlink()

    title = f"graftkit run report: {run.resolve().name}"
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(report.sections) + "\n</body></html>\n"
    )
    out = run / "report.html"
    out.write_text(document, encoding="utf-8")
    return out
