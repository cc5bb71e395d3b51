"""NIfTI and DICOM readers: orientation, z positions, rescaling, HU sanity and bad input."""

from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest
from graftkit_encoders.readers import VolumeError, air_level, read_volume

from .conftest import ct_phantom, ct_small, write_dicom_series, write_nifti


def test_nifti_orientation_and_z(tmp_path):
    """RAS and LAS files of the same phantom read back to the same display-convention slices,
    with z_mm from the affine (inferior → superior)."""
    hu = np.round(ct_phantom(n=4))
    hu[1, 5, 9] = 900  # a marker: slice 1, row 5 (anterior), column 9 (patient's right)
    ras = read_volume(write_nifti(tmp_path / "ras.nii.gz", hu, spacing=(0.7, 0.8, 2.5), z0=-100.0))
    las = read_volume(
        write_nifti(tmp_path / "las.nii", hu, spacing=(0.7, 0.8, 2.5), z0=-100.0, flip_x=True)
    )
    for vol in (ras, las):
        np.testing.assert_array_equal(vol.hu, hu)
        np.testing.assert_allclose(vol.z_mm, [-100.0, -97.5, -95.0, -92.5])
        assert vol.spacing_xy == pytest.approx((0.8, 0.7))
        assert np.unravel_index(np.argmax(vol.hu), vol.hu.shape) == (1, 5, 9)


def test_dicom_series_sorted_by_position_and_rescaled(tmp_path):
    """Files named in reverse z order come back sorted by ImagePositionPatient, with
    HU = stored × RescaleSlope + RescaleIntercept (CT_small: 1, -1024)."""
    folder, stored = write_dicom_series(tmp_path / "series", n=4, dz=2.5)
    vol = read_volume(folder)
    base = ct_small()
    z0 = float(base.ImagePositionPatient[2])
    np.testing.assert_allclose(vol.z_mm, z0 + 2.5 * np.arange(4), atol=1e-4)
    np.testing.assert_array_equal(vol.hu, stored.astype(np.float32) - 1024)
    assert vol.spacing_xy == pytest.approx((0.661468, 0.661468))


def test_dicom_without_rescale_is_refused_with_flag(tmp_path):
    folder, _ = write_dicom_series(tmp_path / "series", n=3)
    with pytest.raises(VolumeError, match=r"^series: .*raw stored values.*--option rescale=true"):
        read_volume(folder, rescale=False)
    vol = read_volume(folder, rescale=False, check=False)
    assert air_level(vol.hu) > 0


def test_dicom_already_hu_rescaled_twice_is_refused(tmp_path):
    """Pixels that already hold HU, with the usual -1024 intercept still in the header: the
    second rescale puts air near -2000 and the reader says to use --option rescale=false."""
    hu = np.round(ct_phantom(n=3, rows=128, cols=128))
    folder, _ = write_dicom_series(tmp_path / "fixed", n=3, pixels=hu)
    with pytest.raises(
        VolumeError,
        match=r"^fixed: air level -20\d\d HU.*rescaled a second time.*--option rescale=false",
    ):
        read_volume(folder)
    np.testing.assert_array_equal(read_volume(folder, rescale=False).hu, hu)


def test_nifti_double_rescale_and_raw(tmp_path):
    """CT-RATE's fixed release is HU: rescale=true on it is refused; raw stored values are refused
    without rescale=true and accepted with it (slope 1, intercept -1024, the metadata's values)."""
    hu = np.round(ct_phantom(n=3))
    fixed = write_nifti(tmp_path / "valid_1_a_1.nii.gz", hu)
    raw = write_nifti(tmp_path / "valid_2_a_1.nii.gz", hu + 1024)
    with pytest.raises(VolumeError, match=r"^valid_1_a_1\.nii\.gz: .*--option rescale=false"):
        read_volume(fixed, rescale=True)
    with pytest.raises(VolumeError, match=r"^valid_2_a_1\.nii\.gz: .*--option rescale=true"):
        read_volume(raw)
    np.testing.assert_array_equal(read_volume(raw, rescale=True).hu, hu)
    np.testing.assert_array_equal(read_volume(fixed).hu, hu)


