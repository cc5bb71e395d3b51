"""The run report: ``RUN/report.html``, one self-contained file (docs/evaluation.md).

Inputs, all optional (a missing one skips its sections with a note):

* ``RUN/metrics.json``: ``eval`` (macro/per-class scores), ``phases`` (end-of-phase metrics),
  ``ablation`` (real / zero / shuffle / random generation scores, optional ``nll``), ``probe``
  (raw, then p1..pN), ``oracle`` (``macro_f1``, optional ``per_class``), ``prevalence``;
* ``RUN/history.jsonl``: one row per epoch, ``{"phase", "epoch", "step", "loss", ...}``;
* ``RUN/collapse.jsonl``: :class:`~graftkit.eval.collapse.CollapseMonitor` history;
* ``RUN/grounding.json``: ``{"zones": K, "rows": [{"label", "weights": [K floats]}]}``;
* ``RUN/generations.jsonl``: one row per volume, ``{"name", "generated", "reference", "labels",
  "predicted", "generated_zero"?}`` (example generations);
* ``RUN/config.yaml``: ``dataset`` and ``profile`` for the title.

Optional ``metrics.json`` sections that are rendered only when present: ``ladder`` (a list of
``{"stage", "macro_f1", "detail", "macro_precision"?, "macro_recall"?, "fraction_of_oracle"?}``)
and ``data.warnings`` (a list of strings).

The layout is one jinja2 template, ``graftkit/eval/templates/report.html.j2``; this module turns
the inputs into pre-formatted text and figures for it. Every figure is embedded as a base64 PNG
data URI (no external JS, CSS or fonts, so the file opens offline) and also written to
``RUN/plots/<name>.png``. Malformed inputs raise a ``ValueError`` naming the file and the field
or line.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import yaml

from graftkit.eval import plots
from graftkit.eval.collapse import CollapseMonitor, read_jsonl
from graftkit.io import atomic_write_bytes, atomic_write_text

PLOT_NAMES = (
    "loss_curves",
    "metric_progression",
    "per_class_f1",
    "ablation",
    "linear_probe",
    "zone_grounding",
    "collapse_monitor",
    "quality_ladder",
)
#: example generations shown in the report (all of them stay in generations.jsonl)
MAX_EXAMPLES = 6


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


def load_generations(path: Path) -> list[dict[str, Any]]:
    """``generations.jsonl`` rows; each needs string ``generated`` and ``reference``."""
    rows = read_jsonl(path)
    for lineno, row in enumerate(rows, start=1):
        for key in ("generated", "reference"):
            if not isinstance(row.get(key), str):
                raise ValueError(f"{path}: row {lineno} has no string {key!r}")
        for key in ("labels", "predicted"):
            if not isinstance(row.get(key, []), list):
                raise ValueError(f"{path}: row {lineno}: {key!r} must be a list of class names")
    return rows


def _load_config(path: Path) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


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


def _check_ladder(ladder: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(ladder, list):
        raise ValueError(f"{where} must be a list of {{stage, macro_f1, detail}} rows")
    for i, row in enumerate(ladder):
        if not isinstance(row, Mapping) or not isinstance(row.get("stage"), str):
            raise ValueError(f"{where}[{i}] needs a string 'stage', got {row!r}")
        value = row.get("macro_f1")
        if value is not None and not plots.is_number(value):
            raise ValueError(f"{where}[{i}] ({row['stage']!r}): macro_f1 must be a number")
    return list(ladder)


def _check_warnings(warnings: Any, where: str) -> list[str]:
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise ValueError(f"{where} must be a list of strings")
    return list(warnings)


# -- formatting: every value reaches the template as text ---------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """A cell's text: integers as they are, floats to ``digits`` places, ``None`` as "n/a"."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_duration(seconds: float) -> str:
    """``5.7 s``, ``8 min 16 s``, ``2 h 03 min``: a duration a reader takes in at a glance."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours} h {rest:02d} min"


def fmt_percent(fraction: float) -> str:
    return f"{100 * fraction:.1f} %"


def humanize(key: str) -> str:
    """A metrics key as words: ``extractor_on_reference`` -> ``extractor on reference``."""
    return key.replace("_", " ").replace(".", " ")


def _fmt_leaf(key: str, value: Any) -> str:
    if plots.is_number(value) and key.rsplit(".", 1)[-1] in ("seconds", "wall_s", "time"):
        return fmt_duration(value)
    return fmt(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> dict[str, Any]:
    return {
        "header": list(header),
        "rows": [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows],
        "css": css,
    }


# -- figures ----------------------------------------------------------------------------------


class _Figures:
    """Renders figures to data URIs and ``RUN/plots/<name>.png``; removes stale PNGs at the end."""

    def __init__(self, run_dir: Path):
        self.plot_dir = run_dir / "plots"
        self.figures: dict[str, dict[str, str] | None] = dict.fromkeys(PLOT_NAMES)

    def add(self, name: str, fig, alt: str, caption: str = "") -> dict[str, str] | None:
        if fig is None:
            return None
        png = plots.figure_png(fig)
        atomic_write_bytes(self.plot_dir / f"{name}.png", png)
        data = base64.b64encode(png).decode("ascii")
        self.figures[name] = {
            "src": f"data:image/png;base64,{data}",
            "alt": alt,
            "caption": caption,
        }
        return self.figures[name]

    def remove_stale(self) -> None:
        for name, figure in self.figures.items():
            stale = self.plot_dir / f"{name}.png"
            if figure is None and stale.exists():
                stale.unlink()


# -- sections ---------------------------------------------------------------------------------


def _macro_f1(value: Any) -> float | None:
    if isinstance(value, Mapping):
        value = value.get("macro_f1")
    return float(value) if plots.is_number(value) else None


def _interval(ci: Any, key: str) -> str:
    """`` [0.53, 0.61]``: the bootstrap interval of ``eval.ci[key]``, or nothing."""
    entry = ci.get(key) if isinstance(ci, Mapping) else None
    if isinstance(entry, Mapping) and plots.is_number(entry.get("low")):
        return f" [{fmt(entry['low'])}, {fmt(entry['high'])}]"
    return ""


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Rows ``[metric, value, about]``: what a reader needs to judge the run at a glance: the
    generation's scores beside what trivial reports get on the same volumes and the oracle, the
    text-overlap scores, then the probes, heads and bookkeeping."""
    rows: list[list[str]] = []
    ev = metrics.get("eval") or {}
    ci = ev.get("ci") or {}
    scope = []
    if plots.is_number(ev.get("volumes", ev.get("n"))):
        scope.append(f"{ev.get('volumes', ev.get('n'))} {ev.get('split', 'evaluation')} volumes")
    if isinstance(ev.get("extractor"), str):
        scope.append(f"labels read by {ev['extractor']}")
    if isinstance(ci.get("macro_f1"), Mapping) and ci["macro_f1"].get("n_resamples"):
        scope.append(f"[bootstrap 95 % interval, {ci['macro_f1']['n_resamples']} resamples]")
    for key, label, about in (
        ("macro_f1", "generation macro F1", ", ".join(scope)),
        ("macro_precision", "generation macro precision", ""),
        ("macro_recall", "generation macro recall", ""),
        ("micro_f1", "generation micro F1", "TP, FP, FN pooled over the classes"),
        ("weighted_f1", "generation weighted F1", "per-class F1 weighted by support"),
        (
            "crg",
            "generation CRG score",
            "VLM3D's ranking score: 1/3 for naming every finding (or none), 1 perfect",
        ),
    ):
        if plots.is_number(ev.get(key)):
            rows.append([label, fmt(ev[key]) + _interval(ci, key), about])
    baselines = metrics.get("baselines") or {}
    for key, label in (
        ("all_positive", "baseline: every finding named"),
        ("prevalence", "baseline: findings at training prevalence"),
    ):
        base = baselines.get(key)
        if isinstance(base, Mapping) and plots.is_number(base.get("macro_f1")):
            rows.append(
                [
                    f"{label}, macro F1 / CRG",
                    f"{fmt(base['macro_f1'])} / {fmt(base.get('crg'))}",
                    str(base.get("about", "")) + "; on the same volumes",
                ]
            )
    oracle = _macro_f1(metrics.get("oracle"))
    if oracle is not None:
        about = "best achievable on these volumes (knows the cohort's generator)"
        if plots.is_number(ev.get("macro_f1")) and oracle > 0:
            about += f"; generation reaches {fmt_percent(ev['macro_f1'] / oracle)} of it"
        rows.append(["oracle macro F1", fmt(oracle), about])
    if "skill" in ev:
        rows.append(
            [
                "skill",
                fmt(ev["skill"], 2),
                "0 = every finding named, 1 = the oracle: (F1 - all-positive F1) / "
                "(oracle F1 - all-positive F1)"
                if ev["skill"] is not None
                else "no cohort oracle on these volumes",
            ]
        )
    nlg = metrics.get("nlg")
    if isinstance(nlg, Mapping):
        unavailable = nlg.get("unavailable") if isinstance(nlg.get("unavailable"), Mapping) else {}
        tokens = f"{nlg['tokenizer']} tokens" if isinstance(nlg.get("tokenizer"), str) else ""
        for key, label, about in (
            (
                "bleu_1",
                "BLEU-1 / 2 / 3 / 4",
                "corpus BLEU vs the reference reports (pycocoevalcap)",
            ),
            ("meteor", "METEOR", "METEOR 1.5 (pycocoevalcap's jar)"),
            ("rouge_l", "ROUGE-L", "mean per-report LCS F (β = 1.2)"),
            ("cider", "CIDEr-D", "TF-IDF n-gram consensus (pycocoevalcap)"),
        ):
            if key not in nlg:
                continue
            if key == "bleu_1":
                value = " / ".join(fmt(nlg.get(f"bleu_{n}")) for n in range(1, 5))
            else:
                value = fmt(nlg[key]) + (_interval(ci, key) if key == "rouge_l" else "")
            note = f"not computed: {unavailable[key]}" if key in unavailable else about
            rows.append([label, value, f"{note}; {tokens}" if tokens else note])
    named = {
        "extractor_on_reference": (
            "label extractor on the reference reports, macro F1",
            "the measuring stick: the extractor's own error",
        ),
        "extractor_on_ground_truth": (
            "label extractor on the reference reports, macro F1",
            "the measuring stick: the extractor's own error",
        ),
    }
    checkpoint = ev.get("checkpoint")
    if isinstance(checkpoint, Mapping) and checkpoint.get("path"):
        about = f"phase {checkpoint['phase']}" if checkpoint.get("phase") is not None else ""
        if checkpoint.get("epoch") is not None:
            run_epochs = checkpoint.get("epochs_run", "?")
            about += f", best epoch {checkpoint['epoch']} of {run_epochs} run"
        rows.append(["checkpoint evaluated", str(checkpoint["path"]), about])
    skip = {
        "macro_f1",
        "macro_precision",
        "macro_recall",
        "micro_f1",
        "weighted_f1",
        "crg",
        "skill",
        "ci",
        "per_class",
        "n",
        "volumes",
        "split",
        "checkpoint",
        "processes",
    }
    for key, value in ev.items():
        if key in skip:
            continue
        label, about = named.get(key, (humanize(key), ""))
        if plots.is_number(value):
            rows.append([label, fmt(value), about])
        elif isinstance(value, Mapping) and plots.is_number(value.get("macro_f1")):
            if value.get("upper_bound"):
                label, about = f"{label} macro F1", "upper bound: tuned on this split"
            elif not label.endswith("macro F1"):
                label += " macro F1"
            rows.append([label, fmt(value["macro_f1"]), about])
    classifier = metrics.get("classifier") or {}
    read = f"; {classifier['tokens']}" if isinstance(classifier.get("tokens"), str) else ""
    if _macro_f1(classifier.get("threshold_0.5")) is not None:
        rows.append(
            [
                "classifier head (cls) macro F1",
                fmt(_macro_f1(classifier["threshold_0.5"])),
                "the mean-token head's own labels at threshold 0.5, no text generated" + read,
            ]
        )
    if _macro_f1(classifier.get("tuned_thresholds")) is not None:
        rows.append(
            [
                "classifier head (cls) macro F1, per-class thresholds",
                fmt(_macro_f1(classifier["tuned_thresholds"])),
                "upper bound: thresholds tuned on this split",
            ]
        )
    probe = metrics.get("probe") or {}
    for stage in reversed(plots.probe_stages(probe)):
        scores = plots.probe_scores(probe[stage])
        if "macro_f1" in scores:
            rows.append(
                [
                    f"pooled linear probe macro F1 ({plots.probe_label(stage)})",
                    fmt(scores["macro_f1"]),
                    "paper Table VIII: 5-fold logistic regression on the mean of the tokens "
                    "(not the ladder's zone MIL probe)",
                ]
            )
            break
    data = metrics.get("data") or {}
    if isinstance(data, Mapping) and plots.is_number(data.get("train")):
        counts = f"{data['train']} train / {data.get('valid', 'n/a')} valid"
        about = f"{data['skipped']} skipped" if plots.is_number(data.get("skipped")) else ""
        rows.append(["volumes", counts, about])
    phases = metrics.get("phases") or {}
    seconds = [
        v["seconds"]
        for v in phases.values()
        if isinstance(v, Mapping) and plots.is_number(v.get("seconds"))
    ]
    if seconds:
        rows.append(["training time", fmt_duration(sum(seconds)), f"{len(seconds)} phase(s)"])
    return _table(["metric", "value", "about"], rows, css="headline last-left")


