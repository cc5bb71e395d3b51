"""Shared fixtures of the encoder tests: a small CT phantom, NIfTI and DICOM writers, a tiny ViT.

Real files come from the installed packages: pydicom's ``CT_small.dcm`` / ``MR_small.dcm`` and
nibabel's test images; everything else is written by the tests into ``tmp_path``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=14,
    pretrain_image_size=70,
    image_size=42,
    crop_size=42,  # cropped_global: RoI align to 42, a multiple of 14 (the script's 256 → 252)
    layerscale_value=1.0,  # timm's 1e-5 init would make random blocks nearly the identity
    allow_random_weights=True,
)


def ct_phantom(n: int = 5, rows: int = 48, cols: int = 64, seed: int = 0) -> np.ndarray:
    """``[n, rows, cols]`` HU: air -1000, an elliptic body (40 HU) with two lungs (-850) and a
    bright spine (700) that moves with the slice index, plus noise."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[:rows, :cols]
    body = ((r - rows / 2) / (rows * 0.35)) ** 2 + ((c - cols / 2) / (cols * 0.4)) ** 2 <= 1
    vol = np.full((n, rows, cols), -1000.0, dtype=np.float32)
    for k in range(n):
        s = vol[k]
        s[body] = 40.0
        for side in (-1, 1):
            lung = ((r - rows / 2) / (rows * 0.2)) ** 2 + (
                (c - cols / 2 - side * cols * 0.18) / (cols * 0.12)
            ) ** 2 <= 1
            s[lung] = -850.0
        s[(np.abs(r - rows * 0.7) < 3) & (np.abs(c - cols / 2 - (k - n // 2)) < 3)] = 700.0
    return vol + rng.normal(0, 5, vol.shape).astype(np.float32)


def hu_to_ras(hu: np.ndarray) -> np.ndarray:
    """Inverse of the NIfTI reader's display transform: ``[N, rows, cols]`` → RAS+ ``[i, j, k]``."""
    return np.ascontiguousarray(np.transpose(hu, (2, 1, 0))[::-1, ::-1, :])


def write_nifti(
    path: Path, hu: np.ndarray, spacing=(0.7, 0.8, 2.5), z0: float = -100.0, flip_x: bool = False
) -> Path:
    """Write ``hu`` (display convention) as NIfTI in RAS+, or in LAS+ when ``flip_x``."""
    import nibabel as nib

    data = hu_to_ras(hu)
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = (-20.0, 10.0, z0)
    if flip_x:
        data = np.ascontiguousarray(data[::-1])
        affine[:, 3] = affine[:, 3] + (data.shape[0] - 1) * affine[:, 0]
        affine[:, 0] = -affine[:, 0]
    nib.save(nib.Nifti1Image(data.astype(np.int16), affine), str(path))
    return path


def ct_small():
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    assert path is not None, "pydicom's CT_small.dcm is missing from the installed package"
    return pydicom.dcmread(path)


def write_dicom_series(
    folder: Path, n: int = 4, dz: float = 2.5, pixels=None, names=None
) -> tuple[Path, np.ndarray]:
    """A CT series made of CT_small.dcm copies at distinct z; file names are in reverse z order.

    Returns the folder and the expected stored pixel arrays ordered by increasing z.
    """
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    base = ct_small()
    series_uid = generate_uid()
    expected = []
    for k in range(n):
        ds = copy.deepcopy(base)
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + k * dz]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        arr = (
            base.pixel_array.astype(np.int16) + np.int16(7 * k)
            if pixels is None
            else pixels[k].astype(np.int16)
        )
        ds.PixelData = arr.tobytes()
        expected.append(arr)
        name = names[k] if names else f"slice_{n - k:03d}.dcm"
        ds.save_as(str(folder / name))
    return folder, np.stack(expected)


@pytest.fixture
def tiny_options() -> dict:
    return dict(TINY)
