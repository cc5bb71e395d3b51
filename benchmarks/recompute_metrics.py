"""Recompute a run's label metrics from ``generations.jsonl`` alone and check ``metrics.json``.

An independent check of what ``graftkit eval`` stores: this script shares no code with graftkit
(it imports nothing from it) and counts in exact rational arithmetic (``fractions.Fraction``).
From each volume's reference labels (``labels``) and the labels extracted from its generated
report (``predicted``), over the class list of ``metrics.json`` ``eval.per_class``:

* micro F1 = 2·ΣTP / (2·ΣTP + ΣFP + ΣFN), weighted F1 = Σ_c P_c·F1_c / Σ_c P_c;
* CRG (Hamamci et al., arXiv 2505.17167; the VLM3D challenge's scorer): T = n·C cells, A positive
  ones, w = (T - A) / (2A), s = w·TP - w·FN - FP, CRG = A·w / (2·A·w - s);
* the all-positive report: F1_c = 2·P_c / (2·P_c + N_c), its macro and micro F1 and its CRG.

Run: ``python -m benchmarks.recompute_metrics RUN`` (RUN: a run or evaluation folder). Prints
each value beside the stored one and exits 1 when one differs by more than 1e-12.
"""

from __future__ import annotations

import argparse
import json
import sys
from fractions import Fraction
from pathlib import Path


def _f1(tp: int, fp: int, fn: int) -> Fraction:
    denominator = 2 * tp + fp + fn
    return Fraction(2 * tp, denominator) if denominator else Fraction(0)


def _crg(tp: int, fn: int, fp: int, cells: int, positives: int) -> Fraction | None:
    if positives == 0 or positives == cells:
        return None
    w = Fraction(cells - positives, 2 * positives)
    s = w * tp - w * fn - fp
    s_max = positives * w
    return s_max / (2 * s_max - s)


def recompute(folder: Path) -> dict[str, Fraction | None]:
    """The recomputed values, keyed by their ``metrics.json`` path."""
    metrics = json.loads((folder / "metrics.json").read_text())
    classes = list(metrics["eval"]["per_class"])
    rows = [
        json.loads(line)
        for line in (folder / "generations.jsonl").read_text().splitlines()
        if line.strip()
    ]
    counts = {c: {"tp": 0, "fp": 0, "fn": 0, "positives": 0} for c in classes}
    for row in rows:
        truth, predicted = set(row["labels"]), set(row["predicted"])
        unknown = (truth | predicted) - set(classes)
        if unknown:
            raise SystemExit(f"{folder}: volume {row['name']!r} names unknown classes {unknown}")
        for c in classes:
            counts[c]["tp"] += c in truth and c in predicted
            counts[c]["fp"] += c not in truth and c in predicted
            counts[c]["fn"] += c in truth and c not in predicted
            counts[c]["positives"] += c in truth
    n, n_classes = len(rows), len(classes)
    tp = sum(v["tp"] for v in counts.values())
    fp = sum(v["fp"] for v in counts.values())
    fn = sum(v["fn"] for v in counts.values())
    positives = sum(v["positives"] for v in counts.values())
    per_class = {c: _f1(v["tp"], v["fp"], v["fn"]) for c, v in counts.items()}
    weighted = (
        sum(counts[c]["positives"] * per_class[c] for c in classes) / positives
        if positives
        else Fraction(0)
    )
    every = {c: _f1(v["positives"], n - v["positives"], 0) for c, v in counts.items()}
    return {
        "eval.macro_f1": sum(per_class.values()) / n_classes,
        "eval.micro_f1": _f1(tp, fp, fn),
        "eval.weighted_f1": weighted,
        "eval.crg": _crg(tp, fn, fp, n * n_classes, positives),
        "baselines.all_positive.macro_f1": sum(every.values()) / n_classes,
        "baselines.all_positive.micro_f1": _f1(positives, n * n_classes - positives, 0),
        "baselines.all_positive.crg": _crg(
            positives, 0, n * n_classes - positives, n * n_classes, positives
        ),
    }


def _stored(metrics: dict, path: str):
    value = metrics
    for key in path.split("."):
        value = value[key]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder or an evaluation folder")
    args = parser.parse_args(argv)
    metrics = json.loads((args.run / "metrics.json").read_text())
    bad = 0
    for path, value in recompute(args.run).items():
        stored = _stored(metrics, path)
        same = (value is None and stored is None) or (
            value is not None and stored is not None and abs(float(value) - stored) <= 1e-12
        )
        bad += not same
        shown = "undefined" if value is None else f"{float(value):.12f}"
        print(
            f"{path:<34} recomputed {shown:<16} stored {stored!r:<22} {'ok' if same else 'DIFFERS'}"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
