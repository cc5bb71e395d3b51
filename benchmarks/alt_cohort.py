"""A second CT-RATE-layout cohort, written by code independent of ``graftkit_ct_rate.synth``.

The embedded default's recipe must hold on a cohort it was not tuned on, written by
different code. This writer shares nothing with the synthetic generator but the file layout:

- reports and labels: the 800 *real* labelled CT-RATE reports shipped with the plugin with their
  manual labels (200 valid, each once; the other 600 train, each ``copies`` times with fresh
  slices), instead of bootstrapped label vectors and per-class sentences;
- slices (``d`` = 48 by default): a per-volume AR(1) random walk in a 6-d background subspace plus
  white noise and a per-patient offset; a positive class adds a *box-shaped* plateau (not a
  Gaussian bump) of random length at a random place inside a class-specific band of the body
  axis, along a per-volume mixture of two class directions, of height ``amplitude`` x U(0.4, 1.2);
- ``N`` uniform in 80..360 slices, ``ZSpacing`` drawn from {1, 1.25, 1.5, 2, 3} mm;
- no ``oracle.json``: the reference is the quality ladder's linear MIL probe on raw zone means.

Run (the measured setting, docs/benchmarks.md): ``python -m benchmarks.alt_cohort --output ALT
--copies 3 --amplitude 2.5 && graftkit run ct_rate --data-dir ALT``. With the defaults (one copy,
amplitude 1) the findings are too weak for a linear probe of the raw zone means (0.31).
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from graftkit_ct_rate import layout
from graftkit_ct_rate.classes import CLASSES
from scipy.signal import lfilter


def write(
    output: Path,
    dim: int = 48,
    seed: int = 11,
    n_valid: int = 200,
    copies: int = 1,
    amplitude: float = 1.0,
) -> dict[str, int]:
    """Write the cohort under ``output``; returns the number of volumes per split."""
    rng = np.random.default_rng(seed)
    source = resources.files("graftkit_ct_rate") / "data" / "ct_rate_labeled_reports.csv"
    with resources.as_file(source) as path:
        reports = pd.read_csv(path)
    reports = reports.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    train = pd.concat([reports.iloc[n_valid:]] * copies, ignore_index=True)
    splits = {"valid": reports.iloc[:n_valid], "train": train}
    background = np.linalg.qr(rng.normal(size=(dim, 6)))[0].T  # [6, d]
    first = rng.normal(size=(len(CLASSES), dim))
    second = rng.normal(size=(len(CLASSES), dim))
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    second /= np.linalg.norm(second, axis=1, keepdims=True)
    bands = np.sort(rng.uniform(0.0, 1.0, size=(len(CLASSES), 2)), axis=1)
    bands[:, 1] = np.maximum(bands[:, 1], bands[:, 0] + 0.25)
    (output / layout.EMBEDDINGS_DIR).mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, frame in splits.items():
        rows, labels, meta = [], [], []
        texts, targets = frame["report_text"].tolist(), frame[CLASSES].to_numpy().astype(int)
        for i, (text, y) in enumerate(zip(texts, targets, strict=True)):
            name = f"{split}_{i + 1}_a_1.nii.gz"
            n = int(rng.integers(80, 361))
            spacing = float(rng.choice([1.0, 1.25, 1.5, 2.0, 3.0]))
            steps = np.vstack([np.zeros((1, 6)), 0.3 * rng.normal(size=(n - 1, 6))])
            walk = lfilter([1.0], [1.0, -0.95], steps, axis=0)  # AR(1): w_t = 0.95 w_{t-1} + e_t
            slices = walk @ background + 0.5 * rng.normal(size=(n, dim))
            slices += rng.normal(size=dim) * 0.5 + 2.0  # patient offset + a shared direction
            for c in np.flatnonzero(y):
                lo, hi = bands[c]
                length = max(1, int(n * rng.uniform(0.03, 0.12)))
                start = int(n * rng.uniform(lo, max(lo, hi - length / n)))
                angle = rng.uniform(0, np.pi / 2)
                pattern = np.cos(angle) * first[c] + np.sin(angle) * second[c]
                slices[start : start + length] += amplitude * rng.uniform(0.4, 1.2) * pattern
            np.save(
                output / layout.EMBEDDINGS_DIR / f"{layout.volume_stem(name)}.npy",
                slices.astype(np.float16),
            )
            rows.append(
                {
                    "VolumeName": name,
                    "ClinicalInformation_EN": "",
                    "Technique_EN": "",
                    "Findings_EN": text,
                    "Impressions_EN": "",
                }
            )
            labels.append({"VolumeName": name, **dict(zip(CLASSES, y.tolist(), strict=True))})
            meta.append(
                {
                    "VolumeName": name,
                    "XYSpacing": "[0.7, 0.7]",
                    "ZSpacing": spacing,
                    "NumberofSlices": n,
                    "RescaleIntercept": -1024,
                    "RescaleSlope": 1,
                    "Rows": 512,
                    "Columns": 512,
                }
            )
        for path, table in (
            (layout.reports_csv(output, split), rows),
            (layout.labels_csv(output, split), labels),
            (layout.metadata_csv(output, split), meta),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(table).to_csv(path, index=False)
        counts[split] = len(rows)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--dim", type=int, default=48)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--copies", type=int, default=1, help="volumes per training report")
    parser.add_argument("--amplitude", type=float, default=1.0, help="scale of the findings")
    args = parser.parse_args()
    print(
        write(
            args.output,
            dim=args.dim,
            seed=args.seed,
            copies=args.copies,
            amplitude=args.amplitude,
        )
    )


if __name__ == "__main__":
    main()
