"""``graftkit compare RUN_A RUN_B``: two evaluations of the same volumes, paired (docs/evaluation.md,
"Comparing two runs").

Each side is an evaluation folder (a run folder, or ``RUN/eval/NAME``) holding ``metrics.json``
(its ``eval.per_class`` gives the class order) and ``generations.jsonl`` (per volume its name,
reference labels, extracted labels, generated and reference text). The volumes are matched by
name; two evaluations of different volumes, or of the same volume with different reference labels
or classes, are refused: a paired test is only meaningful on the same cases. Macro F1 and CRG are
recomputed from the labels and ROUGE-L from the texts (:mod:`graftkit.eval.nlg`, the
``whitespace`` tokenizer of ``metrics.json`` ``nlg``), then
:func:`graftkit.eval.stats.compare_systems` gives each difference A - B with a paired bootstrap
interval and a paired permutation p-value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class ComparisonError(ValueError):
    """Two evaluations that cannot be compared, or a folder that holds no evaluation; the message
    names the folder, file, row or volume."""


@dataclass(frozen=True)
class EvaluatedVolumes:
    """One evaluation's per-volume results, in its ``generations.jsonl`` order."""

    folder: Path
    classes: list[str]
    names: list[str]
    truth: np.ndarray
    predicted: np.ndarray
    generated: list[str]
    references: list[str]
    split: str | None

    def reorder(self, names: list[str]) -> EvaluatedVolumes:
        index = {n: i for i, n in enumerate(self.names)}
        rows = [index[n] for n in names]
        return EvaluatedVolumes(
            self.folder,
            self.classes,
            list(names),
            self.truth[rows],
            self.predicted[rows],
            [self.generated[i] for i in rows],
            [self.references[i] for i in rows],
            self.split,
        )


