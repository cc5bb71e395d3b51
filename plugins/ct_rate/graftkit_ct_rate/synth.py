"""A synthetic CT-RATE cohort with a known signal, and its oracle (docs/design.md, "Embedded default").

:func:`synthesize` writes CT-RATE's own layout (:mod:`graftkit_ct_rate.layout`: reports, labels and
metadata CSVs, one ``embeddings/{stem}.npy`` per volume in float16) plus ``oracle.json``, so real
and synthetic data take the same code path through :class:`~graftkit_ct_rate.dataset.CTRateDataset`.

Generator (``t`` is the body axis: 0 at the lung apices, 1 at the lung bases, > 1 the upper
abdomen; slice ``i`` of a volume sits at ``z_i = i * ZSpacing`` mm and ``t_i = t_0 + z_i / H`` for a
per-patient thorax length ``H``)::

    s_i = m + u + anatomy(t_i) + noise * eps_i + sum_{c positive} sum_{foci} a_c g bump(t_i) p_c

- ``m``: a shared direction, large, so raw slice embeddings are anisotropic (mean cosine high);
- ``u``: a patient offset; ``anatomy(t)``: a smooth random Fourier curve (the same for everyone),
  mostly outside the span of the class patterns (``anatomy_overlap``);
- ``eps_i``: white noise; ``p_c``: a fixed unit pattern direction per class;
- ``bump``: a Gaussian along ``t`` centred in the class's anatomical range (:data:`FINDING_MODELS`),
  with a random extent; ``g`` the severity: a finding is subtle with probability
  ``subtle_fraction`` (``g ~ U(0, subtle_severity)``, barely visible to any reader, as "minimal"
  or "millimetric" findings are) and else clear (``g ~ U(min_severity, 1)``); ``a_c`` a per-class
  amplitude that gives small findings (nodules) a stronger per-slice signal than diffuse ones.

Labels are bootstrapped from the 800 real label vectors, so prevalence and co-occurrence are the
real ones; each synthetic report keeps the normal sentences of the real report its labels came
from and adds, per positive class, one real sentence that the ``ct_rate-rules`` extractor assigns
to exactly that class (:mod:`graftkit_ct_rate.sentence_bank`).

Oracle: a per-class matched filter that knows the generator (anatomy, ``m``, ``u``, ``t_i``, the
pattern directions and the anatomical ranges) but not which findings are present, where, how
large or how severe: the known part is subtracted, the residual is projected on the dual basis of
the patterns (no cross-talk between classes), summed over box-car windows matching the class's
possible extents, normalised by its noise level and maximised over the class's range. One threshold per
class is chosen on train for F1; ``oracle.json`` holds the macro F1 on valid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from graftkit.io import atomic_dir
from graftkit_ct_rate import layout
from graftkit_ct_rate.classes import CLASSES
from graftkit_ct_rate.sentence_bank import load_sentence_bank

#: Bumped whenever the generator changes what it writes (part of the cache key of the cohort).
GENERATOR_VERSION = 1
_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class FindingModel:
    """Where along ``t`` a finding sits, how long it is (FWHM, ``t`` units) and how many foci."""

    lo: float
    hi: float
    extent: tuple[float, float]
    foci: tuple[int, int] = (1, 1)


#: One per class, CLASSES order. t = 0 lung apices, ~0.3 aortic arch, ~0.45 carina,
#: 0.55-0.9 heart, ~0.9 oesophageal hiatus, 1 lung bases / diaphragm.
FINDING_MODELS: list[FindingModel] = [
    FindingModel(0.0, 0.7, (0.10, 0.40)),  # Medical material: lines, ports, sternal wires
    FindingModel(0.2, 0.9, (0.10, 0.35)),  # Arterial wall calcification: aorta
    FindingModel(0.6, 0.8, (0.15, 0.25)),  # Cardiomegaly
    FindingModel(0.6, 0.9, (0.10, 0.20)),  # Pericardial effusion
    FindingModel(0.55, 0.75, (0.04, 0.10)),  # Coronary artery wall calcification
    FindingModel(0.85, 1.0, (0.04, 0.10)),  # Hiatal hernia
    FindingModel(0.3, 0.6, (0.03, 0.10), (1, 2)),  # Lymphadenopathy: mediastinal / hilar
    FindingModel(0.05, 0.45, (0.10, 0.30)),  # Emphysema: upper zones
    FindingModel(0.7, 1.0, (0.04, 0.15)),  # Atelectasis: dependent, lower
    FindingModel(0.05, 0.95, (0.01, 0.04), (1, 3)),  # Lung nodule: anywhere, small
    FindingModel(0.2, 0.95, (0.05, 0.25)),  # Lung opacity
    FindingModel(0.05, 0.6, (0.03, 0.12)),  # Pulmonary fibrotic sequela: apical sequelae
    FindingModel(0.75, 1.0, (0.08, 0.20)),  # Pleural effusion: posterior costophrenic
    FindingModel(0.3, 0.8, (0.20, 0.40)),  # Mosaic attenuation pattern: diffuse
    FindingModel(0.4, 0.9, (0.10, 0.25)),  # Peribronchial thickening
    FindingModel(0.4, 1.0, (0.04, 0.15)),  # Consolidation
    FindingModel(0.5, 0.95, (0.05, 0.15)),  # Bronchiectasis: middle / lower lobes
    FindingModel(0.5, 1.0, (0.10, 0.30)),  # Interlobular septal thickening: basal
]
assert len(FINDING_MODELS) == len(CLASSES)

#: Matched-filter widths (Gaussian sigma, t units); each class uses those matching its extents.
FILTER_SIGMAS: tuple[float, ...] = (0.004, 0.008, 0.016, 0.032, 0.064, 0.128)
#: Slice thicknesses (mm) of ordinary scans and their probabilities.
Z_SPACINGS: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
Z_SPACING_P: tuple[float, ...] = (0.12, 0.33, 0.1, 0.15, 0.1, 0.05, 0.15)
CLINICAL_INFORMATION = [
    "Not given.",
    "Cough.",
    "Shortness of breath.",
    "Fever, cough.",
    "Follow-up of malignancy.",
    "Chest pain.",
    "Preoperative evaluation.",
    "Covid-19 suspicion.",
]


class SynthOptions(BaseModel):
    """The generator's knobs (``data.synth`` of a run; part of the cohort's cache key)."""

    model_config = ConfigDict(extra="forbid")

    n_train: int = Field(800, ge=1)
    n_valid: int = Field(200, ge=1)
    dim: int = Field(64, ge=2, description="slice-embedding width d_v")
    seed: int = 0
    signal: float = Field(5.0, gt=0, description="scale of every finding's amplitude (the SNR)")
    extent_exponent: float = Field(
        0.25, ge=0, le=1, description="a_c = signal * (0.1 / mean FWHM_c) ** extent_exponent"
    )
    noise: float = Field(1.0, gt=0, description="per-dimension std of the slice noise")
    anatomy: float = Field(1.0, ge=0, description="per-dimension std of the anatomy curve")
    anatomy_overlap: float = Field(
        0.1, ge=0, le=1, description="scale of the anatomy inside the span of the class patterns"
    )
    patient: float = Field(0.5, ge=0, description="per-dimension std of the patient offset")
    shared: float = Field(3.0, ge=0, description="per-dimension size of the shared direction")
    subtle_fraction: float = Field(0.15, ge=0, le=1, description="findings with a subtle severity")
    subtle_severity: float = Field(
        0.15, ge=0, le=1, description="subtle: g ~ U(0, subtle_severity)"
    )
    min_severity: float = Field(0.4, ge=0, le=1, description="clear: g ~ U(min_severity, 1)")
    long_fraction: float = Field(0.07, ge=0, le=1, description="chest-abdomen scans (N > 600)")
    rescan_fraction: float = Field(0.1, ge=0, le=1, description="second reconstructions of a scan")
    verify_reports: int = Field(50, ge=0, description="reports re-labelled by the extractor")


@dataclass
class CohortGenerator:
    """The fixed part of the generator: what the oracle knows."""

    freqs: np.ndarray  # [F]
    anatomy_coef: np.ndarray  # [2F, d]
    shared: np.ndarray  # [d]
    patterns: np.ndarray  # [C, d], unit rows
    amplitude: np.ndarray  # [C]

    def anatomy(self, t: np.ndarray) -> np.ndarray:
        phase = 2 * np.pi * t[:, None] * self.freqs[None, :]
        return np.concatenate([np.sin(phase), np.cos(phase)], axis=1) @ self.anatomy_coef


@dataclass
class SynthVolume:
    """One planned volume: geometry, findings (lesions), report; its embeddings come from :func:`embed`."""

    name: str
    patient: np.ndarray  # [d] offset u
    t0: float
    thorax_mm: float
    spacing: float
    n_slices: int
    labels: np.ndarray
    lesions: list[tuple[int, float, float, float]]  # (class, centre t, sigma t, amplitude)
    findings: str
    impressions: str
    clinical: str
    n_normal: int  # normal sentences in the findings

    @property
    def t(self) -> np.ndarray:
        return self.t0 + np.arange(self.n_slices) * self.spacing / self.thorax_mm


def make_generator(options: SynthOptions, rng: np.random.Generator) -> CohortGenerator:
    d, n_freq = options.dim, 8
    freqs = 0.5 * np.arange(1, n_freq + 1)
    coef = rng.standard_normal((2 * n_freq, d)) * options.anatomy / np.sqrt(n_freq)
    direction = rng.standard_normal(d)
    shared = direction / np.linalg.norm(direction) * options.shared * np.sqrt(d)
    patterns = rng.standard_normal((len(CLASSES), d))
    patterns /= np.linalg.norm(patterns, axis=1, keepdims=True)
    if d > len(CLASSES):
        # Findings change the slice in directions that anatomy mostly does not: shrink the part
        # of the anatomy curve inside the pattern span to `anatomy_overlap` of its size.
        basis, _ = np.linalg.qr(patterns.T)  # [d, C] orthonormal
        inside = coef @ basis @ basis.T
        coef = coef - inside + options.anatomy_overlap * inside
    mean_extent = np.array([np.mean(m.extent) for m in FINDING_MODELS])
    amplitude = options.signal * (0.1 / mean_extent) ** options.extent_exponent
    return CohortGenerator(freqs, coef, shared, patterns, amplitude)


def _geometry(kind: str, rng: np.random.Generator) -> tuple[float, float, float, int]:
    """(t0, thorax length H in mm, ZSpacing, N) of one scan."""
    thorax = rng.uniform(250.0, 330.0)
    if kind == "short":  # a truncated series: under 32 slices
        spacing = float(rng.choice(Z_SPACINGS, p=Z_SPACING_P))
        n = int(rng.integers(8, 32))
        return rng.uniform(0.0, 0.8), thorax, spacing, n
    if kind == "long":  # chest-abdomen, thin slices
        spacing = float(rng.choice((0.75, 1.0)))
        t0, t1 = rng.uniform(-0.1, 0.0), rng.uniform(1.8, 2.4)
    else:
        spacing = float(rng.choice(Z_SPACINGS, p=Z_SPACING_P))
        t0, t1 = rng.uniform(-0.12, 0.02), rng.uniform(1.05, 1.3)
    n = round((t1 - t0) * thorax / spacing) + 1
    return t0, thorax, spacing, n


def _lesions(labels: np.ndarray, gen: CohortGenerator, options: SynthOptions, rng) -> list:
    lesions = []
    for c in np.flatnonzero(labels):
        model = FINDING_MODELS[c]
        if rng.random() < options.subtle_fraction:
            severity = rng.uniform(0.0, options.subtle_severity)
        else:
            severity = rng.uniform(options.min_severity, 1.0)
        for _ in range(int(rng.integers(model.foci[0], model.foci[1] + 1))):
            centre = rng.uniform(model.lo, model.hi)
            sigma = rng.uniform(*model.extent) / _FWHM
            lesions.append((int(c), centre, sigma, gen.amplitude[c] * severity))
    return lesions


def _pick(items: list, rng: np.random.Generator):
    return items[int(rng.integers(len(items)))]


def _report(donor: dict, labels: np.ndarray, bank: dict, rng) -> tuple[str, str]:
    """Findings: the donor's normal sentences, one bank sentence per positive class at the place a
    radiologist writes about it. Impressions: one sentence per positive class, or a normal one."""
    sentences = bank["sentences"]
    normal = [sentences[i] for i in donor["normal"]]
    placed = [(k / max(1, len(normal) - 1), 0, s) for k, s in enumerate(normal)]
    impressions = []
    for c in np.flatnonzero(labels):
        sentence = sentences[_pick(bank["class_findings"][c], rng)]
        placed.append((bank["class_position"][c] + rng.uniform(-0.1, 0.1), 1, sentence))
        pool = bank["class_impressions"][c] or bank["class_findings"][c]
        impressions.append(sentences[_pick(pool, rng)])
    placed.sort(key=lambda item: (item[0], item[1]))
    if not impressions:
        impressions = [sentences[_pick(bank["normal_impressions"], rng)]]
    return " ".join(s for _, _, s in placed), " ".join(impressions)


def plan_split(
    split: str, n: int, gen: CohortGenerator, options: SynthOptions, rng
) -> list[SynthVolume]:
    """Volumes of one split: bootstrap labels/donor, geometry, lesions and report per scan."""
    bank = load_sentence_bank()
    donors = bank["reports"]
    short_at = int(rng.integers(n))
    volumes: list[SynthVolume] = []
    patient = 0
    while len(volumes) < n:
        patient += 1
        donor = donors[int(rng.integers(len(donors)))]
        labels = np.asarray(donor["labels"], dtype=np.int64)
        offset = rng.standard_normal(options.dim) * options.patient
        lesions = _lesions(labels, gen, options, rng)
        findings, impressions = _report(donor, labels, bank, rng)
        clinical = _pick(CLINICAL_INFORMATION, rng)
        reconstructions = 2 if rng.random() < options.rescan_fraction else 1
        for recon in range(1, reconstructions + 1):
            if len(volumes) >= n:
                break
            if len(volumes) == short_at or rng.random() < 0.004:
                kind = "short"
            else:
                kind = "long" if rng.random() < options.long_fraction else "normal"
            t0, thorax, spacing, n_slices = _geometry(kind, rng)
            name = f"{split}_{patient}_a_{recon}.nii.gz"
            volumes.append(
                SynthVolume(
                    name,
                    offset,
                    t0,
                    thorax,
                    spacing,
                    n_slices,
                    labels,
                    lesions,
                    findings,
                    impressions,
                    clinical,
                    len(donor["normal"]),
                )
            )
    return volumes


def embed(
    vol: SynthVolume, gen: CohortGenerator, options: SynthOptions, rng
) -> tuple[np.ndarray, np.ndarray]:
    """Slice embeddings ``[N, d]`` float16 of one volume, and its anatomy term (for the oracle)."""
    t = vol.t
    anatomy = gen.anatomy(t)
    x = anatomy + gen.shared + vol.patient
    x = x + options.noise * rng.standard_normal((vol.n_slices, options.dim))
    for c, centre, sigma, amplitude in vol.lesions:
        bump = np.exp(-0.5 * ((t - centre) / sigma) ** 2)
        x += (amplitude * bump)[:, None] * gen.patterns[c][None, :]
    return x.astype(np.float16), anatomy


class MatchedFilterOracle:
    """Per-class matched filter that knows the generator's true signal (module docstring)."""

    def __init__(self, gen: CohortGenerator, noise: float):
        self.gen = gen
        p = gen.patterns
        # Dual basis: residual @ dual gives each class's amplitude free of the other patterns
        # (when d >= C); below that, plain projections.
        self.dual = np.linalg.pinv(p) if p.shape[1] >= p.shape[0] else p.T
        self.noise_std = noise * np.linalg.norm(self.dual, axis=0)  # [C]
        #: per filter width, the classes whose extents it matches
        self.by_width = [
            [
                c
                for c, m in enumerate(FINDING_MODELS)
                if m.extent[0] / _FWHM / 1.5 <= sigma <= m.extent[1] / _FWHM * 1.5
            ]
            for sigma in FILTER_SIGMAS
        ]
        #: per class, the t range where a finding's centre may be (its anatomical range)
        self.ranges = [(m.lo, m.hi) for m in FINDING_MODELS]

    def scores(
        self, slices: np.ndarray, vol: SynthVolume, anatomy: np.ndarray | None = None
    ) -> np.ndarray:
        """``[C]`` detection statistics of one volume (higher = more likely present)."""
        t = vol.t
        if anatomy is None:
            anatomy = self.gen.anatomy(t)
        known = anatomy + self.gen.shared + vol.patient
        amplitude = (slices.astype(np.float64) - known) @ self.dual  # [N, C]
        # Box-car matched filters (a window of ~2.8 sigma catches ~95% of the best Gaussian
        # filter's SNR) from one cumulative sum; a sum of w white samples has std sqrt(w).
        n = amplitude.shape[0]
        cumulative = np.concatenate(
            [np.zeros((1, amplitude.shape[1])), np.cumsum(amplitude, axis=0)]
        )
        slices_per_t = vol.thorax_mm / vol.spacing
        out = np.full(len(CLASSES), -1e9)
        for k, sigma in enumerate(FILTER_SIGMAS):
            w = int(np.clip(round(2.8 * sigma * slices_per_t), 1, n))
            z = (cumulative[w:] - cumulative[:-w]) / (np.sqrt(w) * self.noise_std[None, :])
            centre = t[(w - 1) // 2 : (w - 1) // 2 + z.shape[0]]
            for c in self.by_width[k]:
                inside = (centre >= self.ranges[c][0]) & (centre <= self.ranges[c][1])
                if inside.any():
                    out[c] = max(out[c], float(z[inside, c].max()))
        return out


def _f1(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = float((pred & truth).sum())
    precision = tp / pred.sum() if pred.sum() else 0.0
    recall = tp / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f1, precision, recall


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold ``score >= thr`` with the highest F1 on (``scores``, ``truth``)."""
    truth = truth.astype(bool)
    if not truth.any():
        return float("inf")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], truth[order]
    tp = np.cumsum(y)
    k = np.arange(1, len(s) + 1)
    f1 = 2 * tp / (k + truth.sum())
    distinct = np.append(s[1:] < s[:-1], True)  # cut only between different scores
    best = int(np.argmax(np.where(distinct, f1, -1)))
    below = s[best + 1] if best + 1 < len(s) else s[best] - 1.0
    return float((s[best] + below) / 2)


def _oracle_report(train: tuple, valid: tuple, gen: CohortGenerator, options: SynthOptions) -> dict:
    (train_scores, train_labels), (valid_scores, valid_labels) = train, valid
    per_class, f1s = {}, []
    for c, name in enumerate(CLASSES):
        thr = best_threshold(train_scores[:, c], train_labels[:, c])
        pred = valid_scores[:, c] >= thr
        truth = valid_labels[:, c].astype(bool)
        f1, precision, recall = _f1(pred, truth)
        per_class[name] = {
            "f1": f1,
            "precision": precision,
            "recall": recall,
            "support": int(truth.sum()),
            "threshold": thr if np.isfinite(thr) else None,
        }
        if truth.any():
            f1s.append(f1)
    return {
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "split": "valid",
        "classes_in_macro": len(f1s),
        "method": (
            "per-class matched filter knowing the generator (anatomy, shared direction, patient "
            "offset, slice positions, pattern directions, anatomical ranges): residual projected "
            "on the dual basis of the patterns, Gaussian-smoothed at the class's extents, "
            "noise-normalised, max over the class's range; threshold per class maximising F1 on "
            "train; macro F1 over the valid classes with support"
        ),
        "per_class": per_class,
        "generator": {
            "version": GENERATOR_VERSION,
            "options": options.model_dump(),
            "finding_models": {
                name: {"t_range": [m.lo, m.hi], "fwhm_t": list(m.extent), "foci": list(m.foci)}
                for name, m in zip(CLASSES, FINDING_MODELS)
            },
            "amplitude": dict(zip(CLASSES, np.round(gen.amplitude, 6).tolist())),
            "anatomy_freqs": gen.freqs.tolist(),
            "anatomy_coef": np.round(gen.anatomy_coef, 6).tolist(),
            "shared": np.round(gen.shared, 6).tolist(),
            "patterns": np.round(gen.patterns, 6).tolist(),
            "filter_sigmas_t": list(FILTER_SIGMAS),
        },
    }


def _verify_reports(volumes: list[SynthVolume], k: int, rng) -> dict[str, Any]:
    """Fraction of reports the ``ct_rate-rules`` extractor labels exactly like their labels."""
    if k == 0 or not volumes:
        return {"checked": 0}
    from graftkit_ct_rate.labels.rules import CTRateRulesExtractor

    pick = rng.choice(len(volumes), size=min(k, len(volumes)), replace=False)
    chosen = [volumes[i] for i in pick]
    labels = np.stack([v.labels for v in chosen])
    extractor = CTRateRulesExtractor()
    findings = extractor.extract([v.findings for v in chosen])
    # extract() is the union over sentences, so a report's labels are its sections' union
    full = findings | extractor.extract([v.impressions for v in chosen])
    return {
        "checked": len(chosen),
        "findings_exact": float((findings == labels).all(axis=1).mean()),
        "findings_impressions_exact": float((full == labels).all(axis=1).mean()),
        "findings_class_agreement": float((findings == labels).mean()),
    }


def _write_split(root: Path, split: str, volumes: list[SynthVolume]) -> None:
    reports = pd.DataFrame(
        {
            "VolumeName": [v.name for v in volumes],
            "ClinicalInformation_EN": [v.clinical for v in volumes],
            "Technique_EN": [
                f"Non-contrast axial images were obtained with {v.spacing:g} mm slice thickness."
                for v in volumes
            ],
            "Findings_EN": [v.findings for v in volumes],
            "Impressions_EN": [v.impressions for v in volumes],
        }
    )
    labels = pd.DataFrame(np.stack([v.labels for v in volumes]), columns=CLASSES)
    labels.insert(0, "VolumeName", [v.name for v in volumes])
    metadata = pd.DataFrame(
        {
            "VolumeName": [v.name for v in volumes],
            "XYSpacing": ["[0.7, 0.7]"] * len(volumes),
            "ZSpacing": [v.spacing for v in volumes],
            "NumberofSlices": [v.n_slices for v in volumes],
            "RescaleIntercept": [-1024] * len(volumes),
            "RescaleSlope": [1] * len(volumes),
            "Rows": [512] * len(volumes),
            "Columns": [512] * len(volumes),
        }
    )
    for frame, path in (
        (reports, layout.reports_csv(root, split)),
        (labels, layout.labels_csv(root, split)),
        (metadata, layout.metadata_csv(root, split)),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)


class _Progress:
    def __init__(self, progress: Any, total: int):
        self.progress, self.total, self.done, self.task = progress, total, 0, None
        if progress is not None and hasattr(progress, "add_task"):
            self.task = progress.add_task("synthetic CT-RATE cohort", total=total)

    def step(self) -> None:
        self.done += 1
        if self.task is not None:
            self.progress.update(self.task, completed=self.done)
        elif callable(self.progress) and (self.done % 50 == 0 or self.done == self.total):
            self.progress(self.done, self.total)


def synthesize(
    output_dir: Path,
    n_train: int = 800,
    n_valid: int = 200,
    dim: int = 64,
    seed: int = 0,
    progress: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Write a synthetic cohort in CT-RATE's layout to ``output_dir`` and return its summary.

    Args:
        output_dir: created (must not exist or be empty); written atomically through a sibling
            temporary folder renamed into place at the end.
        n_train, n_valid: volumes per split; dim: slice-embedding width; seed: everything.
        progress: ``progress(done, total)`` or a rich ``Progress``.
        options: further :class:`SynthOptions` (``signal``, ``noise``, ...).

    Returns the summary (also in ``oracle.json`` under ``"cohort"``): oracle macro F1, timing,
    slice-count range, extractor agreement on the reports, normal-sentence fraction.
    """
    start = time.perf_counter()
    opts = SynthOptions(n_train=n_train, n_valid=n_valid, dim=dim, seed=seed, **options)
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"synthetic cohort output {output_dir} exists and is not empty")
    load_sentence_bank()  # fail early, before writing anything, when the bank is missing
    param_seq, train_seq, valid_seq, check_seq = np.random.SeedSequence(opts.seed).spawn(4)
    gen = make_generator(opts, np.random.default_rng(param_seq))
    oracle = MatchedFilterOracle(gen, opts.noise)

    ticker = _Progress(progress, opts.n_train + opts.n_valid)
    results, everything = {}, []
    with atomic_dir(output_dir) as tmp:  # a cohort folder is complete or absent
        (tmp / layout.EMBEDDINGS_DIR).mkdir(parents=True)
        for split, n, seq in (
            ("train", opts.n_train, train_seq),
            ("valid", opts.n_valid, valid_seq),
        ):
            rng = np.random.default_rng(seq)
            volumes = plan_split(split, n, gen, opts, rng)
            scores = np.empty((len(volumes), len(CLASSES)))
            for i, vol in enumerate(volumes):
                slices, anatomy = embed(vol, gen, opts, rng)
                np.save(tmp / layout.EMBEDDINGS_DIR / f"{layout.volume_stem(vol.name)}.npy", slices)
                scores[i] = oracle.scores(slices, vol, anatomy)
                ticker.step()
            _write_split(tmp, split, volumes)
            results[split] = (scores, np.stack([v.labels for v in volumes]))
            everything.extend(volumes)
        report = _oracle_report(results["train"], results["valid"], gen, opts)
        n_slices = np.array([v.n_slices for v in everything])
        summary = {
            "output_dir": str(output_dir),
            "n_train": opts.n_train,
            "n_valid": opts.n_valid,
            "dim": opts.dim,
            "seed": opts.seed,
            "oracle_macro_f1": report["macro_f1"],
            "n_slices": {
                "min": int(n_slices.min()),
                "median": float(np.median(n_slices)),
                "max": int(n_slices.max()),
                "above_600": int((n_slices > 600).sum()),
                "below_32": int((n_slices < 32).sum()),
            },
            "reports": _verify_reports(
                everything, opts.verify_reports, np.random.default_rng(check_seq)
            ),
        }
        n_positive = sum(int(v.labels.sum()) for v in everything)
        n_sentences = n_positive + sum(v.n_normal for v in everything)
        summary["reports"]["normal_sentence_fraction"] = 1.0 - n_positive / n_sentences
        summary["seconds"] = round(time.perf_counter() - start, 2)
        report["cohort"] = summary
        (tmp / layout.ORACLE_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """``graftkit synth ct_rate --output DIR [--n-train --n-valid --dim --seed]``."""
    parser = argparse.ArgumentParser(
        prog="graftkit synth ct_rate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-valid", type=int, default=200)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = synthesize(args.output, args.n_train, args.n_valid, args.dim, args.seed)
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
