"""``lejepa-ct`` preprocessing and encoding on a tiny ViT with random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graftkit_encoders.lejepa import (
    LeJepaCTConfig,
    LeJepaCTEncoder,
    SlicePreprocessor,
    cropped_global_box,
    dale_ct_transform,
)
from graftkit_encoders.readers import CTVolume, VolumeError

from .conftest import TINY, ct_phantom, write_nifti


@pytest.fixture(scope="module")
def encoder() -> LeJepaCTEncoder:
    return LeJepaCTEncoder(**TINY, batch_size=2)


def test_box_resize_body_box_is_shared_by_all_slices():
    """transform=box_resize: slice 0 has body on the left, slice 1 on the right: both are cropped
    to the union box, so a column keeps the same physical position in every slice."""
    hu = np.full((2, 30, 40), -1000.0, dtype=np.float32)
    hu[0, 10:20, 5:12] = 50
    hu[1, 12:25, 28:33] = 50
    hu[1, 2, 2] = -600  # lung-like air below the threshold does not count as body
    pre = SlicePreprocessor(LeJepaCTConfig(**TINY))
    assert pre.body_box(hu) == (10, 25, 5, 33)


def test_box_resize_window_crop_and_resize_match_reference():
    """transform=box_resize: [-997, 888] → [0, 1] (no z-score), crop, then antialiased bilinear
    resize to image_size."""
    config = LeJepaCTConfig(**TINY | {"transform": "box_resize"})
    hu = ct_phantom(n=3, rows=48, cols=64)
    pre = SlicePreprocessor(config)
    box = pre.body_box(hu)
    out = pre.box_resize(hu, box)
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


@pytest.mark.parametrize("transform", ["cropped_global", "full", "box_resize"])
def test_encode_equals_manual_pipeline(tmp_path, transform):
    """encode(path) = read → the configured transform → ViT final-norm CLS, slice by slice; the
    default is cropped_global."""
    options = TINY | ({} if transform == "cropped_global" else {"transform": transform})
    encoder = LeJepaCTEncoder(**options, batch_size=2)
    assert LeJepaCTConfig().transform == "cropped_global"
    hu = np.round(ct_phantom(n=5))
    path = write_nifti(tmp_path / "valid_1_a_1.nii.gz", hu, spacing=(0.7, 0.7, 1.5), z0=-50.0)
    encoded = encoder.encode(path)
    assert encoded.embeddings.shape == (5, 32) and encoded.embeddings.dtype == np.float32
    np.testing.assert_allclose(encoded.z_mm, -50.0 + 1.5 * np.arange(5))
    if transform == "box_resize":
        pixels = encoder.preprocess.box_resize(hu, encoder.preprocess.body_box(hu))
    else:
        pixels = dale_ct_transform(hu, mode=transform, crop_size=42)
    assert pixels.shape[-2:] == ((42, 42) if transform != "full" else (42, 56))
    with torch.inference_mode():
        expected = torch.stack(
            [encoder.model(pixel_values=pixels[i : i + 1]).pooler_output[0] for i in range(5)]
        )
    np.testing.assert_allclose(encoded.embeddings, expected.numpy(), atol=1e-5)


def test_slices_are_independent_and_air_outside_the_box_is_ignored(encoder):
    """cropped_global: changing tissue of one slice changes only that slice's embedding (the
    shared box is unchanged); changing air two pixels or more outside the square box (RoI align
    reads one pixel beyond it) changes nothing."""
    hu = ct_phantom(n=4, rows=48, cols=70)
    hu[:, 10:40, 22:52] = 40.0  # a 30 × 30 mediastinum: the phantom's thin tissue is opened away
    base = encoder.encode_volume(CTVolume(hu, np.arange(4.0), (1.0, 1.0), source=_p("a.nii")))
    changed = hu.copy()
    changed[2, 20:26, 25:35] += 300
    out = encoder.encode_volume(CTVolume(changed, np.arange(4.0), (1.0, 1.0), source=_p("a.nii")))
    diff = np.abs(out.embeddings - base.embeddings).max(axis=1)
    assert diff[2] > 1e-3 and np.all(diff[[0, 1, 3]] < 1e-5)
    r0, r1, c0, c1 = cropped_global_box(hu)
    assert r1 - r0 == c1 - c0 < 40 and c0 >= 2 and c1 <= 68
    outside = hu.copy()
    outside[:, :, : c0 - 1] = -1020  # air (below -500, so the box stays), outside the box
    outside[:, :, c1 + 1 :] = -900
    out = encoder.encode_volume(CTVolume(outside, np.arange(4.0), (1.0, 1.0), source=_p("a.nii")))
    np.testing.assert_allclose(out.embeddings, base.embeddings, atol=1e-6)


def test_box_groups_follow_box_slices_not_batch_size():
    """The cropped_global box is shared by box_slices slices whatever the forward batch size."""
    hu = ct_phantom(n=6, rows=48, cols=64)
    hu[5, 2:46, 1:63] = 20.0  # a wide body in the last slice only
    volume = CTVolume(hu, np.arange(6.0), (1.0, 1.0), source=_p("a.nii"))
    a = LeJepaCTEncoder(**TINY, box_slices=3, batch_size=2).encode_volume(volume)
    b = LeJepaCTEncoder(**TINY, box_slices=3, batch_size=5).encode_volume(volume)
    whole = LeJepaCTEncoder(**TINY, box_slices=None).encode_volume(volume)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    assert np.abs(whole.embeddings[:3] - a.embeddings[:3]).max() > 1e-3


def test_volume_without_body(encoder):
    """box_resize refuses a volume with no tissue; cropped_global (as the script) takes the
    whole slice."""
    air = np.full((3, 20, 20), -1000.0, dtype=np.float32)
    volume = CTVolume(air, np.arange(3.0), (1.0, 1.0), source=_p("empty.nii"))
    boxed = LeJepaCTEncoder(**TINY | {"transform": "box_resize"})
    with pytest.raises(VolumeError, match=r"^empty\.nii: no voxel above -500 HU"):
        boxed.encode_volume(volume)
    assert np.isfinite(encoder.encode_volume(volume).embeddings).all()


def test_options_and_weights_required():
    with pytest.raises(ValueError, match="lejepa-ct needs --weights PATH"):
        LeJepaCTEncoder(**TINY | {"allow_random_weights": False})
    with pytest.raises(
        ValueError, match="hidden_size 30 is not divisible by num_attention_heads 4"
    ):
        LeJepaCTEncoder(**TINY | {"hidden_size": 30, "num_attention_heads": 4})
    with pytest.raises(ValueError, match="extra"):
        LeJepaCTEncoder(**TINY | {"hidden": 32})
    with pytest.raises(ValueError, match="reader=ct_rate needs metadata_csv=PATH"):
        LeJepaCTEncoder(**TINY | {"reader": "ct_rate"})
    with pytest.raises(ValueError, match="crop_size 10 is smaller than patch_size 14"):
        LeJepaCTEncoder(**TINY | {"crop_size": 10})
    assert LeJepaCTEncoder.dim == 1024 and LeJepaCTEncoder.name == "lejepa-ct"


def _p(name):
    from pathlib import Path

    return Path(name)


def test_ct_rate_reader_setting(tmp_path):
    """reader=ct_rate with metadata_csv: the encoder reads the file in stored order with the
    volume's RescaleSlope/Intercept, then embeds exactly what it read."""
    from graftkit_encoders.readers import read_ct_rate_volume, read_rescale_table

    hu = np.round(ct_phantom(n=3))
    path = write_nifti(tmp_path / "valid_5_a_1.nii.gz", hu + 8192)
    csv = tmp_path / "validation_metadata.csv"
    csv.write_text("VolumeName,RescaleSlope,RescaleIntercept\nvalid_5_a_1.nii.gz,1,-8192\n")
    encoder = LeJepaCTEncoder(**TINY, reader="ct_rate", metadata_csv=str(csv))
    read = read_ct_rate_volume(path, read_rescale_table(csv))
    np.testing.assert_array_equal(encoder.read(path).hu, read.hu)
    np.testing.assert_array_equal(read.hu, np.transpose(hu[:, ::-1, ::-1], (0, 2, 1)))
    np.testing.assert_allclose(
        encoder.encode(path).embeddings, encoder.encode_volume(read).embeddings, atol=1e-6
    )
    with pytest.raises(ValueError, match=r"metadata_csv .*missing\.csv: cannot read"):
        LeJepaCTEncoder(**TINY, reader="ct_rate", metadata_csv=str(tmp_path / "missing.csv"))
