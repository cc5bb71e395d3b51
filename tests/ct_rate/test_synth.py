"""Synthetic CT-RATE cohort: layout, realism (prevalence, slice counts, localisation), oracle."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from graftkit_ct_rate import layout
from graftkit_ct_rate.classes import CLASSES
from graftkit_ct_rate.sentence_bank import data_path
from graftkit_ct_rate.synth import (
    FINDING_MODELS,
    MatchedFilterOracle,
    SynthOptions,
    best_threshold,
    embed,
    main,
    make_generator,
    plan_split,
    synthesize,
)

TINY = {"n_train": 20, "n_valid": 10, "dim": 16, "seed": 3}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "cohort"
    summary = synthesize(root, verify_reports=30, **TINY)
    return root, summary


def test_writes_the_official_layout(cohort):
    root, summary = cohort
    for split, n in (("train", 20), ("valid", 10)):
        reports = pd.read_csv(layout.reports_csv(root, split))
        labels = pd.read_csv(layout.labels_csv(root, split))
        meta = pd.read_csv(layout.metadata_csv(root, split))
        assert list(reports.columns) == layout.REPORT_COLUMNS
        assert list(labels.columns) == layout.LABEL_COLUMNS
        assert list(meta.columns) == layout.METADATA_COLUMNS
        assert len(reports) == len(labels) == len(meta) == n
        assert list(reports.VolumeName) == list(labels.VolumeName) == list(meta.VolumeName)
        assert all(
            name.startswith(f"{split}_") and name.endswith(".nii.gz") for name in reports.VolumeName
        )
        assert set(np.unique(labels[CLASSES].to_numpy())) <= {0, 1}
        for name, n_slices in zip(meta.VolumeName, meta.NumberofSlices):
            array = np.load(root / "embeddings" / f"{layout.volume_stem(name)}.npy")
            assert array.dtype == np.float16 and array.shape == (n_slices, 16)
            assert np.isfinite(array).all()
    oracle = json.loads((root / "oracle.json").read_text())
    assert set(oracle["per_class"]) == set(CLASSES)
    assert 0.0 <= oracle["macro_f1"] <= 1.0 and oracle["macro_f1"] == summary["oracle_macro_f1"]
    assert np.array(oracle["generator"]["patterns"]).shape == (18, 16)
    assert oracle["generator"]["options"]["seed"] == 3


def test_same_seed_same_cohort_other_seed_other_cohort(cohort, tmp_path):
    root, _ = cohort
    again = tmp_path / "again"
    synthesize(again, verify_reports=0, **TINY)
    other = tmp_path / "other"
    synthesize(other, verify_reports=0, **{**TINY, "seed": 4})
    csv = layout.labels_csv(root, "train").relative_to(root)
    first = sorted((root / "embeddings").iterdir())[0].name
    assert (again / csv).read_bytes() == (root / csv).read_bytes()
    assert (again / "embeddings" / first).read_bytes() == (root / "embeddings" / first).read_bytes()
    assert (other / csv).read_bytes() != (root / csv).read_bytes()


def test_refuses_a_non_empty_output_and_leaves_no_partial_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="taken"):
        synthesize(tmp_path / "taken", **TINY)
    with pytest.raises(ValueError):
        synthesize(tmp_path / "bad", n_train=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def _plan(n: int, split: str = "train", seed: int = 0, dim: int = 8):
    options = SynthOptions(n_train=n, n_valid=n, dim=dim, seed=seed)
    gen = make_generator(options, np.random.default_rng(seed))
    return plan_split(split, n, gen, options, np.random.default_rng(seed + 1)), gen, options


def test_label_prevalence_and_co_occurrence_match_the_real_reports():
    volumes, _, _ = _plan(3000)
    synthetic = np.stack([v.labels for v in volumes])
    real = pd.read_csv(data_path("ct_rate_labeled_reports.csv"))[CLASSES].to_numpy()
    # bootstrap: prevalence within ~4 binomial standard errors of the real one
    tolerance = 4 * np.sqrt(real.mean(0) * (1 - real.mean(0)) / len(synthetic)) + 0.01
    assert np.all(np.abs(synthetic.mean(0) - real.mean(0)) < tolerance)
    # co-occurrence: pairwise joint rates match too (independent sampling would not)
    joint_real = real.T @ real / len(real)
    joint_synth = synthetic.T @ synthetic / len(synthetic)
    independent = np.outer(real.mean(0), real.mean(0))
    assert np.abs(joint_synth - joint_real).max() < 0.03
    assert np.abs(independent - joint_real).max() > 0.05


@pytest.mark.parametrize("split", ["train", "valid"])
def test_slice_counts_and_spacings_look_like_ct_rate(split):
    plans = {n: _plan(n, split, seed)[0] for n, seed in ((2000, 0), (10, 5))}
    for volumes in plans.values():
        counts = np.array([v.n_slices for v in volumes])
        spacing = np.array([v.spacing for v in volumes])
        assert (counts < 32).sum() >= 1  # at least one tiny volume per split, whatever its size
        assert counts.min() >= 2
        assert spacing.min() >= 0.75 and spacing.max() <= 3.0
    counts = np.array([v.n_slices for v in plans[2000]])
    assert ((counts >= 100) & (counts <= 600)).mean() > 0.85
    assert (counts > 600).sum() > 20
    assert len({v.spacing for v in plans[2000]}) >= 5


def test_findings_sit_in_their_anatomical_range():
    volumes, gen, options = _plan(400)
    emphysema, effusion = CLASSES.index("Emphysema"), CLASSES.index("Pleural effusion")
    centres = {
        c: [lesion[1] for v in volumes for lesion in v.lesions if lesion[0] == c]
        for c in (emphysema, effusion)
    }
    assert len(centres[emphysema]) > 40 and len(centres[effusion]) > 20
    assert max(centres[emphysema]) < min(centres[effusion])  # upper zones vs lung bases
    for c, t in centres.items():
        assert FINDING_MODELS[c].lo <= min(t) and max(t) <= FINDING_MODELS[c].hi
    # in the embeddings: the projection on the class pattern peaks where the finding is
    vol = next(v for v in volumes if v.labels[effusion] and v.n_slices > 200 and v.t[-1] > 1.0)
    vol.lesions = [(effusion, 0.9, 0.03, 20.0)]
    slices, anatomy = embed(vol, gen, options, np.random.default_rng(0))
    residual = slices.astype(np.float64) - anatomy - gen.shared - vol.patient
    peak = vol.t[np.argmax(residual @ gen.patterns[effusion])]
    assert abs(peak - 0.9) < 0.05


def test_oracle_scores_rise_with_the_finding_and_only_for_its_class():
    volumes, gen, options = _plan(50, dim=32)  # d >= 18: the patterns have a dual basis
    oracle = MatchedFilterOracle(gen, options.noise)
    vol = next(v for v in volumes if v.n_slices > 100)
    cardiomegaly = CLASSES.index("Cardiomegaly")
    vol.lesions = []
    base, _ = embed(vol, gen, options, np.random.default_rng(1))
    vol.lesions = [(cardiomegaly, 0.7, 0.08, 3.0)]
    sick, _ = embed(vol, gen, options, np.random.default_rng(1))  # same noise, plus the finding
    before, after = oracle.scores(base, vol), oracle.scores(sick, vol)
    assert after[cardiomegaly] > before[cardiomegaly] + 5
    others = np.arange(len(CLASSES)) != cardiomegaly
    assert np.abs(after[others] - before[others]).max() < 1.0  # dual basis: no cross-talk


def _f1(scores: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    pred = scores >= threshold
    return 2 * (pred & truth).sum() / (pred.sum() + truth.sum())


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 12, size=40).astype(float)  # ties on purpose
        truth = rng.random(40) < 0.3
        brute = max(_f1(scores, truth, t) for t in np.unique(scores))
        assert _f1(scores, truth, best_threshold(scores, truth)) == pytest.approx(brute)


def test_reports_are_labelled_like_their_labels_and_mostly_normal(cohort):
    pytest.importorskip("graftkit_ct_rate.labels.rules")
    _, summary = cohort
    reports = summary["reports"]
    assert reports["checked"] == 30
    assert reports["findings_exact"] >= 0.85
    assert 0.7 <= reports["normal_sentence_fraction"] <= 0.95


def test_sentence_bank_agrees_with_the_current_rules_extractor():
    rules = pytest.importorskip("graftkit_ct_rate.labels.rules")
    from graftkit_ct_rate.sentence_bank import load_sentence_bank

    extractor, bank = rules.CTRateRulesExtractor(), load_sentence_bank()
    rng = np.random.default_rng(0)
    normal = sorted({i for r in bank["reports"] for i in r["normal"]})
    expected = {int(i): set() for i in rng.choice(normal, 150, replace=False)}
    for c, ids in enumerate(bank["class_findings"]):
        expected.update({int(i): {c} for i in rng.choice(ids, min(8, len(ids)), replace=False)})
    wrong = {
        bank["sentences"][i]: got
        for i, want in expected.items()
        if (got := extractor.sentence_labels(bank["sentences"][i])) != want
    }
    assert not wrong, (
        f"stale sentence bank, rebuild with `python -m graftkit_ct_rate.sentence_bank`: {wrong}"
    )


def test_cli_entry_writes_a_cohort(tmp_path, capsys):
    assert (
        main(["--output", str(tmp_path / "c"), "--n-train", "3", "--n-valid", "2", "--dim", "8"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["n_train"] == 3
    assert len(list((tmp_path / "c" / "embeddings").glob("*.npy"))) == 5