def test_nibabel_test_images_are_refused():
    """Real NIfTI files from nibabel's test data: an MR volume fails the HU check, a 4-D series
    is not a volume."""
    from nibabel.testing import data_path

    with pytest.raises(VolumeError, match=r"^anatomical\.nii: air level .*not HU"):
        read_volume(os.path.join(data_path, "anatomical.nii"))
    with pytest.raises(
        VolumeError,
        match=r"^example4d\.nii\.gz: expected a 3-D volume, got shape \(128, 96, 24, 2\)",
    ):
        read_volume(os.path.join(data_path, "example4d.nii.gz"))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while parsing the garbage file
def test_bad_dicom_inputs_named(tmp_path):
    from pydicom.data import get_testdata_file

    mixed, _ = write_dicom_series(tmp_path / "mixed", n=3)
    import pydicom

    first = sorted(mixed.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.save_as(str(first))
    with pytest.raises(
        VolumeError,
        match=r"^mixed: mixed series in one folder: .*\(2 files\), 1\.2\.3\.4 \(1 files\)",
    ):
        read_volume(mixed)

    mr = tmp_path / "mr"
    mr.mkdir()
    for k in range(2):
        shutil.copy(get_testdata_file("MR_small.dcm", download=False), mr / f"{k}.dcm")
    with pytest.raises(VolumeError, match=r"^mr: modality MR; only CT"):
        read_volume(mr)

    corrupt, _ = write_dicom_series(tmp_path / "corrupt", n=2)
    (corrupt / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(VolumeError, match=r"^corrupt: corrupt DICOM file garbage\.dcm"):
        read_volume(corrupt)
    (corrupt / "garbage.dcm").unlink()
    real = sorted(corrupt.iterdir())[0]
    real.write_bytes(real.read_bytes()[: real.stat().st_size - 5000])
    with pytest.raises(VolumeError, match=rf"^corrupt: corrupt DICOM file {real.name}"):
        read_volume(corrupt)

    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), single / "CT_small.dcm")
    with pytest.raises(VolumeError, match=r"^single: single-slice volume"):
        read_volume(single)
    with pytest.raises(VolumeError, match=r"^empty: folder holds no DICOM files"):
        (tmp_path / "empty").mkdir()
        read_volume(tmp_path / "empty")


