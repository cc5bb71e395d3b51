"""Measure the ``ct_rate-rules`` label extractor against the 800 manually labelled CT-RATE reports.

Reproduces the tables of docs/label-extractors.md::

    python benchmarks/label_extractor_cv.py            # dev (600) and held-out (200) tables
    python benchmarks/label_extractor_cv.py --json OUT.json

The split is fixed (seeded permutation of the 800 rows): the rules were developed by reading
errors on the 600 dev reports only; the 200 held-out reports were scored once, at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from graftkit_ct_rate.classes import CLASSES
from graftkit_ct_rate.labels import CTRateRulesExtractor

REPORTS_CSV = (
    Path(__file__).resolve().parents[1]
    / "plugins/ct_rate/graftkit_ct_rate/data/ct_rate_labeled_reports.csv"
)
SPLIT_SEED = 0
N_HOLDOUT = 200


def dev_holdout_split(
    n: int, n_holdout: int = N_HOLDOUT, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(dev, holdout)`` of a fixed seeded permutation, each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def per_class_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-class F1 / precision / recall / support (0/0 counts as 1.0: nothing to find, none found)."""
    scores = {}
    for c, name in enumerate(CLASSES):
        tp = int(((y_true[:, c] == 1) & (y_pred[:, c] == 1)).sum())
        fp = int(((y_true[:, c] == 0) & (y_pred[:, c] == 1)).sum())
        fn = int(((y_true[:, c] == 1) & (y_pred[:, c] == 0)).sum())
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        scores[name] = {
            "f1": f1,
            "precision": precision,
            "recall": recall,
            "support": tp + fn,
            "fp": fp,
            "fn": fn,
        }
    return scores


def macro(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted means over the 18 classes."""
    return {
        k: float(np.mean([s[k] for s in scores.values()])) for k in ("f1", "precision", "recall")
    }


def markdown_table(dev: dict, holdout: dict) -> str:
    """Per-class table with dev and held-out F1 / precision / recall side by side."""
    lines = [
        "| Class | dev F1 | dev P | dev R | dev n | held-out F1 | held-out P | held-out R | held-out n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CLASSES:
        d, h = dev[name], holdout[name]
        lines.append(
            f"| {name} | {d['f1']:.3f} | {d['precision']:.3f} | {d['recall']:.3f} | {d['support']} "
            f"| {h['f1']:.3f} | {h['precision']:.3f} | {h['recall']:.3f} | {h['support']} |"
        )
    md, mh = macro(dev), macro(holdout)
    lines.append(
        f"| **macro** | **{md['f1']:.3f}** | {md['precision']:.3f} | {md['recall']:.3f} | "
        f"| **{mh['f1']:.3f}** | {mh['precision']:.3f} | {mh['recall']:.3f} | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=REPORTS_CSV)
    parser.add_argument("--json", type=Path, default=None, help="also write the scores here")
    args = parser.parse_args()

    frame = pd.read_csv(args.csv)
    labels = frame[CLASSES].to_numpy(dtype=np.int64)
    extractor = CTRateRulesExtractor()
    start = time.perf_counter()
    predicted = extractor.extract(frame["report_text"].tolist())
    seconds = time.perf_counter() - start

    dev_rows, holdout_rows = dev_holdout_split(len(frame))
    dev = per_class_scores(labels[dev_rows], predicted[dev_rows])
    holdout = per_class_scores(labels[holdout_rows], predicted[holdout_rows])
    everything = per_class_scores(labels, predicted)
    print(markdown_table(dev, holdout))
    print(
        f"\nmacro F1: dev ({len(dev_rows)}) {macro(dev)['f1']:.4f} | held-out ({len(holdout_rows)}) "
        f"{macro(holdout)['f1']:.4f} | all ({len(frame)}) {macro(everything)['f1']:.4f} | "
        f"{len(frame) / seconds:.0f} reports/s"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "split_seed": SPLIT_SEED,
                    "dev": {"macro": macro(dev), "per_class": dev},
                    "holdout": {"macro": macro(holdout), "per_class": holdout},
                    "all": {"macro": macro(everything), "per_class": everything},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
