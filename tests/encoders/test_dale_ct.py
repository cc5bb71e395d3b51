"""``dale_ct_transform`` against the authors' published preprocessing, re-derived here.

The references below follow the authors' code step by step as it reads in the repository
``Kentucky-Open-Science/DALE-CT``:

- ``load_hf/lejepa_1s.py``, ``CTInferenceTransform`` (``mode="full"``);
- ``dataloaders/datasetloader_ctrate_multiscale.py``, ``MultiScaleSliceProcessor.process_batch``
  with ``inference.mode=cropped_global``, then ``scripts/ctrate_generate_embeddings.py``,
  ``center_crop_to_multiple`` (``mode="cropped_global"``). torchvision's ``roi_align`` (which the
  authors call and which is not installed here) is re-derived from its CPU kernel
  (``torchvision/csrc/ops/cpu/roi_align_common.h``), one sample at a time.

The constants are the published ones, written out: clip [-997, 888], mean -142.39 HU, std
360.97 HU, patch 14.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graftkit_encoders.lejepa import cropped_global_box, dale_ct_transform, roi_align_weights
from numpy.lib.stride_tricks import sliding_window_view

from .conftest import ct_phantom

CLIP_MIN, CLIP_MAX = -997.0, 888.0
MEAN_HU, STD_HU = -142.39, 360.97
PATCH = 14


def ct_inference_transform(slice_hu: np.ndarray) -> torch.Tensor:
    """``CTInferenceTransform.__call__`` for one 2-D slice, its steps in its order."""
    volume = torch.from_numpy(slice_hu).float()
    volume = volume.unsqueeze(0)
    range_val = CLIP_MAX - CLIP_MIN
    norm_mean = (MEAN_HU - CLIP_MIN) / range_val
    norm_std = STD_HU / range_val
    volume = torch.clamp(volume, CLIP_MIN, CLIP_MAX)
    volume = (volume - CLIP_MIN) / range_val
    volume = (volume - norm_mean) / norm_std
    _, h, w = volume.shape
    target_h, target_w = (h // PATCH) * PATCH, (w // PATCH) * PATCH
    if target_h != h or target_w != w:
        volume = F.interpolate(volume.unsqueeze(0), size=(target_h, target_w), mode="nearest")
        volume = volume.squeeze(0)
    return volume.unsqueeze(0)


def nearest_numpy(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """PyTorch's ``nearest`` source index, written out: ``floor(i · (in / out))`` in float32,
    capped at the last pixel."""

    def index(n_in: int, n_out: int) -> np.ndarray:
        scale = np.float32(n_in) / np.float32(n_out)
        i = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(i, n_in - 1)

    return x[..., index(x.shape[-2], height)[:, None], index(x.shape[-1], width)[None, :]]


@pytest.mark.parametrize("shape", [(2, 512, 512), (3, 50, 37), (1, 28, 42), (2, 15, 29)])
def test_full_mode_is_ct_inference_transform(shape):
    """Random HU volumes of several sizes: equal to the authors' transform slice by slice, and to
    a numpy derivation (z-score in HU, nearest indices written out)."""
    rng = np.random.default_rng(sum(shape))
    hu = rng.uniform(-1500, 2500, size=shape).astype(np.float32)
    out = dale_ct_transform(hu, mode="full")
    h, w = (shape[1] // 14) * 14, (shape[2] // 14) * 14
    assert out.shape == (shape[0], 1, h, w) and out.dtype == torch.float32
    reference = torch.cat([ct_inference_transform(s) for s in hu])
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)
    by_hand = (np.clip(hu, CLIP_MIN, CLIP_MAX) - MEAN_HU) / STD_HU  # the same z-score, in HU
    np.testing.assert_allclose(out[:, 0].numpy(), nearest_numpy(by_hand, h, w), atol=1e-4)


def test_full_mode_hand_values():
    """(888 + 142.39) / 360.97 = 2.854503 (the upper clip, and anything above it);
    (-997 + 142.39) / 360.97 = -2.367537 (the lower clip); the mean maps to 0. A 512-pixel side
    becomes 504 = 36 · 14, taking source pixel floor(i · 512 / 504): pixel 503 ← 510."""
    hu = np.array([888.0, 5000.0, -997.0, -3024.0, -142.39, 40.0], dtype=np.float32)
    slices = np.broadcast_to(hu[:, None, None], (6, 14, 14)).copy()
    out = dale_ct_transform(slices, mode="full")[:, 0, 0, 0]
    expected = [2.854503, 2.854503, -2.367537, -2.367537, 0.0, 182.39 / 360.97]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    ramp = np.broadcast_to(np.arange(512, dtype=np.float32) - 300.0, (1, 512, 512)).copy()
    row = dale_ct_transform(ramp, mode="full")[0, 0, 0]
    assert row.shape == (504,)
    assert row[503].item() == pytest.approx((510 - 300 + 142.39) / 360.97, abs=1e-5)
    assert row[62].item() == pytest.approx((62 - 300 + 142.39) / 360.97, abs=1e-5)
    assert row[63].item() == pytest.approx((64 - 300 + 142.39) / 360.97, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# cropped_global


def window_max(a: np.ndarray, k: int = 25) -> np.ndarray:
    """``F.max_pool2d(a, k, stride=1, padding=k // 2)`` on ``[B, H, W]``: the max over the part
    of the k × k window inside the slice (max_pool2d pads with -inf)."""
    pad = k // 2
    padded = np.pad(a, ((0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    return sliding_window_view(padded, (k, k), axis=(1, 2)).max(axis=(-2, -1))


def bilinear(image: np.ndarray, y: float, x: float) -> float:
    """torchvision ``pre_calc_for_bilinear_interpolate`` for one sample point."""
    height, width = image.shape
    if not (-1.0 <= y <= height and -1.0 <= x <= width):
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * image[y_low, x_low]
        + hy * lx * image[y_low, x_high]
        + ly * hx * image[y_high, x_low]
        + ly * lx * image[y_high, x_high]
    )


def roi_align(image: np.ndarray, box, size: int) -> np.ndarray:
    """torchvision ``roi_align(aligned=True, spatial_scale=1, sampling_ratio=-1)`` of one box
    ``(x1, y1, x2, y2)`` on one 2-D slice: ``roi_align_forward_kernel_impl``, sample by sample."""
    x1, y1, x2, y2 = box
    start_w, start_h = x1 - 0.5, y1 - 0.5
    roi_w, roi_h = (x2 - 0.5) - start_w, (y2 - 0.5) - start_h
    bin_h, bin_w = roi_h / size, roi_w / size
    grid_h, grid_w = math.ceil(roi_h / size), math.ceil(roi_w / size)
    count = max(grid_h * grid_w, 1)
    out = np.zeros((size, size))
    for ph in range(size):
        for pw in range(size):
            total = 0.0
            for iy in range(grid_h):
                y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                    total += bilinear(image, y, x)
            out[ph, pw] = total / count
    return out


def square_box(slices: np.ndarray):
    """The box of ``process_batch`` (cropped_global steps 1-3), as ``(x1, y1, x2, y2)``."""
    _, height, width = slices.shape
    solid = (slices > -500).astype(np.float64)
    eroded = 1.0 - window_max(1.0 - solid)
    body = window_max(eroded) > 0.5
    global_body = body.any(axis=0)
    rows, cols = global_body.any(axis=1), global_body.any(axis=0)
    valid = rows.any()
    rmin = int(np.argmax(rows)) if valid else 0
    rmax = height - 1 - int(np.argmax(rows[::-1])) if valid else height - 1
    cmin = int(np.argmax(cols)) if valid else 0
    cmax = width - 1 - int(np.argmax(cols[::-1])) if valid else width - 1
    side = max(rmax - rmin + 1, cmax - cmin + 1)
    center_r, center_c = (rmin + rmax) // 2, (cmin + cmax) // 2
    sq_rmin, sq_cmin = center_r - side // 2, center_c - side // 2
    sq_rmin = max(sq_rmin, 0)
    sq_rmax = sq_rmin + side
    overflow_r = sq_rmax - height
    if overflow_r > 0:
        sq_rmin, sq_rmax = sq_rmin - overflow_r, height
    sq_rmin = max(sq_rmin, 0)
    sq_cmin = max(sq_cmin, 0)
    sq_cmax = sq_cmin + side
    overflow_c = sq_cmax - width
    if overflow_c > 0:
        sq_cmin, sq_cmax = sq_cmin - overflow_c, width
    sq_cmin = max(sq_cmin, 0)
    return sq_cmin, sq_rmin, sq_cmax, sq_rmax


def cropped_global_reference(slices: np.ndarray, size: int = 256) -> np.ndarray:
    """``process_batch`` (cropped_global) on one batch, then ``center_crop_to_multiple``."""
    box = square_box(slices)
    crops = np.stack([roi_align(s.astype(np.float64), box, size) for s in slices])
    crops = np.clip(crops, CLIP_MIN, CLIP_MAX)
    range_val = CLIP_MAX - CLIP_MIN
    crops = ((crops - CLIP_MIN) / range_val - (MEAN_HU - CLIP_MIN) / range_val) / (
        STD_HU / range_val
    )
    new = (size // PATCH) * PATCH
    top = (size - new) // 2
    return crops[:, top : top + new, top : top + new]


def noisy_phantom(n: int, rows: int, cols: int, seed: int) -> np.ndarray:
    """The phantom with a solid block over its central 60 % (a mediastinum: the phantom's own
    tissue ring is thinner than the 25-pixel opening) and ±200 HU noise."""
    rng = np.random.default_rng(seed)
    hu = ct_phantom(n=n, rows=rows, cols=cols, seed=seed)
    hu[:, int(0.2 * rows) : int(0.8 * rows), int(0.2 * cols) : int(0.8 * cols)] = 40.0
    return hu + rng.uniform(-200, 200, hu.shape).astype(np.float32)


@pytest.mark.parametrize(
    "shape, size, body",
    [
        ((2, 48, 64), 30, True),
        ((3, 70, 50), 44, True),
        ((1, 40, 40), 28, False),
        ((2, 36, 30), 256, False),
    ],
)
def test_cropped_global_is_the_ct_rate_embedding_path(shape, size, body):
    """Phantoms of several sizes and RoI sizes (down- and upsampling, 30 → 28 and 44 → 42 crops,
    28 kept whole, the script's 256 → 252), with a body box or (block under 25 pixels) the
    whole slice: equal to the reference to 1e-4."""
    hu = noisy_phantom(*shape, seed=shape[1])
    assert (1.0 - window_max(1.0 - (hu > -500).astype(np.float64))).any() == body
    out = dale_ct_transform(hu, mode="cropped_global", crop_size=size)
    expected = cropped_global_reference(hu, size)
    assert out.shape == (shape[0], 1, *expected.shape[1:]) and out.dtype == torch.float32
    np.testing.assert_allclose(out[:, 0].numpy(), expected, atol=1e-4)


def test_cropped_global_random_hu_takes_the_whole_slice():
    """Uniform random HU has no 25-pixel solid region: the opening leaves no body, and the
    script falls back to the whole slice (a 31 × 40 box, grown to the 40 × 40 square it cannot
    fit, so shifted and clipped back to the slice)."""
    hu = np.random.default_rng(3).uniform(-1200, 1500, size=(2, 31, 40)).astype(np.float32)
    assert cropped_global_box(hu) == (0, 31, 0, 40) and square_box(hu) == (0, 0, 40, 31)
    out = dale_ct_transform(hu, mode="cropped_global", crop_size=32)
    np.testing.assert_allclose(out[:, 0].numpy(), cropped_global_reference(hu, 32), atol=1e-4)


def test_cropped_global_box_by_hand():
    """A 30 × 50 rectangle at -450 HU (solid: above -500), rows 10..39 and columns 5..54 of a
    64 × 72 slice: the 25-pixel
    opening keeps it whole; side = max(30, 50) = 50; centre row (10 + 39) // 2 = 24, so rows
    24 - 25 = -1 → 0 .. 50; centre column (5 + 54) // 2 = 29, so columns 4 .. 54. A 6 × 6 speck
    elsewhere is opened away and moves nothing."""
    hu = np.full((2, 64, 72), -1000.0, dtype=np.float32)
    hu[0, 10:40, 5:55] = -450.0
    hu[1, 55:61, 60:66] = 300.0
    assert cropped_global_box(hu) == (0, 50, 4, 54)
    assert square_box(hu) == (4, 0, 54, 50)
    # A 25-row bar (rows 20..44, columns 10..49) survives the opening: side 40 around row 32
    # and column 29 gives rows 12..52, columns 9..49. A 24-row bar does not: no body, so the
    # whole 64 × 72 slice, squared to 72 and clipped back to 64 rows.
    bar = np.full((1, 64, 72), -1000.0, dtype=np.float32)
    bar[0, 20:45, 10:50] = 40.0
    assert cropped_global_box(bar) == (12, 52, 9, 49)
    bar[0, 44] = -1000.0
    assert cropped_global_box(bar) == (0, 64, 0, 72)
    # Taller than wide: rows 10..49, columns 20..44 (25): side 40 around row 29 and column 32.
    column = np.full((1, 64, 72), -1000.0, dtype=np.float32)
    column[0, 10:50, 20:45] = 40.0
    assert cropped_global_box(column) == (9, 49, 12, 52)
    # Touching the bottom edge (rows 30..63; the window past the edge is ignored, so the edge
    # rows erode in): side 50 around row 46 would end at row 71, so it is shifted up by 7.
    low = np.full((1, 64, 72), -1000.0, dtype=np.float32)
    low[0, 30:, 10:60] = 40.0
    assert cropped_global_box(low) == (14, 64, 9, 59)


def test_cropped_global_hand_value_and_sizes():
    """A slice that is all tissue at 40 HU: every RoI sample is 40 HU, so every output pixel is
    (40 + 142.39) / 360.97 = 0.505277; 256 is cropped to 252 = 18 · 14, and to 256 for patch 16."""
    hu = np.full((3, 60, 90), 40.0, dtype=np.float32)
    out = dale_ct_transform(hu, mode="cropped_global")
    assert out.shape == (3, 1, 252, 252)
    np.testing.assert_allclose(out.numpy(), 0.505277, atol=1e-5)
    assert dale_ct_transform(hu, mode="cropped_global", patch_size=16).shape == (3, 1, 256, 256)


@pytest.mark.parametrize("shape", [(3, 512, 512), (2, 30, 30), (4, 100, 37), (1, 14, 14)])
def test_cropped_global_sides_are_patch_multiples_and_finite(shape):
    hu = np.random.default_rng(0).uniform(-3000, 3000, size=shape).astype(np.float32)
    if shape[1] >= 64:
        hu[:, 10:-10, 5:-5] = 30.0
    out = dale_ct_transform(hu, mode="cropped_global")
    assert out.shape[-2] % 14 == 0 and out.shape[-1] % 14 == 0 and out.shape[-1] == 252
    assert torch.isfinite(out).all()


def test_body_box_is_shared_within_each_group_of_box_slices():
    """The script finds one box per call of process_batch, i.e. per ``--slice_batch_size``
    slices (default 32): a wide body in slice 4 changes the box of its group only."""
    hu = noisy_phantom(6, 48, 64, seed=1)
    hu[4, 2:46, 1:63] = 20.0
    grouped = dale_ct_transform(hu, mode="cropped_global", crop_size=30, box_slices=4)
    expected = np.concatenate(
        [cropped_global_reference(hu[:4], 30), cropped_global_reference(hu[4:], 30)]
    )
    np.testing.assert_allclose(grouped[:, 0].numpy(), expected, atol=1e-4)
    whole = dale_ct_transform(hu, mode="cropped_global", crop_size=30, box_slices=None)
    np.testing.assert_allclose(whole[:, 0].numpy(), cropped_global_reference(hu, 30), atol=1e-4)
    assert (whole[:4] - grouped[:4]).abs().max() > 0.1


def test_roi_align_weights_rows_sum_to_one_inside_the_slice():
    """Each output pixel of a box inside the slice is an average of bilinear samples: weights
    sum to 1; a 256-pixel box onto 256 is the identity (samples at pixel centres)."""
    w = roi_align_weights(4, 50, 64, 30)
    np.testing.assert_allclose(w.sum(dim=1).numpy(), 1.0, atol=1e-12)
    torch.testing.assert_close(roi_align_weights(0, 256, 256, 256), torch.eye(256, dtype=w.dtype))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"hu must be \[N, H, W\].*got shape \(4, 4\)"):
        dale_ct_transform(np.zeros((4, 4)), mode="full")
    with pytest.raises(ValueError, match="smaller than one 14-pixel patch"):
        dale_ct_transform(np.zeros((2, 13, 40)), mode="full")
    with pytest.raises(ValueError, match=r"mode must be 'full' or 'cropped_global', got 'tiled'"):
        dale_ct_transform(np.zeros((2, 20, 20)), mode="tiled")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop_size 10 is smaller than patch_size 14"):
        dale_ct_transform(np.zeros((2, 20, 20)), mode="cropped_global", crop_size=10)
