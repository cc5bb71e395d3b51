"""Training data path at paper shapes: samples/s of the phase-3 loader.

    python -m benchmarks --only data_loading [--quick]

A temporary cohort in CT-RATE's own layout (reports, labels and metadata CSVs, one float16
``embeddings/{stem}.npy`` per volume: 200 volumes, N uniform in 20..600, d = 1,024, ~125 MB) is
read through the real training path: :class:`graftkit_ct_rate.dataset.CTRateDataset` (memory-mapped
``.npy``, float32 copy, NaN/Inf check) -> :func:`graftkit.curriculum.batches.make_loader` with the
phase-3 :class:`~graftkit.curriculum.batches.PhaseCollator` (padding to the batch's longest N,
positive-findings text in a per-sample random order, chat-template tokenisation, whitened text
targets), batch 8, ``max_slices`` 600. The same volumes are also stored as one Arrow dataset
(``datasets``, an ``Array2D((None, d), float16)`` column, memory-mapped) and read through a
``CTRateDataset`` whose ``load`` takes the row from Arrow instead of the ``.npy`` file: only the
storage differs. Each variant runs with 0 and 2 DataLoader workers; the rate is wall-clock samples/s
over one epoch after a warm-up epoch (page cache warm, as in every epoch after the first). The
main process runs with one torch thread, as DataLoader workers do: on a shared machine a
multi-threaded ``isfinite`` over one volume costs tens of ms in thread contention alone. With 0
workers the main process's CPU seconds per sample are the loader's whole cost, which gives the
number of cores an unshared machine needs for a given rate.

Requirement: the loader delivers >= 10x the samples one training step consumes at the paper
profile, taken from the FLOP ESTIMATE of the phase-3 step of Llama-3.2-3B on one H100
(:func:`benchmarks.gpu_paper_scale.estimates`) and, when given, from a measured step rate.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from graftkit_ct_rate import layout
from graftkit_ct_rate.classes import CLASSES
from graftkit_ct_rate.dataset import CTRateDataset
from graftkit_ct_rate.text import CLASS_TEMPLATES, NORMAL_TEXT

from benchmarks import best_times, row, torch_threads
from benchmarks.gpu_paper_scale import estimates
from graftkit.config import DataConfig
from graftkit.curriculum.batches import PhaseCollator, TextTargets, make_loader
from graftkit.data import VolumeDataset
from graftkit.lm.tokenizer import train_tokenizer

FULL = {"volumes": 200, "dim": 1024, "min_slices": 20, "max_slices": 600}
QUICK = {"volumes": 24, "dim": 64, "min_slices": 20, "max_slices": 100}
BATCH = 8
NUM_ZONES = 32
REQUIRED_FACTOR = 10.0


def write_cohort(
    root: Path, volumes: int, dim: int, min_slices: int, max_slices: int, seed: int = 0
) -> list[int]:
    """A train split in CT-RATE's layout with float16 ``.npy`` embeddings; returns the slice counts.

    Reports are a normal sentence plus one template sentence per positive class, so the
    positive-findings text of phase 3 has one segment per label.
    """
    rng = np.random.default_rng(seed)
    (root / layout.EMBEDDINGS_DIR).mkdir(parents=True)
    labels = (rng.random((volumes, len(CLASSES))) < 0.15).astype(int)
    counts = rng.integers(min_slices, max_slices + 1, volumes)
    counts[0] = max_slices
    names = [f"train_{i}_a_1.nii.gz" for i in range(volumes)]
    findings = []
    for name, positives, n in zip(names, labels, counts):
        sentences = [CLASS_TEMPLATES[c] for c in np.flatnonzero(positives)]
        findings.append(" ".join(["Trachea and both main bronchi are open.", *sentences]))
        slices = rng.standard_normal((int(n), dim), dtype=np.float32).astype(np.float16)
        np.save(root / layout.EMBEDDINGS_DIR / f"{layout.volume_stem(name)}.npy", slices)
    for path, frame in (
        (
            layout.reports_csv(root, "train"),
            pd.DataFrame(
                {
                    "VolumeName": names,
                    "ClinicalInformation_EN": "Not given.",
                    "Technique_EN": "Non-contrast chest CT.",
                    "Findings_EN": findings,
                    "Impressions_EN": "",
                }
            ),
        ),
        (
            layout.labels_csv(root, "train"),
            pd.DataFrame({"VolumeName": names, **dict(zip(CLASSES, labels.T))}),
        ),
        (
            layout.metadata_csv(root, "train"),
            pd.DataFrame(
                {"VolumeName": names, "ZSpacing": rng.choice([0.75, 1.0, 1.5, 3.0], volumes)}
            ),
        ),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
    return [int(n) for n in counts]


def write_arrow(dataset: CTRateDataset, cache_dir: Path):
    """The dataset's train volumes as one memory-mapped Arrow dataset (``datasets``)."""
    import datasets
    from datasets import Array2D, Features, Value

    volumes = dataset.records("train")
    dim = dataset.embedding_dim

    def rows():
        for volume in volumes:
            slices = np.load(volume.meta["embedding"], mmap_mode="r")
            yield {"name": volume.name, "slices": np.asarray(slices, dtype=np.float16)}

    features = Features({"name": Value("string"), "slices": Array2D((None, dim), "float16")})
    return datasets.Dataset.from_generator(
        rows, features=features, cache_dir=str(cache_dir), keep_in_memory=False
    )


