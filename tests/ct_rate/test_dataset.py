"""CTRateDataset on CT-RATE's own layout: round trip, bad input, file variants, lazy loading."""

from __future__ import annotations

import json
import random
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from graftkit_ct_rate import layout
from graftkit_ct_rate.classes import CLASSES
from graftkit_ct_rate.dataset import CTRateDataset
from graftkit_ct_rate.embeddings import EmbeddingError, open_embeddings
from graftkit_ct_rate.synth import synthesize
from graftkit_ct_rate.text import CLASS_TEMPLATES, NORMAL_TEXT

from graftkit.config import DataConfig
from graftkit.data import VolumeDataset, collate_volumes

TINY = {"n_train": 12, "n_valid": 6, "dim": 16, "seed": 1, "verify_reports": 0}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_rate") / "cohort"
    synthesize(root, **TINY)
    return root


@pytest.fixture
def cohort(pristine, tmp_path):
    """A private copy each test may damage."""
    return shutil.copytree(pristine, tmp_path / "cohort")


def dataset(root, tmp_path, **config) -> CTRateDataset:
    return CTRateDataset(DataConfig(data_dir=root, **config), tmp_path / "work")


def reasons(ds: CTRateDataset) -> dict[str, str]:
    return {name: reason for _, name, reason in ds.skips.entries}


def test_round_trip_of_the_synthetic_layout(cohort, tmp_path):
    ds = dataset(cohort, tmp_path)
    train, valid = ds.records("train"), ds.records("valid")
    assert (len(train), len(valid)) == (12, 6) and ds.skips.entries == []
    assert ds.embedding_dim == 16
    labels = pd.read_csv(layout.labels_csv(cohort, "valid"))
    reports = pd.read_csv(layout.reports_csv(cohort, "valid"))
    meta = pd.read_csv(layout.metadata_csv(cohort, "valid"))
    for i, volume in enumerate(valid):
        assert volume.name == labels.VolumeName[i] and volume.split == "valid"
        np.testing.assert_array_equal(volume.labels, labels[CLASSES].to_numpy()[i])
        assert (
            volume.findings == reports.Findings_EN[i]
            and volume.impressions == reports.Impressions_EN[i]
        )
        slices, z_mm = ds.load(volume)
        stored = np.load(cohort / "embeddings" / f"{layout.volume_stem(volume.name)}.npy")
        assert slices.dtype == torch.float32 and slices.shape == (meta.NumberofSlices[i], 16)
        np.testing.assert_array_equal(slices.numpy(), stored.astype(np.float32))
        np.testing.assert_allclose(
            z_mm.numpy(), np.arange(len(stored)) * meta.ZSpacing[i], rtol=1e-6
        )
    batch = collate_volumes([VolumeDataset(ds, valid)[i] for i in range(3)])
    assert batch["slices"].shape[0] == 3 and batch["labels"].shape == (3, 18)
    assert ds.oracle()["macro_f1"] == json.loads((cohort / "oracle.json").read_text())["macro_f1"]
    assert ds.records("train") is train  # computed once: no duplicate skips on a second call


def test_limits_are_honoured(cohort, tmp_path):
    ds = dataset(cohort, tmp_path, limit_train=5, limit_valid=2)
    assert len(ds.records("train")) == 5 and len(ds.records("valid")) == 2
    assert [v.name for v in ds.records("train")] == list(
        pd.read_csv(layout.labels_csv(cohort, "train")).VolumeName[:5]
    )


def _stems(root, split="train"):
    return [layout.volume_stem(n) for n in pd.read_csv(layout.labels_csv(root, split)).VolumeName]


def test_missing_embedding_is_skipped_and_counted_by_name(cohort, tmp_path):
    gone = _stems(cohort)[3]
    (cohort / "embeddings" / f"{gone}.npy").unlink()
    ds = dataset(cohort, tmp_path)
    assert len(ds.records("train")) == 11
    assert reasons(ds)[f"{gone}.nii.gz"].startswith("missing embedding:")
    assert ds.skips.summary()["by_reason"] == {"missing embedding": 1}


