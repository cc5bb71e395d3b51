"""``precomputed``: released embedding files are validated and served with z positions."""

from __future__ import annotations

import numpy as np
import pytest
from graftkit_encoders.precomputed import PrecomputedEncoder


def test_npy_2d_3d_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(6, 8)).astype(np.float16)
    tokens = rng.normal(size=(6, 5, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", flat)
    np.save(tmp_path / "b.npy", tokens)
    z = np.array([-10, -8.5, -7, -5.5, -4, -2.5], dtype=np.float32)
    np.savez(tmp_path / "c.npz", embeddings=flat, z_mm=z)
    enc = PrecomputedEncoder(expected_dim=8, z_spacing_mm=1.5)
    a = enc.encode(tmp_path / "a.npy")
    np.testing.assert_array_equal(a.embeddings, flat.astype(np.float32))
    np.testing.assert_allclose(a.z_mm, 1.5 * np.arange(6))
    np.testing.assert_array_equal(enc.encode(tmp_path / "b.npy").embeddings, tokens[:, 0])
    np.testing.assert_array_equal(
        PrecomputedEncoder(token=3).encode(tmp_path / "b.npy").embeddings, tokens[:, 3]
    )
    np.testing.assert_array_equal(enc.encode(tmp_path / "c.npz").z_mm, z)


def test_bad_files_named(tmp_path):
    bad = np.ones((4, 8), dtype=np.float32)
    bad[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "wide.npy", np.ones((4, 16), dtype=np.float32))
    np.savez(tmp_path / "nokey.npz", feats=np.ones((4, 8)))
    np.savez(tmp_path / "badz.npz", embeddings=np.ones((4, 8)), z_mm=np.arange(3.0))
    np.save(tmp_path / "ints.npy", np.ones((4, 8), dtype=np.int64))
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY garbage")
    enc = PrecomputedEncoder(expected_dim=8)
    cases = {
        "nan.npy": r"^nan\.npy: NaN/inf in 1 slice\(s\), first at slice 2",
        "wide.npy": r"^wide\.npy: embedding dim 16, expected 8",
        "nokey.npz": r"^nokey\.npz: \.npz has no 'embeddings' array \(keys: feats\)",
        "badz.npz": r"^badz\.npz: z_mm has shape \(3,\), expected \(4,\)",
        "ints.npy": r"^ints\.npy: embeddings have dtype int64",
        "cut.npy": r"^cut\.npy: unreadable",
    }
    for name, pattern in cases.items():
        with pytest.raises(ValueError, match=pattern):
            enc.encode(tmp_path / name)
