"""Bad input is refused with our errors naming the file, and failed writes leave every file as it was."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from geometry_cases import (
    ALL_FORMATS,
    DIRECTIONS,
    ORIGIN,
    SPACING,
    listing,
    make_volume,
)

from napari_medgen.engine.errors import (
    InvalidVolumeError,
    MedgenError,
    UnsupportedFormatError,
    VolumeReadError,
    VolumeWriteError,
)
from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.volume import Volume

# -- bad input ----------------------------------------------------------------------------------


def assert_names_file(error: pytest.ExceptionInfo, path: Path) -> None:
    assert isinstance(error.value, MedgenError)
    assert path.name in str(error.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.nii.gz"
    with pytest.raises(VolumeReadError) as error:
        read_volume(path)
    assert_names_file(error, path)


@pytest.mark.parametrize("ext", [*ALL_FORMATS, ".dcm"])
def test_empty_file(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    with pytest.raises(VolumeReadError, match="empty") as error:
        read_volume(path)
    assert_names_file(error, path)


@pytest.mark.parametrize("ext", [*ALL_FORMATS, ".dcm"])
def test_corrupt_file(tmp_path, ext):
    path = tmp_path / f"corrupt{ext}"
    path.write_bytes(np.random.default_rng(11).bytes(4096))
    with pytest.raises(VolumeReadError) as error:
        read_volume(path)
    assert_names_file(error, path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.05])
def test_truncated_file(tmp_path, ext, keep):
    rng = np.random.default_rng(3)
    volume = Volume(rng.normal(size=(16, 24, 32)).astype(np.float32), SPACING, ORIGIN, np.eye(3).ravel())
    full = write_volume(volume, tmp_path / f"full{ext}")
    data = full.read_bytes()
    path = tmp_path / f"truncated{ext}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VolumeReadError) as error:
        read_volume(path)
    assert_names_file(error, path)


def test_nifti_whose_gzip_trailer_is_missing_but_data_complete_still_reads(tmp_path):
    """A file whose last bytes (the gzip checksum) are gone but whose voxels are all there opens."""
    volume = make_volume()
    path = write_volume(volume, tmp_path / "scan.nii.gz")
    raw = gzip.decompress(path.read_bytes())
    # Re-compress as two gzip members (as concatenating tools write): still a valid file.
    half = len(raw) // 2
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    np.testing.assert_array_equal(read_volume(path).array, volume.array)


@pytest.mark.parametrize(("header", "data"), [("scan.mhd", "scan.zraw"), ("scan.nhdr", "scan.raw.gz")])
def test_header_whose_data_file_is_missing(tmp_path, header, data):
    write_volume(make_volume(), tmp_path / header)
    (tmp_path / data).unlink()
    with pytest.raises(VolumeReadError) as error:
        read_volume(tmp_path / header)
    assert_names_file(error, tmp_path / header)


@pytest.mark.parametrize("name", ["photo.png", "notes.txt", "scan", "volume.nii.zip"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(UnsupportedFormatError) as error:
        read_volume(path)
    assert_names_file(error, path)


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
def test_4d_volume(tmp_path, ext):
    path = tmp_path / f"timeseries{ext}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=False), str(path))
    with pytest.raises(InvalidVolumeError, match="4-D") as error:
        read_volume(path)
    assert_names_file(error, path)


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (5, 6, 3)])
def test_rgb_volume(tmp_path, ext, shape):
    path = tmp_path / f"colour{ext}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.uint8), isVector=True), str(path))
    with pytest.raises(InvalidVolumeError, match="components") as error:
        read_volume(path)
    assert_names_file(error, path)


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_voxels(tmp_path, ext, bad):
    array = np.ones((3, 4, 5), np.float32)
    array[1, 2, 3] = bad
    path = tmp_path / f"nan{ext}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InvalidVolumeError, match="NaN") as error:
        read_volume(path)
    assert_names_file(error, path)


@pytest.mark.parametrize("spacing", [b"0 1 1", b"1 0 2.5"])
def test_zero_spacing(tmp_path, spacing):
    path = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(path), False)
    header = path.read_bytes()
    assert b"ElementSpacing = 1 1 1" in header
    path.write_bytes(header.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = " + spacing))
    with pytest.raises(InvalidVolumeError, match="spacing") as error:
        read_volume(path)
    assert_names_file(error, path)


def test_invalid_volumes_are_refused_in_memory():
    with pytest.raises(InvalidVolumeError, match="2-D or 3-D"):
        Volume(np.zeros((2, 3, 4, 5)), (1, 1, 1, 1), (0, 0, 0, 0), np.eye(4).ravel())
    with pytest.raises(InvalidVolumeError, match="spacing"):
        Volume(np.zeros((3, 4, 5)), (0, 1, 1), (0, 0, 0), np.eye(3).ravel())
    with pytest.raises(InvalidVolumeError, match="NaN"):
        Volume(np.full((3, 4, 5), np.nan), (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    with pytest.raises(InvalidVolumeError, match="rotation"):
        Volume(np.zeros((3, 4, 5)), (1, 1, 1), (0, 0, 0), (1, 0, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(InvalidVolumeError, match="voxel type"):
        Volume(np.zeros((3, 4, 5), np.complex64), (1, 1, 1), (0, 0, 0), np.eye(3).ravel())


# -- failed writes leave everything as it was ---------------------------------------------------


@pytest.fixture
def existing(tmp_path) -> Path:
    """A folder already holding a scan (with its sidecar) that a failed write must not touch."""
    folder = tmp_path / "data"
    folder.mkdir()
    write_volume(make_volume(metadata={"original": True}), folder / "scan.nii.gz")
    write_volume(make_volume(metadata={"original": True}), folder / "scan.mhd")
    (folder / "photo.png").write_bytes(b"not really a png")
    return folder


def test_write_with_unsupported_extension_changes_nothing(existing):
    before = listing(existing)
    for name in ("photo.png", "scan.txt", "scan.dcm"):
        with pytest.raises(UnsupportedFormatError) as error:
            write_volume(make_volume(), existing / name)
        assert name in str(error.value)
    assert listing(existing) == before


def test_write_into_a_missing_folder_or_under_a_file_fails_cleanly(existing):
    before = listing(existing)
    for path in (existing / "photo.png" / "scan.nii.gz", existing / "missing" / "scan.nii.gz"):
        with pytest.raises(VolumeWriteError) as error:
            write_volume(make_volume(), path)
        assert "scan.nii.gz" in str(error.value)
    assert listing(existing) == before


def test_write_onto_a_folder_fails_cleanly(existing):
    (existing / "folder.nii.gz").mkdir()
    before = listing(existing)
    with pytest.raises(VolumeWriteError, match="folder"):
        write_volume(make_volume(), existing / "folder.nii.gz")
    assert listing(existing) == before
    assert sorted(p.name for p in existing.iterdir() if p.name.startswith(".")) == []


def test_failed_commit_of_a_data_file_leaves_the_old_files(existing):
    """The .mhd's data file cannot be put in place (a folder has its name): nothing changes."""
    (existing / "scan.zraw").unlink()
    (existing / "scan.zraw").mkdir()
    (existing / "scan.zraw" / "keep").write_text("x")
    before = listing(existing)
    with pytest.raises(VolumeWriteError) as error:
        write_volume(make_volume(DIRECTIONS["oblique_1"], metadata={"new": True}), existing / "scan.mhd")
    assert "scan.mhd" in str(error.value)
    assert listing(existing) == before
    assert not [p for p in existing.iterdir() if p.name.startswith(".")]