@pytest.mark.parametrize(
    ("damage", "kind"),
    [
        ("nan", "non-finite embedding"),
        ("inf", "non-finite embedding"),
        ("wrong_d", "wrong d"),
        ("garbage", "unreadable embedding"),
        ("truncated", "unreadable embedding"),
        ("int", "unreadable embedding"),
        ("1d", "bad shape"),
    ],
)
def test_bad_embedding_rejects_that_volume_by_name(cohort, tmp_path, damage, kind):
    stem = _stems(cohort)[5]
    path = cohort / "embeddings" / f"{stem}.npy"
    array = np.load(path)
    if damage == "nan":
        array[len(array) // 2, 3] = np.nan
    elif damage == "inf":
        array[-1, 0] = np.inf
    elif damage == "wrong_d":
        array = np.zeros((len(array), 12), np.float16)
    elif damage == "int":
        array = array.astype(np.int32)
    elif damage == "1d":
        array = array[:, 0]
    if damage == "garbage":
        path.write_bytes(b"not an array at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    else:
        np.save(path, array)
    ds = dataset(cohort, tmp_path)
    names = [v.name for v in ds.records("train")]
    assert f"{stem}.nii.gz" not in names and len(names) == 11
    reason = reasons(ds)[f"{stem}.nii.gz"]
    assert reason.startswith(f"{kind}:") and str(path) in reason
    assert ds.embedding_dim == 16


def test_nan_appearing_after_records_is_caught_at_load(cohort, tmp_path):
    ds = dataset(cohort, tmp_path)
    volume = ds.records("train")[0]
    path = cohort / "embeddings" / f"{layout.volume_stem(volume.name)}.npy"
    array = np.load(path)
    array[0, 0] = np.nan
    np.save(path, array)
    with pytest.raises(EmbeddingError, match=volume.name.removesuffix(".nii.gz")):
        ds.load(volume)
    assert reasons(ds)[volume.name].startswith("non-finite embedding:")


def test_finiteness_scan_is_remembered_until_the_file_changes(cohort, tmp_path, monkeypatch):
    dataset(cohort, tmp_path).records("train")
    calls = []
    import graftkit_ct_rate.dataset as module

    real = module.first_nonfinite
    monkeypatch.setattr(module, "first_nonfinite", lambda a: calls.append(1) or real(a))
    dataset(cohort, tmp_path).records("train")
    assert calls == []  # same workdir, unchanged files: no data read
    path = cohort / "embeddings" / f"{_stems(cohort)[0]}.npy"
    np.save(path, np.load(path) * 2)
    dataset(cohort, tmp_path).records("train")
    assert len(calls) == 1


@pytest.mark.parametrize("column", ["Cardiomegaly", "Interlobular septal thickening"])
def test_labels_csv_missing_a_column_stops_naming_it(cohort, tmp_path, column):
    path = layout.labels_csv(cohort, "train")
    pd.read_csv(path).drop(columns=[column]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=column):
        dataset(cohort, tmp_path).records("train")


def test_bad_label_cell_and_list_mismatches_are_skipped_with_reasons(cohort, tmp_path):
    labels_path, reports_path = (
        layout.labels_csv(cohort, "train"),
        layout.reports_csv(cohort, "train"),
    )
    labels, reports = pd.read_csv(labels_path), pd.read_csv(reports_path)
    labels.loc[0, "Emphysema"] = 2
    labels = labels.drop(index=1)
    reports = reports.drop(index=2)
    labels.to_csv(labels_path, index=False)
    reports.to_csv(reports_path, index=False)
    ds = dataset(cohort, tmp_path)
    assert len(ds.records("train")) == 9
    why = reasons(ds)
    names = list(pd.read_csv(layout.metadata_csv(cohort, "train")).VolumeName)
    assert why[names[0]].startswith("bad labels: Emphysema")
    assert why[names[1]].startswith("missing labels:")
    assert why[names[2]].startswith("missing report:")


def test_missing_zspacing_falls_back_to_slice_index_with_a_warning(cohort, tmp_path):
    path = layout.metadata_csv(cohort, "valid")
    pd.read_csv(path).drop(columns=["ZSpacing"]).to_csv(path, index=False)
    ds = dataset(cohort, tmp_path)
    with pytest.warns(UserWarning, match="ZSpacing"):
        volume = ds.records("valid")[0]
    _, z_mm = ds.load(volume)
    np.testing.assert_array_equal(z_mm.numpy(), np.arange(len(z_mm), dtype=np.float32))
    assert volume.meta["z_source"] == "slice index"


def test_one_bad_zspacing_value_warns_naming_that_volume(cohort, tmp_path):
    path = layout.metadata_csv(cohort, "valid")
    meta = pd.read_csv(path)
    meta.loc[2, "ZSpacing"] = np.nan
    meta.to_csv(path, index=False)
    with pytest.warns(UserWarning, match=meta.VolumeName[2]):
        volumes = dataset(cohort, tmp_path).records("valid")
    assert [v.meta["z_source"] for v in volumes].count("slice index") == 1


def test_cls_token_of_n_t_d_files_and_npz_variants(cohort, tmp_path):
    stems = _stems(cohort)
    folder = cohort / "embeddings"
    original = {s: np.load(folder / f"{s}.npy") for s in stems[:3]}
    tokens = np.stack(
        [original[stems[0]], -original[stems[0]], original[stems[0]] + 1], axis=1
    )  # (N, 3, d)
    np.save(folder / f"{stems[0]}.npy", tokens)
    (folder / f"{stems[1]}.npy").unlink()
    np.savez_compressed(folder / f"{stems[1]}.npz", embeddings=original[stems[1]])
    (folder / f"{stems[2]}.npy").unlink()
    z_given = np.linspace(10.0, 99.0, len(original[stems[2]]))
    np.savez(folder / f"{stems[2]}.npz", embeddings=original[stems[2]], z_mm=z_given)
    ds = dataset(cohort, tmp_path)
    by_name = {layout.volume_stem(v.name): v for v in ds.records("train")}
    assert len(by_name) == 12
    for stem in stems[:3]:
        slices, _ = ds.load(by_name[stem])
        np.testing.assert_array_equal(slices.numpy(), original[stem].astype(np.float32))
    assert by_name[stems[0]].meta["tokens"] == 3
    np.testing.assert_allclose(ds.load(by_name[stems[2]])[1].numpy(), z_given, rtol=1e-6)
    spacing = pd.read_csv(layout.metadata_csv(cohort, "train")).ZSpacing[1]
    np.testing.assert_allclose(ds.load(by_name[stems[1]])[1].numpy()[1], spacing, rtol=1e-6)


def test_npz_without_the_embeddings_key_is_unreadable(cohort, tmp_path):
    stem = _stems(cohort)[0]
    (cohort / "embeddings" / f"{stem}.npy").unlink()
    np.savez(cohort / "embeddings" / f"{stem}.npz", features=np.zeros((4, 16)))
    ds = dataset(cohort, tmp_path)
    ds.records("train")
    assert "no key 'embeddings'" in reasons(ds)[f"{stem}.nii.gz"]


def test_nested_embedding_layout_is_found(cohort, tmp_path):
    name = pd.read_csv(layout.labels_csv(cohort, "valid")).VolumeName[0]
    stem = layout.volume_stem(name)
    nested = cohort / "embeddings" / layout.volume_folder(name) / f"{stem}.npy"
    nested.parent.mkdir(parents=True)
    (cohort / "embeddings" / f"{stem}.npy").rename(nested)
    assert str(nested).endswith(
        f"valid/valid_{stem.split('_')[1]}/valid_{stem.split('_')[1]}_a/{stem}.npy"
    )
    ds = dataset(cohort, tmp_path)
    assert ds.records("valid")[0].meta["embedding"] == str(nested)


def test_embeddings_are_memory_mapped_not_read(cohort, tmp_path):
    path = cohort / "embeddings" / f"{_stems(cohort)[0]}.npy"
    assert isinstance(open_embeddings(path), np.memmap)
    tokens = np.load(path)[:, None, :].repeat(2, axis=1)
    np.save(path, tokens)
    view = open_embeddings(path)  # the CLS column of (N, T, d) is still a view on the map
    assert isinstance(view, np.memmap) and view.shape == (tokens.shape[0], 16)


def test_texts_come_from_the_report(cohort, tmp_path):
    pytest.importorskip("graftkit_ct_rate.labels.rules")
    from graftkit_ct_rate.labels.sentences import split_sentences

    ds = dataset(cohort, tmp_path)
    volumes = ds.records("train") + ds.records("valid")
    normal = [v for v in volumes if not v.labels.any()]
    sick = max(volumes, key=lambda v: v.labels.sum())
    for v in normal:
        assert (
            ds.condition_texts(v) == []
            and ds.positive_findings_text(v, random.Random(0)) == NORMAL_TEXT
        )
    texts = ds.condition_texts(sick)
    assert [c for c, _ in texts] == list(np.flatnonzero(sick.labels))
    own = set(split_sentences(sick.findings))
    from_report = [text for _, text in texts if text in own]
    assert len(from_report) >= len(texts) - 1  # the synthetic report holds one sentence per class
    orders = {ds.positive_findings_text(sick, random.Random(seed)) for seed in range(12)}
    assert len(orders) > 1 and all(len(o) == len(next(iter(orders))) for o in orders)
    assert ds.narrative_text(sick) == sick.findings
    with_impressions = dataset(cohort, tmp_path, include_impressions=True)
    assert with_impressions.narrative_text(sick) == f"{sick.findings} {sick.impressions}"
    assert [ds.class_text(c) for c in range(18)] == CLASS_TEMPLATES


def test_prepare_synthesises_the_default_cohort_once_per_options(tmp_path):
    options = {"n_train": 4, "n_valid": 3, "dim": 8, "verify_reports": 0}
    config = DataConfig(cache_dir=tmp_path / "cache", synth=options)
    first = CTRateDataset(config, tmp_path / "work")
    first.prepare()
    assert len(first.records("train")) == 4 and first.embedding_dim == 8
    assert first.oracle() is not None and "macro_f1" in first.oracle()
    stamp = (first.root / "oracle.json").stat().st_mtime_ns
    second = CTRateDataset(config, tmp_path / "work")
    second.prepare()
    assert second.root == first.root and (second.root / "oracle.json").stat().st_mtime_ns == stamp
    other = CTRateDataset(
        DataConfig(cache_dir=tmp_path / "cache", synth={**options, "seed": 9}), tmp_path / "w"
    )
    other.prepare()
    assert other.root != first.root
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        [first.root.name, other.root.name]
    )


def test_unknown_split_and_missing_files_are_named(cohort, tmp_path):
    ds = dataset(cohort, tmp_path)
    with pytest.raises(ValueError, match="test"):
        ds.records("test")
    layout.reports_csv(cohort, "train").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_reports\.csv"):
        ds.records("train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ds.records("valid")) == 6


def test_embeddings_written_by_the_dale_ct_script_are_read_without_conversion(cohort, tmp_path):
    """DALE-CT's ``scripts/ctrate_generate_embeddings.py`` writes ``{VolumeName without
    .nii.gz}.npy`` (float32, CLS only: ``[N, 1024]``) straight into its ``main_output`` folder,
    next to an empty ``embeddings/`` folder and ``crop_visualizations/*.png``. With
    ``embeddings_dir`` pointing there, every volume is found, loaded bit for bit, positioned
    from ZSpacing, and nothing there is reported as unused."""
    features = tmp_path / "features" / "ctrate" / "lejepa_1s_cropped_global"
    (features / "embeddings").mkdir(parents=True)
    (features / "crop_visualizations").mkdir()
    rng = np.random.default_rng(2)
    written = {}
    for split in ("train", "valid"):
        for name in pd.read_csv(layout.labels_csv(cohort, split)).VolumeName:
            stem = name.removesuffix(".nii.gz")
            written[name] = rng.normal(size=(int(rng.integers(3, 9)), 1024)).astype(np.float32)
            np.save(features / f"{stem}.npy", written[name])
            (features / "crop_visualizations" / f"vis_00_{stem}_slice0.png").write_bytes(b"png")
    ds = dataset(cohort, tmp_path, embeddings_dir=features)
    valid = ds.records("valid")
    assert len(ds.records("train")) == 12 and len(valid) == 6 and ds.skips.entries == []
    assert ds.embedding_dim == 1024 and not any("match no VolumeName" in w for w in ds.warnings)
    meta = pd.read_csv(layout.metadata_csv(cohort, "valid")).set_index("VolumeName")
    for volume in valid:
        slices, z_mm = ds.load(volume)
        np.testing.assert_array_equal(slices.numpy(), written[volume.name])
        spacing = meta.ZSpacing[volume.name]
        np.testing.assert_allclose(z_mm.numpy(), np.arange(len(slices)) * spacing, rtol=1e-6)
