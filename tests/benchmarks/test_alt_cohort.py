"""The independent-code cohort (``benchmarks/alt_cohort.py``) is a usable CT-RATE
cohort, and its two knobs do what they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from graftkit_ct_rate.dataset import CTRateDataset

from benchmarks.alt_cohort import write
from graftkit.config import DataConfig


def _slices(root, name="train_3_a_1"):
    return np.load(root / "embeddings" / f"{name}.npy").astype(np.float64)


def test_the_plugin_reads_every_volume_with_the_manual_labels(tmp_path):
    assert write(tmp_path / "c", dim=8, copies=2) == {"valid": 200, "train": 1200}
    data = CTRateDataset(DataConfig(data_dir=tmp_path / "c"), tmp_path / "work")
    train, valid = data.records("train"), data.records("valid")
    assert (len(train), len(valid)) == (1200, 200)
    # the copies share their report and labels, not their slices
    first, copy = train[0], train[600]
    assert first.findings == copy.findings
    np.testing.assert_array_equal(first.labels, copy.labels)
    assert not np.allclose(data.load(first)[0].numpy()[:10], data.load(copy)[0].numpy()[:10])


def test_findings_scale_with_the_amplitude_and_touch_only_positive_volumes(tmp_path):
    for amplitude in (0.0, 1.0, 3.0):
        write(tmp_path / str(amplitude), dim=8, amplitude=amplitude)
    labels = CTRateDataset(DataConfig(data_dir=tmp_path / "1.0"), tmp_path / "work")
    for volume in labels.records("train")[:40]:
        name = Path(volume.meta["embedding"]).stem
        s0, s1, s3 = (_slices(tmp_path / a, name) for a in ("0.0", "1.0", "3.0"))
        # float16 files: compare to the resolution of the larger values
        np.testing.assert_allclose(s3 - s1, 2 * (s1 - s0), atol=0.05)
        assert (np.abs(s1 - s0).max() > 0.1) == bool(np.asarray(volume.labels).any())