def test_failed_commit_of_the_sidecar_rolls_back_the_data_file(existing):
    """Data file moved, then the sidecar cannot be: the data file already moved is restored."""
    (existing / "scan.json").unlink()
    (existing / "scan.json").mkdir()
    (existing / "scan.json" / "keep").write_text("x")
    before = listing(existing)
    with pytest.raises(VolumeWriteError):
        write_volume(make_volume(DIRECTIONS["oblique_2"], metadata={"new": True}), existing / "scan.mhd")
    assert listing(existing) == before
    with pytest.raises(VolumeWriteError):
        write_volume(make_volume(DIRECTIONS["oblique_2"], metadata={"new": True}), existing / "scan.nii.gz")
    assert listing(existing) == before
    assert not [p for p in existing.iterdir() if p.name.startswith(".")]
    np.testing.assert_array_equal(read_volume(existing / "scan.nii.gz").array, make_volume().array)


def test_failed_itk_write_leaves_the_old_file(existing):
    """NIfTI-1 cannot hold an axis longer than 32767 voxels: ITK refuses, the old file stays."""
    before = listing(existing)
    too_long = Volume(np.zeros((1, 1, 40000), np.uint8), SPACING, ORIGIN, np.eye(3).ravel(), {"new": True})
    with pytest.raises(VolumeWriteError, match="nothing was changed") as error:
        write_volume(too_long, existing / "scan.nii.gz")
    assert "scan.nii.gz" in str(error.value)
    assert listing(existing) == before
    assert not [p for p in existing.iterdir() if p.name.startswith(".")]


def test_unusable_file_names_raise_our_errors(existing):
    before = listing(existing)
    path = existing / ("x" * 300 + ".nii.gz")
    with pytest.raises(VolumeWriteError):
        write_volume(make_volume(), path)
    with pytest.raises(VolumeReadError):
        read_volume(path)
    assert listing(existing) == before
    assert not [p for p in existing.iterdir() if p.name.startswith(".")]


def test_write_leaves_no_temporary_files(tmp_path):
    for ext in ALL_FORMATS:
        write_volume(make_volume(metadata={"a": 1}), tmp_path / f"scan{ext}")
    assert all(not name.startswith(".") for name in os.listdir(tmp_path))