class ArrowCTRateDataset(CTRateDataset):
    """``CTRateDataset`` whose slice embeddings come from an Arrow table instead of ``.npy`` files."""

    def __init__(self, config: Any, workdir: Path, table: Any):
        super().__init__(config, workdir)
        self.table = table.with_format("numpy", columns=["slices"])
        self.rows = {name: i for i, name in enumerate(table["name"])}

    def load(self, volume) -> tuple[torch.Tensor, torch.Tensor]:
        slices = torch.from_numpy(
            np.asarray(self.table[self.rows[volume.name]]["slices"], np.float32)
        )
        if not torch.isfinite(slices).all():
            raise ValueError(f"non-finite embedding in Arrow row of {volume.name}")
        z_mm = torch.arange(slices.shape[0], dtype=torch.float32) * volume.meta["z_spacing"]
        return slices, z_mm


class HashTextSpace:
    """Stands in for the whitened text space: a fixed unit vector per text (the loader only
    stacks precomputed targets, so their values do not matter here)."""

    dim = 256

    def __getitem__(self, text: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        vector = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
        return vector / vector.norm()


def loader_rate(
    dataset: CTRateDataset, tokenizer, workers: int, max_slices: int
) -> tuple[float, float]:
    """Wall-clock samples/s of one epoch of the phase-3 loader (after one warm-up epoch), and the
    main process's CPU seconds per sample (all of the loader's work when ``workers`` is 0)."""
    volumes = dataset.records("train")
    targets = TextTargets(dataset, volumes, HashTextSpace())
    collator = PhaseCollator(
        dataset, volumes, targets, tokenizer, "positive_findings", NUM_ZONES, seed=0
    )
    rate = cpu = 0.0
    for epoch in range(2):
        loader = make_loader(
            dataset,
            volumes,
            collator,
            BATCH,
            shuffle=True,
            seed=0,
            epoch=epoch,
            max_slices=max_slices,
            num_workers=workers,
        )
        start, cpu_start = time.perf_counter(), time.process_time()
        seen = 0
        for batch in loader:
            seen += batch["slices"].shape[0]
            if batch["input_ids"].shape[1] <= NUM_ZONES:
                raise RuntimeError("data_loading: the collator produced no text tokens")
        rate = seen / (time.perf_counter() - start)
        cpu = (time.process_time() - cpu_start) / seen
    return rate, cpu


def cost_breakdown(
    npy: CTRateDataset, arrow: ArrowCTRateDataset, tokenizer, max_slices: int
) -> dict[str, float]:
    """CPU ms per sample of each stage, one torch thread: reading one volume from ``.npy`` and from
    Arrow (``load``: read, float32 copy, NaN/Inf check), padding (``collate_volumes``) and the
    phase-3 text (positive-findings text, chat-template tokenisation, text targets)."""
    volumes = npy.records("train")
    targets = TextTargets(npy, volumes, HashTextSpace())
    with_text = PhaseCollator(npy, volumes, targets, tokenizer, "positive_findings", NUM_ZONES, 0)
    no_text = PhaseCollator(npy, volumes, None, None, "positive_findings", NUM_ZONES, 0)
    items = VolumeDataset(npy, volumes, max_slices)
    preloaded = [items[i] for i in range(len(volumes))]
    batches = [preloaded[i : i + BATCH] for i in range(0, len(preloaded), BATCH)]
    stages = {
        "load_npy": lambda: [npy.load(v) for v in volumes],
        "load_arrow": lambda: [arrow.load(v) for v in volumes],
        "collate": lambda: [no_text(b) for b in batches],
        "collate_with_text": lambda: [with_text(b) for b in batches],
    }
    with torch_threads(1):
        seconds = best_times(stages, repeats=1)
    ms = {name: 1e3 * t / len(volumes) for name, t in seconds.items()}
    ms["text"] = ms.pop("collate_with_text") - ms["collate"]
    return {f"{name}_ms": round(value, 2) for name, value in ms.items()}


def run(quick: bool = False, step_samples_per_s: float | None = None) -> list[dict]:
    """Loader samples/s for {.npy, Arrow} x {0, 2 workers}, checked against 10x the step's rate.

    Args:
        quick: tiny cohort (CI).
        step_samples_per_s: a measured training-step rate to check as well (e.g. the CPU phase-3
            step of :mod:`benchmarks.step_time`).
    """
    sizes = QUICK if quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="graftkit_bench_data_"))
    try:
        root = tmp / "ct_rate"
        counts = write_cohort(root, **sizes)
        npy_bytes = sum(p.stat().st_size for p in (root / layout.EMBEDDINGS_DIR).iterdir())
        config = DataConfig(data_dir=root, max_slices=sizes["max_slices"])
        npy = CTRateDataset(config, tmp / "work_npy")
        npy.prepare()
        texts = [
            npy.positive_findings_text(v, np.random.default_rng(0)) for v in npy.records("train")
        ]
        tokenizer = train_tokenizer([*texts, NORMAL_TEXT, npy.prompt], vocab_size=512)
        table = write_arrow(npy, tmp / "arrow")
        arrow_bytes = sum(f.stat().st_size for f in (tmp / "arrow").rglob("*.arrow"))
        arrow = ArrowCTRateDataset(config, tmp / "work_arrow", table)
        arrow.prepare()

        breakdown = cost_breakdown(npy, arrow, tokenizer, sizes["max_slices"])
        est = estimates()
        h100 = est["H100"]["samples_per_s"]
        checks = {"H100 est.": h100}
        if step_samples_per_s:
            checks["CPU step"] = step_samples_per_s
        rows = []
        for label, dataset, size in (
            (".npy memmap (CTRateDataset)", npy, npy_bytes),
            ("Arrow (datasets)", arrow, arrow_bytes),
        ):
            for workers in (0, 2):
                with torch_threads(1):
                    rate, cpu = loader_rate(dataset, tokenizer, workers, sizes["max_slices"])
                ratios = {f"x {name}": round(rate / value, 2) for name, value in checks.items()}
                if workers == 0:
                    # every core of an unshared machine runs one worker at 1 / cpu samples/s
                    ratios["CPU_ms_per_sample"] = round(cpu * 1e3, 2)
                    ratios["cores_for_10x_H100"] = math.ceil(REQUIRED_FACTOR * h100 * cpu)
                rows.append(
                    row(
                        f"data loading, {label}",
                        f"{len(counts)} volumes ({size / 2**20:.0f} MB), N {min(counts)}.."
                        f"{max(counts)} (mean {np.mean(counts):.0f}), d={sizes['dim']} float16, "
                        f"batch {BATCH}, {workers} workers, phase-3 collator",
                        {"samples_per_s": round(rate, 1), **ratios},
                        target=f">= {REQUIRED_FACTOR:g}x the step's samples/s",
                        met=None
                        if quick
                        else all(rate >= REQUIRED_FACTOR * v for v in checks.values()),
                    )
                )
        rows.append(
            row(
                "data loading, CPU cost per sample by stage",
                f"same cohort, one torch thread, CPU ms per sample (d={sizes['dim']})",
                breakdown,
            )
        )
        rows.append(
            row(
                "phase-3 step, Llama-3.2-3B on one H100",
                f"batch {BATCH}, seq {est['seq_len']}, {est['assumed_mfu']:.0%} MFU of "
                "989 TFLOP/s bf16 dense",
                {
                    "samples_per_s": round(h100, 1),
                    "loader_needs": round(REQUIRED_FACTOR * h100, 1),
                },
                estimate=True,
            )
        )
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
