"""``lejepa-ct`` preprocessing and encoding on a tiny ViT with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graftkit_encoders.lejepa import LeJepaCTConfig, LeJepaCTEncoder, SlicePreprocessor
from graftkit_encoders.readers import VolumeError

from .conftest import TINY, ct_phantom, write_nifti


@pytest.fixture(scope="module")
def encoder() -> LeJepaCTEncoder:
    return LeJepaCTEncoder(**TINY, batch_size=2)


def test_body_box_is_shared_by_all_slices():
    """Slice 0 has body on the left, slice 1 on the right: both are cropped to the union box,
    so a column keeps the same physical position in every slice."""
    hu = np.full((2, 30, 40), -1000.0, dtype=np.float32)
    hu[0, 10:20, 5:12] = 50
    hu[1, 12:25, 28:33] = 50
    hu[1, 2, 2] = -600  # lung-like air below the threshold does not count as body
    pre = SlicePreprocessor(LeJepaCTConfig(**TINY))
    assert pre.body_box(hu) == (10, 25, 5, 33)


def test_window_crop_and_resize_match_reference():
    """[-997, 888] → [0, 1], crop, then antialiased bilinear resize to image_size."""
    config = LeJepaCTConfig(**TINY)
    hu = ct_phantom(n=3, rows=48, cols=64)
    pre = SlicePreprocessor(config)
    box = pre.body_box(hu)
    out = pre(hu, box)
    r0, r1, c0, c1 = box
    ref = (np.clip(hu[:, r0:r1, c0:c1], -997, 888) + 997) / (888 + 997)
    ref = F.interpolate(
        torch.from_numpy(ref)[:, None],
        size=(42, 42),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    assert out.shape == (3, 1, 42, 42) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref.clamp(0, 1))
    assert out.min() >= 0 and out.max() <= 1


def test_keep_aspect_sizes_are_patch_multiples():
    pre = SlicePreprocessor(LeJepaCTConfig(**TINY | {"image_size": 252, "keep_aspect": True}))
    assert pre.target_size(300, 400) == (196, 252)
    assert pre.target_size(400, 120) == (252, 70)
    assert pre.target_size(10, 400) == (14, 252)
    with pytest.raises(ValueError, match="image_size 250 is not a multiple of patch_size 14"):
        LeJepaCTConfig(image_size=250)


def test_encode_equals_manual_pipeline(tmp_path, encoder):
    """encode(path) = read → shared crop → window → resize → ViT final-norm CLS, slice by slice."""
    hu = np.round(ct_phantom(n=5))
    path = write_nifti(tmp_path / "valid_1_a_1.nii.gz", hu, spacing=(0.7, 0.7, 1.5), z0=-50.0)
    encoded = encoder.encode(path)
    assert encoded.embeddings.shape == (5, 32) and encoded.embeddings.dtype == np.float32
    np.testing.assert_allclose(encoded.z_mm, -50.0 + 1.5 * np.arange(5))
    pixels = encoder.preprocess(hu, encoder.preprocess.body_box(hu))
    with torch.inference_mode():
        expected = torch.stack(
            [encoder.model(pixel_values=pixels[i : i + 1]).pooler_output[0] for i in range(5)]
        )
    np.testing.assert_allclose(encoded.embeddings, expected.numpy(), atol=1e-5)


def test_slices_are_independent_and_air_outside_body_is_ignored(encoder):
    """Perturbation: changing voxels of one slice changes only that slice's embedding; changing
    air outside the body box changes nothing."""
    from graftkit_encoders.readers import CTVolume

    hu = ct_phantom(n=4)
    base = encoder.encode_volume(CTVolume(hu, np.arange(4.0), (1.0, 1.0), source=_p("a.nii")))
    changed = hu.copy()
    changed[2, 20:26, 25:35] += 300
    out = encoder.encode_volume(CTVolume(changed, np.arange(4.0), (1.0, 1.0), source=_p("a.nii")))
    diff = np.abs(out.embeddings - base.embeddings).max(axis=1)
    assert diff[2] > 1e-3 and np.all(diff[[0, 1, 3]] < 1e-5)
    r0, _, _, c1 = encoder.preprocess.body_box(hu)
    outside = hu.copy()
    outside[:, :r0] = -1020  # still air, outside the box
    outside[:, :, c1:] = -900
    out = encoder.encode_volume(CTVolume(outside, np.arange(4.0), (1.0, 1.0), source=_p("a.nii")))
    np.testing.assert_allclose(out.embeddings, base.embeddings, atol=1e-6)


def test_volume_without_body_is_refused(encoder):
    from graftkit_encoders.readers import CTVolume

    air = np.full((3, 20, 20), -1000.0, dtype=np.float32)
    with pytest.raises(VolumeError, match=r"^empty\.nii: no voxel above -500 HU"):
        encoder.encode_volume(CTVolume(air, np.arange(3.0), (1.0, 1.0), source=_p("empty.nii")))


def test_options_and_weights_required():
    with pytest.raises(ValueError, match="lejepa-ct needs --weights PATH"):
        LeJepaCTEncoder(**TINY | {"allow_random_weights": False})
    with pytest.raises(
        ValueError, match="hidden_size 30 is not divisible by num_attention_heads 4"
    ):
        LeJepaCTEncoder(**TINY | {"hidden_size": 30, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="extra"):
        LeJepaCTEncoder(**TINY | {"hidden": 32})
    assert LeJepaCTEncoder.dim == 1024 and LeJepaCTEncoder.name == "lejepa-ct"


def _p(name):
    from pathlib import Path

    return Path(name)