def load_evaluation(folder: str | Path) -> EvaluatedVolumes:
    """An evaluation folder's volumes, labels and texts (module docstring)."""
    folder = Path(folder)
    metrics_path, rows_path = folder / "metrics.json", folder / "generations.jsonl"
    for path in (metrics_path, rows_path):
        if not path.is_file():
            raise ComparisonError(
                f"{folder}: no {path.name}; evaluate the run first (graftkit eval RUN)"
            )
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ComparisonError(f"{metrics_path}: not valid JSON (line {err.lineno})") from None
    per_class = (metrics.get("eval") or {}).get("per_class")
    if not isinstance(per_class, dict) or not per_class:
        raise ComparisonError(f"{metrics_path}: no eval.per_class (the class list)")
    classes = list(per_class)
    column = {name: c for c, name in enumerate(classes)}
    names, generated, references = [], [], []
    truth, predicted = [], []
    for lineno, line in enumerate(rows_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ComparisonError(f"{rows_path}: line {lineno} is not valid JSON") from None
        for key, kind in (
            ("name", str),
            ("generated", str),
            ("reference", str),
            ("labels", list),
            ("predicted", list),
        ):
            if not isinstance(row.get(key), kind):
                raise ComparisonError(f"{rows_path}: line {lineno} has no {kind.__name__} {key!r}")
        vectors = []
        for key in ("labels", "predicted"):
            vector = np.zeros(len(classes), dtype=np.int64)
            for label in row[key]:
                if label not in column:
                    raise ComparisonError(
                        f"{rows_path}: line {lineno}: {key} names {label!r}, not a class of "
                        f"{metrics_path.name} eval.per_class"
                    )
                vector[column[label]] = 1
            vectors.append(vector)
        if row["name"] in names:
            raise ComparisonError(f"{rows_path}: volume {row['name']!r} appears twice")
        names.append(row["name"])
        truth.append(vectors[0])
        predicted.append(vectors[1])
        generated.append(row["generated"])
        references.append(row["reference"])
    if not names:
        raise ComparisonError(f"{rows_path}: holds no volume")
    return EvaluatedVolumes(
        folder,
        classes,
        names,
        np.stack(truth),
        np.stack(predicted),
        generated,
        references,
        (metrics.get("eval") or {}).get("split"),
    )


def paired_volumes(
    a: EvaluatedVolumes, b: EvaluatedVolumes
) -> tuple[EvaluatedVolumes, EvaluatedVolumes]:
    """``a`` and ``b`` on the same volumes in ``a``'s order; refuses (one line naming both
    folders) evaluations of different classes, different volumes or different reference
    labels."""
    if a.classes != b.classes:
        raise ComparisonError(
            f"{a.folder} and {b.folder} were scored on different classes "
            f"({len(a.classes)} vs {len(b.classes)}; first difference "
            f"{next((x, y) for x, y in zip([*a.classes, None], [*b.classes, None]) if x != y)})"
        )
    only_a = [n for n in a.names if n not in set(b.names)]
    only_b = [n for n in b.names if n not in set(a.names)]
    if only_a or only_b:
        both = len(a.names) - len(only_a)
        example = f"{only_a[0]!r} only in A" if only_a else f"{only_b[0]!r} only in B"
        raise ComparisonError(
            f"{a.folder} (A) and {b.folder} (B) were evaluated on different volumes: "
            f"{len(a.names)} in A, {len(b.names)} in B, {both} in both (e.g. {example}); "
            "compare two evaluations of the same volumes"
        )
    b = b.reorder(a.names)
    differ = np.flatnonzero((a.truth != b.truth).any(axis=1))
    if differ.size:
        name = a.names[int(differ[0])]
        raise ComparisonError(
            f"{a.folder} (A) and {b.folder} (B) give volume {name!r} different reference labels "
            f"({differ.size} volume(s) differ); compare evaluations of the same data"
        )
    return a, b


def compare_evaluations(
    folder_a: str | Path,
    folder_b: str | Path,
    *,
    n_resamples: int = 1000,
    n_permutations: int = 10_000,
    seed: int = 0,
    tokenizer: str = "whitespace",
) -> dict[str, Any]:
    """A - B on the volumes both evaluated: ``{"a", "b", "volumes", "split", "metrics": {macro_f1,
    crg, rouge_l: paired_comparison(...)}}`` (:func:`graftkit.eval.stats.compare_systems`)."""
    from graftkit.eval.nlg import rouge_l_per_report
    from graftkit.eval.stats import compare_systems

    a, b = paired_volumes(load_evaluation(folder_a), load_evaluation(folder_b))
    rouge_a = rouge_l_per_report(a.generated, a.references, tokenizer=tokenizer)
    rouge_b = rouge_l_per_report(b.generated, b.references, tokenizer=tokenizer)
    try:
        metrics = compare_systems(
            a.truth,
            a.predicted,
            b.predicted,
            rouge_a,
            rouge_b,
            n_resamples=n_resamples,
            n_permutations=n_permutations,
            seed=seed,
        )
    except ValueError as err:
        raise ComparisonError(f"{a.folder} vs {b.folder}: {err}") from None
    return {
        "a": str(a.folder),
        "b": str(b.folder),
        "volumes": len(a.names),
        "split": a.split,
        "tokenizer": tokenizer,
        "metrics": metrics,
    }


def format_comparison(result: dict[str, Any]) -> list[str]:
    """The lines ``graftkit compare`` prints."""
    labels = {"macro_f1": "macro F1", "crg": "CRG", "rouge_l": "ROUGE-L"}
    first = next(iter(result["metrics"].values()))
    lines = [
        f"A = {result['a']}",
        f"B = {result['b']}",
        f"paired on the {result['volumes']} volumes both evaluated"
        + (f" ({result['split']} split)" if result.get("split") else "")
        + f"; {first['n_resamples']} bootstrap resamples, {first['n_permutations']} "
        f"permutations, seed {first['seed']}",
        f"  {'metric':<9} {'A':>7} {'B':>7} {'A - B':>8}  {'95% CI of A - B':<19} p (permutation)",
    ]
    for key, c in result["metrics"].items():
        interval = f"[{c['low']:+.3f}, {c['high']:+.3f}]" if c["low"] is not None else "undefined"
        lines.append(
            f"  {labels.get(key, key):<9} {c['a']:>7.3f} {c['b']:>7.3f} {c['difference']:>+8.3f}"
            f"  {interval:<19} {c['p_value']:.4f}"
        )
    return lines