def _visual_check(ablation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """One row: generation macro F1 with real / zeroed / shuffled / random tokens, zero-drop."""
    if not ablation:
        return None
    f1 = {c: plots.ablation_scores(ablation.get(c)).get("f1") for c in plots.ABLATION_ORDER}
    if all(v is None for v in f1.values()):
        return None
    drop = ablation.get("zero_drop")
    if not plots.is_number(drop) and f1["real"] and f1["zero"] is not None:
        drop = 1 - f1["zero"] / f1["real"]
    header = ["real", "zeroed", "shuffled (other patient)", "random", "F1 removed by zeroing"]
    row = [fmt(f1[c]) for c in plots.ABLATION_ORDER]
    row.append(fmt_percent(drop) if plots.is_number(drop) else "n/a")
    return _table(header, [row])


def _phases_table(phases: Mapping[str, Any]) -> dict[str, Any]:
    order = sorted(phases, key=int)
    rows: list[list[str]] = []
    if any(isinstance(phases[p], Mapping) and "metric" in phases[p] for p in order):
        rows.append(["early-stopping metric", *[str(phases[p].get("metric", "")) for p in order]])
        rows.append(["best value", *[fmt(phases[p].get("best")) for p in order]])
    if any(plots.is_number(phases[p].get("seconds")) for p in order):
        rows.append(
            [
                "time",
                *[
                    fmt_duration(phases[p]["seconds"])
                    if plots.is_number(phases[p].get("seconds"))
                    else ""
                    for p in order
                ],
            ]
        )
    rest = {
        int(p): {
            k: v
            for k, v in plots.flatten_numeric(phases[p]).items()
            if k not in ("best", "seconds")
        }
        for p in order
    }
    for key in sorted({k for m in rest.values() for k in m}):
        rows.append([key, *[_fmt_leaf(key, rest[int(p)].get(key, "")) for p in order]])
    return _table(["", *[f"phase {p}" for p in order]], rows)


def _examples(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows[:MAX_EXAMPLES]:
        truth = [str(x) for x in row.get("labels", [])]
        predicted = [str(x) for x in row.get("predicted", [])]
        labels = [{"name": n, "kind": "found" if n in predicted else "missed"} for n in truth]
        labels += [{"name": n, "kind": "invented"} for n in predicted if n not in truth]
        zero = row.get("generated_zero")
        out.append(
            {
                "name": str(row.get("name", "")),
                "generated": row["generated"] or "(empty)",
                "reference": row["reference"],
                "labels": labels,
                "generated_zero": (zero or "(empty)") if isinstance(zero, str) else None,
            }
        )
    return out


def _ladder_table(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    optional = [
        (key, label)
        for key, label in (
            ("macro_precision", "macro precision"),
            ("macro_recall", "macro recall"),
            ("crg", "CRG"),
            ("fraction_of_oracle", "fraction of oracle"),
        )
        if any(key in r for r in rows)
    ]
    body = []
    for r in rows:
        cells = [r["stage"], fmt(r.get("macro_f1"))]
        for key, _ in optional:
            value = r.get(key)
            cells.append(
                fmt_percent(value)
                if key == "fraction_of_oracle" and plots.is_number(value)
                else fmt(value)
            )
        cells.append(str(r.get("detail", "")))
        body.append(cells)
    return _table(
        ["stage", "macro F1", *[label for _, label in optional], "detail"], body, css="last-left"
    )


def _title(run: Path, config: Mapping[str, Any], metrics_path: Path) -> str:
    stamp = metrics_path.stat().st_mtime if metrics_path.exists() else None
    date = dt.datetime.fromtimestamp(stamp, dt.UTC) if stamp else dt.datetime.now(dt.UTC)
    parts = []
    if config.get("dataset"):
        parts.append(str(config["dataset"]))
    if config.get("profile"):
        parts.append(f"profile {config['profile']}")
    if not parts:
        parts.append(run.resolve().name)
    parts.append(date.strftime("%Y-%m-%d"))
    return "graftkit run report: " + ", ".join(parts)


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("graftkit.eval", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2")


def write_report(run_dir: str | Path, training_dir: str | Path | None = None) -> Path:
    """Render ``RUN/report.html`` and ``RUN/plots/*.png`` from whatever run outputs exist.

    ``training_dir``: where ``history.jsonl``, ``collapse.jsonl`` and ``config.yaml`` live when
    ``run_dir`` is an evaluation folder of its own (``RUN/eval/NAME``, written by ``graftkit eval``);
    default ``run_dir``.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    training = Path(training_dir) if training_dir is not None else run

    metrics_path = run / "metrics.json"
    metrics: Mapping[str, Any] = {}
    if metrics_path.exists():
        loaded = _load_json(metrics_path)
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{metrics_path}: expected a JSON object at the top level")
        metrics = loaded
    history_path = training / "history.jsonl"
    history = load_history(history_path) if history_path.exists() else []
    collapse_path = training / "collapse.jsonl"
    collapse = CollapseMonitor.from_jsonl(collapse_path).history if collapse_path.exists() else []
    grounding_path = run / "grounding.json"
    grounding = load_grounding(grounding_path) if grounding_path.exists() else None
    generations_path = run / "generations.jsonl"
    generations = load_generations(generations_path) if generations_path.exists() else []
    config_path = training / "config.yaml"
    config = _load_config(config_path) if config_path.exists() else {}

    eval_ = _section_dict(metrics, "eval", metrics_path) or {}
    phases = _section_dict(metrics, "phases", metrics_path)
    for key, value in (phases or {}).items():
        if not str(key).isdigit() or not isinstance(value, Mapping):
            raise ValueError(
                f"{metrics_path}: phases.{key} must be an object keyed by phase number"
            )
    ablation = _section_dict(metrics, "ablation", metrics_path)
    probe = _section_dict(metrics, "probe", metrics_path)
    oracle = _section_dict(metrics, "oracle", metrics_path) or {}
    prevalence = _section_dict(metrics, "prevalence", metrics_path)
    data = _section_dict(metrics, "data", metrics_path) or {}
    per_class = (
        _check_per_class(eval_["per_class"], f"{metrics_path}: eval.per_class")
        if "per_class" in eval_
        else None
    )
    ladder_rows = (
        _check_ladder(metrics["ladder"], f"{metrics_path}: ladder")
        if metrics.get("ladder") is not None
        else []
    )
    data_warnings = (
        _check_warnings(data["warnings"], f"{metrics_path}: data.warnings")
        if data.get("warnings") is not None
        else []
    )

    figures = _Figures(run)
    figures.add("loss_curves", plots.loss_curves(history), "training and validation loss per phase")
    figures.add(
        "metric_progression",
        plots.metric_progression(history, phases),
        "metric progression across phases",
    )
    per_class_table = None
    if per_class is not None:
        oracle_pc = (
            oracle.get("per_class") if isinstance(oracle.get("per_class"), Mapping) else None
        )
        figures.add(
            "per_class_f1",
            plots.per_class_f1(
                per_class,
                prevalence,
                oracle_pc,
                eval_.get("macro_f1") if plots.is_number(eval_.get("macro_f1")) else None,
                oracle.get("macro_f1") if plots.is_number(oracle.get("macro_f1")) else None,
            ),
            "per-class F1 vs prevalence and oracle",
        )
        per_class_table = _table(
            ["class", "support", "prevalence", "precision", "recall", "F1", "oracle F1"],
            [
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
            ],
        )
    figures.add(
        "ablation",
        plots.ablation_bars(ablation) if ablation else None,
        "generation and NLL with ablated visual tokens",
    )
    figures.add(
        "linear_probe",
        plots.probe_progression(probe) if probe else None,
        "linear probe macro F1 and AUC per phase",
    )
    if grounding is not None:
        labels, weights = grounding
        method = _load_json(grounding_path).get("method")
        figures.add(
            "zone_grounding",
            plots.zone_grounding(labels, weights),
            "zone-grounding map by occlusion",
            caption=(
                "Each row is a finding; each column the share of the rise in the teacher-forced "
                "NLL of the finding's sentence when that zone's visual token is zeroed "
                "(rows sum to 1; an all-zero row: no zone raised the NLL)."
                + (f" Method: {method}." if isinstance(method, str) else "")
            ),
        )
    figures.add("collapse_monitor", plots.collapse_monitor(collapse), "posterior-collapse monitor")
    ladder = None
    if ladder_rows:
        ladder = {
            "figure": figures.add(
                "quality_ladder",
                plots.quality_ladder(ladder_rows),
                "macro F1 at each stage of the quality ladder",
            ),
            "table": _ladder_table(ladder_rows),
        }
    figures.remove_stale()

    subtitle = [f"run directory {run.resolve()}"]
    if generations:
        shown = min(len(generations), MAX_EXAMPLES)
        examples_caption = (
            f"The first {shown} of {len(generations)} evaluated volumes "
            "(all of them are in generations.jsonl)."
        )
    else:
        examples_caption = ""
    context = {
        "title": _title(run, config, metrics_path),
        "subtitle": "; ".join(subtitle),
        "headline": _headline(metrics),
        "visual_check": _visual_check(ablation),
        "data_warnings": data_warnings,
        "ladder": ladder,
        "examples": _examples(generations),
        "examples_caption": examples_caption,
        "figures": figures.figures,
        "phases_table": _phases_table(phases) if phases else None,
        "per_class_table": per_class_table,
        "has_prevalence": prevalence is not None,
        "collapse_warnings": [w for row in collapse for w in row.get("warnings", [])],
    }
    out = run / "report.html"
    atomic_write_text(out, _template().render(**context))
    return out
