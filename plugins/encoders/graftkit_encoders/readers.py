"""CT volume readers: NIfTI (nibabel) and DICOM series (pydicom), returned in Hounsfield units.

Every reader returns a :class:`CTVolume`: axial slices ``hu[N, H, W]`` (float32, HU), their
physical positions ``z_mm[N]`` (docs/design.md, data flow: "z ∈ R^N (physical positions, mm)")
and the in-plane pixel spacing. :func:`read_volume` orders slices from inferior to superior in the
radiological display convention of DICOM axial images (rows run anterior → posterior, columns from
the patient's right to the patient's left), whichever format they came from.
:func:`read_ct_rate_volume` instead reads a CT-RATE NIfTI as the DALE-CT scripts do: the array as
stored, slice ``k`` of the file is slice ``k``, whatever the affine says.

Input discovery (:func:`discover_ct_inputs`: NIfTI files and DICOM series folders) and the reader
options (``rescale``, ``rescale_slope``, ``rescale_intercept``, ``check_hu``: encoder options,
``graftkit embed lejepa-ct --option rescale=false``) belong to this plugin, not to the core.

HU sanity (docs/design.md, "CT-RATE, as its own files lay it out"): the CT-RATE "fixed" release is
already in HU, and applying the metadata's RescaleSlope/Intercept again is a known bug. The air
level of a volume (1st percentile of its voxels, constant padding excluded) is about -1000 HU in
a CT in HU, about -2048 after a second rescale and about 0 for raw stored values;
:func:`check_hu` refuses the last two and names the option that fixes them.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from graftkit.encoders import find_inputs

AIR_HU_RANGE = (-1250.0, -700.0)
"""Plausible air level (HU) of a CT volume: air is -1000 HU, lung and noise lift the percentile."""


NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or any file with the DICOM Part 10 magic ``DICM`` after its preamble."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def discover_ct_inputs(dir_or_files: str | Path | Iterable[str | Path]) -> list[Path]:
    """The CT volumes under files and folders, sorted and without duplicates.

    A path named explicitly is taken as is. A folder is searched recursively for NIfTI files and
    for folders that directly hold DICOM files (each such folder one series; a DICOM file without
    the ``.dcm`` suffix is recognised by its magic). Raises ``FileNotFoundError`` naming a path
    that does not exist.
    """

    def select(folder: Path, names: list[str]) -> list[Path]:
        files = [folder / name for name in names]
        series = [folder] if any(is_dicom_file(f) for f in files if not is_nifti(f)) else []
        return [f for f in files if is_nifti(f)] + series

    return find_inputs(dir_or_files, select)


class VolumeError(ValueError):
    """A volume cannot be used; the message starts with the file (or folder) name."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


@dataclass
class CTVolume:
    """Axial slices in HU ``[N, H, W]`` and their positions ``z_mm[N]`` (increasing with the
    slice index): inferior → superior from :func:`read_volume`, stored order from
    :func:`read_ct_rate_volume`."""

    hu: np.ndarray
    z_mm: np.ndarray
    spacing_xy: tuple[float, float]
    source: Path