def test_bad_nifti_inputs_named(tmp_path):
    one = write_nifti(tmp_path / "one.nii.gz", np.round(ct_phantom(n=1)))
    with pytest.raises(VolumeError, match=r"^one\.nii\.gz: single-slice volume"):
        read_volume(one)
    whole = write_nifti(tmp_path / "whole.nii.gz", np.round(ct_phantom(n=3)))
    data = gzip.decompress(whole.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(VolumeError, match=r"^cut\.nii\.gz: cannot read NIfTI"):
        read_volume(tmp_path / "cut.nii.gz")
    (tmp_path / "scan.mha").write_bytes(b"x")
    with pytest.raises(VolumeError, match=r"^scan\.mha: not a NIfTI file"):
        read_volume(tmp_path / "scan.mha")


def write_metadata(path, rows):
    """A CT-RATE metadata CSV (the columns the reader uses, plus one it ignores)."""
    lines = ["VolumeName,ZSpacing,RescaleIntercept,RescaleSlope"]
    lines += [f"{name},2.5,{intercept},{slope}" for name, slope, intercept in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ct_rate_reader_is_the_dale_ct_conversion(tmp_path):
    """reader=ct_rate (scripts/build_ctrate_train_hu.py): HU = stored × RescaleSlope +
    RescaleIntercept from the volume's own metadata row (-1024 and -8192 here, CT-RATE's two
    intercepts), ``data.transpose(2, 0, 1)`` with no reorientation, rounded to float16: 2049 HU
    is not a float16 (spacing 2 above 2048) and becomes 2048."""
    from graftkit_encoders.readers import read_ct_rate_volume, read_rescale_table

    hu = np.round(ct_phantom(n=4))
    hu[1, 5, 9] = 2049
    a = write_nifti(tmp_path / "train_1_a_1.nii.gz", hu + 1024)
    b = write_nifti(tmp_path / "train_2_a_1.nii.gz", hu + 8192)
    table = read_rescale_table(
        write_metadata(
            tmp_path / "train_metadata.csv",
            [("train_1_a_1.nii.gz", 1, -1024), ("train_2_a_1.nii.gz", 1.0, -8192.0)],
        )
    )
    assert table == {"train_1_a_1.nii.gz": (1.0, -1024.0), "train_2_a_1.nii.gz": (1.0, -8192.0)}
    import nibabel as nib

    stored = np.asarray(nib.load(str(a)).dataobj).astype(np.float32)  # [i, j, k] as written
    expected = np.transpose(stored - 1024, (2, 0, 1)).astype(np.float16).astype(np.float32)
    for path in (a, b):
        volume = read_ct_rate_volume(path, table)
        np.testing.assert_array_equal(volume.hu, expected)
        np.testing.assert_allclose(volume.z_mm, -100.0 + 2.5 * np.arange(4))
    assert read_ct_rate_volume(a, table).hu.max() == 2048.0
    assert volume.hu.shape == (4, 64, 48)  # rows: the file's first axis (64 columns of the phantom)


def test_stored_order_keeps_a_superior_to_inferior_file_as_it_is(tmp_path):
    """A file whose slice axis points down (k = 0 the most superior slice): the canonical reader
    puts the most inferior slice first; stored order (reader=ct_rate) keeps k = 0 first, with z
    increasing along the file's slice axis."""
    import nibabel as nib
    from graftkit_encoders.readers import read_ct_rate_volume

    hu = np.round(ct_phantom(n=5))
    data = np.ascontiguousarray(np.transpose(hu, (2, 1, 0))[::-1, ::-1, :])  # RAS+ [i, j, k]
    affine = np.diag([0.7, 0.8, -2.0, 1.0])
    affine[:3, 3] = (0.0, 0.0, 40.0)  # slice k at z = 40 - 2k mm: k = 0 is the top
    path = tmp_path / "valid_7_a_1.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.int16), affine), str(path))
    canonical = read_volume(path)
    stored = read_ct_rate_volume(path, None)
    np.testing.assert_array_equal(stored.hu, np.transpose(data, (2, 0, 1)))
    np.testing.assert_array_equal(canonical.hu, hu[::-1])  # inferior first
    np.testing.assert_allclose(canonical.z_mm, [32.0, 34.0, 36.0, 38.0, 40.0])
    np.testing.assert_allclose(stored.z_mm, -40.0 + 2.0 * np.arange(5))  # along -S, from the top
    assert stored.spacing_xy == pytest.approx((0.7, 0.8))


def test_ct_rate_reader_bad_inputs_are_named(tmp_path):
    from graftkit_encoders.readers import read_ct_rate_volume, read_rescale_table

    path = write_nifti(tmp_path / "valid_3_a_1.nii.gz", np.round(ct_phantom(n=3)) + 1024)
    table = read_rescale_table(
        write_metadata(tmp_path / "m.csv", [("valid_9_a_1.nii.gz", 1, -1024)])
    )
    with pytest.raises(VolumeError, match=r"^valid_3_a_1\.nii\.gz: no row in metadata_csv"):
        read_ct_rate_volume(path, table)
    with pytest.raises(VolumeError, match=r"^valid_3_a_1\.nii\.gz: .*raw stored values"):
        read_ct_rate_volume(path, None)
    folder, _ = write_dicom_series(tmp_path / "series", n=2)
    with pytest.raises(VolumeError, match=r"^series: reader=ct_rate reads CT-RATE NIfTI files"):
        read_ct_rate_volume(folder, table)
    (tmp_path / "cols.csv").write_text("VolumeName,RescaleSlope\nvalid_3_a_1.nii.gz,1\n")
    with pytest.raises(ValueError, match=r"cols\.csv: no column\(s\) RescaleIntercept"):
        read_rescale_table(tmp_path / "cols.csv")
    write_metadata(tmp_path / "nan.csv", [("a.nii.gz", 1, -1024), ("b.nii.gz", "x", -1024)])
    with pytest.raises(ValueError, match=r"nan\.csv line 3 \(b\.nii\.gz\): RescaleSlope 'x'"):
        read_rescale_table(tmp_path / "nan.csv")
    write_metadata(tmp_path / "two.csv", [("a.nii.gz", 1, -1024), ("a.nii.gz", 1, -8192)])
    with pytest.raises(ValueError, match=r"two\.csv line 3: a\.nii\.gz has another"):
        read_rescale_table(tmp_path / "two.csv")
