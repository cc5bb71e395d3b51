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


def write_dale_ct_output(folder, volumes: dict[str, np.ndarray]):
    """A folder as DALE-CT's ``scripts/ctrate_generate_embeddings.py`` leaves it: one
    ``{VolumeName without .nii.gz}.npy`` per volume, ``np.save`` of the float32 CLS outputs
    concatenated over slice batches, saved straight into ``output_folders.main_output``; beside
    them the ``embeddings/`` folder it creates and never fills, and ``crop_visualizations/``."""
    (folder / "embeddings").mkdir(parents=True)
    (folder / "crop_visualizations").mkdir()
    for stem, array in volumes.items():
        batches = [array[i : i + 32] for i in range(0, len(array), 32)]
        np.save(folder / f"{stem}.npy", np.concatenate(batches, axis=0))
        (folder / "crop_visualizations" / f"vis_00_{stem}_slice0.png").write_bytes(b"\x89PNG")
    return folder


def test_the_dale_ct_embedding_files_are_read_as_they_are(tmp_path):
    """CLS-only files ``[N, 1024]`` float32 (``extract_patches: false``, the CT-RATE configs),
    and ``[N, 1 + 18 · 18, 1024]`` files (``extract_patches: true``; token 0 the CLS) are read
    without conversion; the PNGs and the empty folder are not inputs."""
    rng = np.random.default_rng(0)
    cls_only = rng.normal(size=(40, 1024)).astype(np.float32)
    with_patches = rng.normal(size=(2, 325, 1024)).astype(np.float32)
    out = write_dale_ct_output(
        tmp_path / "lejepa_1s_cropped_global" / "valid",
        {"valid_1_a_1": cls_only, "valid_2_a_1": with_patches},
    )
    inputs = PrecomputedEncoder.discover_inputs(out.parent)
    assert [p.name for p in inputs] == ["valid_1_a_1.npy", "valid_2_a_1.npy"]
    enc = PrecomputedEncoder(expected_dim=1024, z_spacing_mm=1.5)
    a, b = (enc.encode(p) for p in inputs)
    assert a.embeddings.dtype == np.float32
    np.testing.assert_array_equal(a.embeddings, cls_only)
    np.testing.assert_allclose(a.z_mm, 1.5 * np.arange(40))
    np.testing.assert_array_equal(b.embeddings, with_patches[:, 0])