def read_volume(
    path: str | Path,
    rescale: bool | None = None,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    check: bool = True,
) -> CTVolume:
    """Read a NIfTI file or a DICOM series folder (or one DICOM file) as a :class:`CTVolume` in HU.

    ``rescale=None`` uses each format's convention: DICOM applies its RescaleSlope/Intercept tags;
    NIfTI is taken as stored (nibabel applies the header's ``scl_slope``/``scl_inter``).
    ``rescale=True`` on NIfTI applies ``rescale_slope``/``rescale_intercept`` (CT-RATE's metadata
    values are 1 and -1024) to data stored raw; ``rescale=False`` on DICOM ignores the tags.
    ``check`` runs :func:`check_hu` on the result.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(path, "no such file or folder")
    if path.is_dir() or is_dicom_file(path):
        volume = read_dicom_series(path, rescale=rescale is not False)
        applied = rescale is not False
    elif is_nifti(path):
        volume = read_nifti(path)
        applied = bool(rescale)
        if applied:
            volume.hu = volume.hu * np.float32(rescale_slope) + np.float32(rescale_intercept)
    else:
        raise VolumeError(path, "not a NIfTI file (.nii, .nii.gz), a DICOM file or a DICOM folder")
    if check:
        check_hu(volume.hu, path, rescaled=applied)
    return volume


def read_nifti(
    path: str | Path, orientation: Literal["canonical", "stored"] = "canonical"
) -> CTVolume:
    """Read a 3-D NIfTI volume as axial slices.

    ``orientation="canonical"``: reoriented to the closest RAS+ orientation, slices along its
    superior axis (inferior → superior), in the DICOM display convention; ``z_mm`` from the
    affine, so it holds the physical positions of the slices, not their indices.

    ``orientation="stored"``: the array as the file stores it, ``hu[k] = data[:, :, k]`` (rows:
    the file's first axis, columns: its second), slice ``k`` of the file first to last: the
    DALE-CT scripts' ``data.transpose(2, 0, 1)`` (``scripts/build_ctrate_train_hu.py``).
    ``z_mm[k]`` is slice ``k``'s position along the file's slice axis (the affine's third column):
    increasing with ``k``, whichever anatomical direction that axis points to.
    """
    import nibabel as nib

    path = Path(path)
    try:
        image = nib.load(str(path))
        if orientation == "canonical":
            image = nib.as_closest_canonical(image)
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as err:  # nibabel raises many types for truncated or foreign files
        raise VolumeError(path, f"cannot read NIfTI ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(path, f"expected a 3-D volume, got shape {tuple(data.shape)}")
    _check_slices(path, data.shape[2], data.shape[:2])
    affine = image.affine
    k = np.arange(data.shape[2], dtype=np.float64)
    zooms = image.header.get_zooms()
    if orientation == "stored":
        hu = np.ascontiguousarray(np.transpose(data, (2, 0, 1)))
        axis = np.asarray(affine[:3, 2], dtype=np.float64)
        step = float(np.linalg.norm(axis)) or 1.0
        z_mm = (k * step + float(np.dot(affine[:3, 3], axis / step))).astype(np.float32)
        return CTVolume(
            hu=hu, z_mm=z_mm, spacing_xy=(float(zooms[0]), float(zooms[1])), source=path
        )
    # RAS+ array [i→R, j→A, k→S]: flip i and j and transpose to rows→posterior, columns→left.
    hu = np.ascontiguousarray(np.transpose(data[::-1, ::-1, :], (2, 1, 0)))
    z_mm = (affine[2, 2] * k + affine[2, 3]).astype(np.float32)
    return CTVolume(hu=hu, z_mm=z_mm, spacing_xy=(float(zooms[1]), float(zooms[0])), source=path)


def read_rescale_table(path: str | Path) -> dict[str, tuple[float, float]]:
    """``VolumeName → (RescaleSlope, RescaleIntercept)`` from a CT-RATE metadata CSV
    (``metadata/{train,validation}_metadata.csv``).

    Raises ``ValueError`` naming the file when it cannot be read or lacks a column, and naming the
    row when a value is not a finite number or a volume has two different rows.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"metadata_csv {path}: cannot read ({type(err).__name__}: {err})") from err
    columns = ("VolumeName", "RescaleSlope", "RescaleIntercept")
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"metadata_csv {path}: no column(s) {', '.join(missing)}")
    table: dict[str, tuple[float, float]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            value = (float(row["RescaleSlope"]), float(row["RescaleIntercept"]))
        except (TypeError, ValueError):
            value = (math.nan, math.nan)
        if not all(math.isfinite(v) for v in value):
            raise ValueError(
                f"metadata_csv {path} line {line} ({row['VolumeName']}): RescaleSlope "
                f"{row['RescaleSlope']!r} / RescaleIntercept {row['RescaleIntercept']!r} are not numbers"
            )
        name = row["VolumeName"]
        if table.get(name, value) != value:
            raise ValueError(
                f"metadata_csv {path} line {line}: {name} has another RescaleSlope/Intercept "
                f"{table[name]} in an earlier row"
            )
        table[name] = value
    return table


def read_ct_rate_volume(
    path: str | Path,
    rescale_table: Mapping[str, tuple[float, float]] | None,
    check: bool = True,
) -> CTVolume:
    """A CT-RATE NIfTI read exactly as the DALE-CT scripts read it for their CT-RATE embeddings
    (``scripts/build_ctrate_train_hu.py``, replicating ``Process-CT-Data/1_preprocessing/
    preprocess_val.py``): ``raw = get_fdata()``, ``hu = raw · RescaleSlope + RescaleIntercept``
    with this volume's row of ``rescale_table`` (:func:`read_rescale_table`; CT-RATE's intercepts
    differ per volume), ``hu.transpose(2, 0, 1)`` in stored slice order (no reorientation,
    :func:`read_nifti` ``orientation="stored"``), rounded to float16 as their ``.npy`` files are.

    ``rescale_table=None`` takes the stored values as HU (a release already in HU). ``check`` runs
    :func:`check_hu`. Only NIfTI files: a DICOM series has no stored order to keep.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(path, "no such file or folder")
    if not is_nifti(path):
        raise VolumeError(
            path, "reader=ct_rate reads CT-RATE NIfTI files (.nii, .nii.gz); use reader=canonical"
        )
    volume = read_nifti(path, orientation="stored")
    if rescale_table is not None:
        if path.name not in rescale_table:
            raise VolumeError(
                path, "no row in metadata_csv (VolumeName must be the file name, as in CT-RATE)"
            )
        slope, intercept = rescale_table[path.name]
        volume.hu = volume.hu * np.float32(slope) + np.float32(intercept)
    volume.hu = volume.hu.astype(np.float16).astype(np.float32)
    if check:
        check_hu(volume.hu, path, rescaled=rescale_table is not None)
    return volume


def read_dicom_series(path: str | Path, rescale: bool = True) -> CTVolume:
    """Read one CT series (a folder of slices, or one file), sorted by ImagePositionPatient.

    ``z_mm`` is each slice's position along the slice normal (from ImageOrientationPatient and
    ImagePositionPatient). Refuses non-CT modalities, several series in one folder, slices of
    different sizes or orientations, duplicate positions and single-slice series.
    """
    import pydicom

    path = Path(path)
    files = (
        sorted(p for p in path.iterdir() if p.is_file() and is_dicom_file(p))
        if path.is_dir()
        else [path]
    )
    if not files:
        raise VolumeError(path, "folder holds no DICOM files")
    slices = []
    for file in files:
        try:
            ds = pydicom.dcmread(str(file))
        except Exception as err:
            raise VolumeError(
                path, f"corrupt DICOM file {file.name} ({type(err).__name__}: {err})"
            ) from err
        if "PixelData" not in ds or "Rows" not in ds:
            raise VolumeError(path, f"corrupt DICOM file {file.name} (no pixel data)")
        slices.append((file, ds))

    modalities = {str(ds.get("Modality", "")) for _, ds in slices}
    if modalities != {"CT"}:
        raise VolumeError(
            path,
            f"modality {', '.join(sorted(modalities)) or '(missing)'}; only CT series are supported",
        )
    series = Counter(str(ds.get("SeriesInstanceUID", "")) for _, ds in slices)
    if len(series) > 1:
        listing = ", ".join(f"{uid} ({n} files)" for uid, n in series.most_common())
        raise VolumeError(
            path, f"mixed series in one folder: {listing}; put each series in its own folder"
        )
    _check_slices(path, len(slices), None)

    first = slices[0][1]
    try:
        orientation = np.asarray(
            [float(v) for v in first.ImageOrientationPatient], dtype=np.float64
        )
    except AttributeError as err:
        raise VolumeError(path, f"{slices[0][0].name} has no ImageOrientationPatient") from err
    normal = np.cross(orientation[:3], orientation[3:])
    positions = []
    for file, ds in slices:
        if "ImagePositionPatient" not in ds:
            raise VolumeError(path, f"{file.name} has no ImagePositionPatient")
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        if not np.allclose(iop, orientation, atol=1e-4):
            raise VolumeError(
                path,
                f"{file.name} has a different ImageOrientationPatient from {slices[0][0].name}",
            )
        positions.append(float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    positions = np.asarray(positions)
    order = np.argsort(positions, kind="stable")
    z_mm = positions[order]
    if np.any(np.diff(z_mm) <= 1e-6):
        dup = int(order[int(np.argmin(np.diff(z_mm)))])
        raise VolumeError(
            path, f"duplicate slice position {positions[dup]:.3f} mm (e.g. {slices[dup][0].name})"
        )

    shape = (int(first.Rows), int(first.Columns))
    hu = np.empty((len(slices), *shape), dtype=np.float32)
    for out_index, index in enumerate(order):
        file, ds = slices[index]
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise VolumeError(
                path, f"{file.name} is {ds.Rows}x{ds.Columns}, other slices {shape[0]}x{shape[1]}"
            )
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as err:
            raise VolumeError(
                path,
                f"corrupt DICOM file {file.name}: cannot decode pixels ({type(err).__name__}: {err})",
            ) from err
        if rescale:
            pixels = pixels * np.float32(ds.get("RescaleSlope", 1.0)) + np.float32(
                ds.get("RescaleIntercept", 0.0)
            )
        hu[out_index] = pixels
    spacing = [float(v) for v in first.get("PixelSpacing", [1.0, 1.0])]
    return CTVolume(
        hu=hu, z_mm=z_mm.astype(np.float32), spacing_xy=(spacing[0], spacing[1]), source=path
    )


def air_level(hu: np.ndarray) -> float:
    """1st percentile of the voxels above the volume's minimum (the minimum is often FOV padding)."""
    flat = hu.reshape(-1)
    if flat.size > 4_000_000:  # a strided subsample keeps the percentile and costs far less
        flat = flat[:: flat.size // 2_000_000]
    low = flat.min()
    above = flat[flat > low]
    return float(np.percentile(above if above.size else flat, 1.0))


def check_hu(hu: np.ndarray, path: str | Path, rescaled: bool) -> None:
    """Refuse a volume whose air level is not about -1000 HU, naming the flag that fixes it."""
    if not np.isfinite(hu).all():
        raise VolumeError(path, "volume holds NaN or infinite values")
    air = air_level(hu)
    lo, hi = AIR_HU_RANGE
    if lo <= air <= hi:
        return
    span = f"air level {air:.0f} HU (range {float(hu.min()):.0f}..{float(hu.max()):.0f}); a CT in HU has air near -1000"
    if air < lo and rescaled:
        raise VolumeError(
            path,
            f"{span}: the data looks already in HU and rescaled a second time "
            "(CT-RATE's fixed release is already HU); use --option rescale=false",
        )
    if air > hi and not rescaled:
        raise VolumeError(
            path,
            f"{span}: the data looks like raw stored values, not HU; use --option rescale=true "
            "(NIfTI: with --option rescale_slope=S --option rescale_intercept=I from the "
            "metadata), or this is not a CT volume",
        )
    raise VolumeError(
        path,
        f"{span}: implausible for CT; check the modality and the encoder option rescale "
        "(--option rescale=true / false)",
    )


def _check_slices(path: Path, n_slices: int, in_plane: tuple[int, ...] | None) -> None:
    if n_slices == 0 or (in_plane is not None and min(in_plane) == 0):
        raise VolumeError(path, "empty volume (no slices)")
    if n_slices == 1:
        raise VolumeError(path, "single-slice volume; a volume needs at least 2 axial slices")
