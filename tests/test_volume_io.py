"""File I/O keeps voxels and geometry: round trips of every format, DICOM, bad input, atomic writes."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from geometry_cases import (
    ALL_FORMATS,
    DIRECTIONS,
    FLOAT32_FORMATS,
    ORIGIN,
    SHAPE_ZYX,
    SPACING,
    listing,
    make_volume,
    rotation,
)

from napari_medgen.engine.errors import (
    InvalidVolumeError,
    MedgenError,
    UnsupportedFormatError,
    VolumeReadError,
    VolumeWriteError,
)
from napari_medgen.engine.io import read_volume, sidecar_path, write_volume
from napari_medgen.engine.volume import Volume


def geometry_tolerance(ext: str) -> float:
    """MetaImage keeps doubles as written; NRRD stores spacing * direction (exact to rounding); NIfTI float32."""
    if ext in FLOAT32_FORMATS:
        return 2e-5
    if ext in (".nrrd", ".nhdr"):
        return 1e-12
    return 0.0


def assert_same_geometry(read: Volume, written: Volume, atol: float) -> None:
    assert read.shape == written.shape
    np.testing.assert_allclose(read.spacing, written.spacing, rtol=0, atol=atol)
    np.testing.assert_allclose(read.origin, written.origin, rtol=0, atol=atol * 100 if atol else 0)
    np.testing.assert_allclose(read.direction, written.direction, rtol=0, atol=atol)


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ALL_FORMATS)
@pytest.mark.parametrize("direction", ["identity", "lps_flip_xy", "oblique_1", "oblique_improper"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, ext, direction):
    volume = make_volume(DIRECTIONS[direction])
    path = write_volume(volume, tmp_path / f"scan{ext}")
    assert path == tmp_path / f"scan{ext}"
    read = read_volume(path)
    assert read.array.dtype == np.float32
    np.testing.assert_array_equal(read.array, volume.array)
    assert_same_geometry(read, volume, geometry_tolerance(ext))
    # The voxel grid is the same in physical space, corner to corner.
    corner = np.array(SHAPE_ZYX[::-1]) - 1
    np.testing.assert_allclose(read.index_to_physical(corner), volume.index_to_physical(corner), atol=1e-3)
    assert read.same_grid(volume)


@pytest.mark.parametrize("ext", ALL_FORMATS)
def test_round_trip_geometry_values_are_exact_for_mha_and_close_for_nifti(tmp_path, ext):
    volume = make_volume(DIRECTIONS["oblique_2"])
    read = read_volume(write_volume(volume, tmp_path / f"scan{ext}"))
    if ext in (".mha", ".mhd"):
        assert read.spacing == SPACING
        assert read.origin == ORIGIN
        assert read.direction == volume.direction
    else:
        assert_same_geometry(read, volume, geometry_tolerance(ext))


@pytest.mark.parametrize("ext", ALL_FORMATS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16])
def test_label_volumes_keep_their_integer_type(tmp_path, ext, dtype):
    labels = make_volume(DIRECTIONS["oblique_1"], dtype=dtype)
    assert labels.is_label_map
    read = read_volume(write_volume(labels, tmp_path / f"labels{ext}"))
    assert read.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read.array, labels.array)
    assert read.is_label_map
    assert_same_geometry(read, labels, geometry_tolerance(ext))


def test_boolean_masks_are_written_as_uint8(tmp_path):
    mask = np.zeros(SHAPE_ZYX, dtype=bool)
    mask[2, 3:5, 4:8] = True
    volume = Volume(mask, SPACING, ORIGIN, DIRECTIONS["identity"].ravel())
    read = read_volume(write_volume(volume, tmp_path / "mask.nii.gz"))
    assert read.array.dtype == np.uint8
    np.testing.assert_array_equal(read.array, mask.astype(np.uint8))


@pytest.mark.parametrize("ext", ALL_FORMATS)
def test_metadata_round_trips_through_the_sidecar(tmp_path, ext):
    metadata = {
        "modality": "CT",
        "synthetic": True,
        "provenance": {"model": "tiny-2d", "seed": 1234, "steps": [10, 20], "guidance": 1.5},
        "label_names": {"0": "background", "1": "liver"},
        "note": "unicode ok: µm, Größe, 脳",
    }
    volume = make_volume(DIRECTIONS["oblique_1"], metadata=metadata)
    path = write_volume(volume, tmp_path / f"result{ext}")
    side = sidecar_path(path)
    assert side == tmp_path / "result.json"
    assert json.loads(side.read_text()) == metadata
    read = read_volume(path)
    for key, value in metadata.items():
        assert read.metadata[key] == value
    assert read.metadata["source_format"] == ext.lstrip(".")


@pytest.mark.parametrize("ext", [".mha", ".nrrd"])
def test_metadata_survives_in_the_header_without_the_sidecar(tmp_path, ext):
    metadata = {"synthetic": True, "provenance": {"model": "m", "seed": 3}}
    path = write_volume(make_volume(metadata=metadata), tmp_path / f"result{ext}")
    sidecar_path(path).unlink()
    read = read_volume(path)
    assert read.metadata["synthetic"] is True
    assert read.metadata["provenance"] == {"model": "m", "seed": 3}


def test_nifti_description_marks_synthetic_results(tmp_path):
    volume = make_volume(metadata={"synthetic": True, "provenance": {"model": "demo", "seed": 7}})
    path = write_volume(volume, tmp_path / "synthetic.nii.gz")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert reader.GetMetaData("descrip").startswith("SYNTHETIC napari-medgen demo seed=7")


def test_synthetic_nifti_stays_marked_without_its_sidecar(tmp_path):
    path = write_volume(make_volume(metadata={"synthetic": True, "provenance": {"model": "m", "seed": 1}}), tmp_path / "s.nii")
    sidecar_path(path).unlink()
    read = read_volume(path)
    assert read.metadata["synthetic"] is True
    assert read.metadata["description"].startswith("SYNTHETIC napari-medgen m seed=1")


@pytest.mark.parametrize("ext", [".mha", ".mhd", ".nrrd", ".nhdr"])
def test_large_metadata_still_gives_a_readable_file(tmp_path, ext):
    """MetaImage cannot read header lines over 32767 characters: the header keeps a summary only."""
    metadata = {
        "synthetic": True,
        "provenance": {"model": "m", "seed": 5},
        "label_names": {str(i): f"structure number {i}" for i in range(3000)},
    }
    path = write_volume(make_volume(metadata=metadata), tmp_path / f"big{ext}")
    assert read_volume(path).metadata == {**metadata, "source_format": ext.lstrip(".")}
    sidecar_path(path).unlink()
    header_only = read_volume(path).metadata
    assert header_only["synthetic"] is True
    assert header_only["provenance"] == {"model": "m", "seed": 5}


def test_rewriting_without_metadata_drops_the_old_sidecar(tmp_path):
    path = tmp_path / "scan.nii.gz"
    write_volume(make_volume(metadata={"synthetic": True, "label_map": True}), path)
    assert sidecar_path(path).exists()
    write_volume(make_volume(), path)
    read = read_volume(path)
    assert "synthetic" not in read.metadata and "label_map" not in read.metadata
    assert not sidecar_path(path).exists()


@pytest.mark.parametrize("ext", ALL_FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_2d_round_trip(tmp_path, ext, dtype):
    direction = rotation(5, ndim=2)
    volume = make_volume(direction, shape=(6, 11), dtype=dtype, spacing=(0.7, 0.9), origin=(-12.5, 40.25))
    read = read_volume(write_volume(volume, tmp_path / f"slice{ext}"))
    assert read.ndim == 2
    assert read.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read.array, volume.array)
    assert_same_geometry(read, volume, geometry_tolerance(ext))


def test_multi_file_formats_write_header_and_data_side_by_side(tmp_path):
    volume = make_volume(DIRECTIONS["oblique_1"])
    write_volume(volume, tmp_path / "a.mhd")
    write_volume(volume, tmp_path / "b.nhdr")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"a.mhd", "b.nhdr"} <= names
    assert any(n.startswith("a.") and n not in ("a.mhd",) for n in names)  # a.zraw / a.raw
    assert any(n.startswith("b.") and n not in ("b.nhdr",) for n in names)  # b.raw.gz / b.raw
    # No staging folders are left behind.
    assert not [n for n in names if n.startswith(".")]
    # The folder can be moved: the headers name their data files relative to themselves.
    moved = tmp_path / "moved"
    moved.mkdir()
    for item in list(tmp_path.iterdir()):
        if item.is_file():
            item.rename(moved / item.name)
    np.testing.assert_array_equal(read_volume(moved / "a.mhd").array, volume.array)
    np.testing.assert_array_equal(read_volume(moved / "b.nhdr").array, volume.array)


def test_overwrite_replaces_an_existing_file(tmp_path):
    path = tmp_path / "scan.mha"
    write_volume(make_volume(), path)
    second = make_volume(DIRECTIONS["oblique_2"], dtype=np.int16)
    write_volume(second, path)
    read = read_volume(path)
    np.testing.assert_array_equal(read.array, second.array)
    assert read.direction == second.direction


def test_nii_gz_is_read_even_when_a_nii_of_the_same_name_exists(tmp_path):
    """ITK's NIfTI library prefers ``x.nii`` when asked for ``x.nii.gz``; we must read what we were asked."""
    plain = make_volume()
    compressed = make_volume(DIRECTIONS["oblique_1"], dtype=np.int16)
    write_volume(plain, tmp_path / "scan.nii")
    write_volume(compressed, tmp_path / "scan.nii.gz")
    read = read_volume(tmp_path / "scan.nii.gz")
    assert read.array.dtype == np.int16
    np.testing.assert_array_equal(read.array, compressed.array)
    np.testing.assert_array_equal(read_volume(tmp_path / "scan.nii").array, plain.array)


def test_half_precision_volumes_are_written_as_float32(tmp_path):
    volume = Volume(np.linspace(0, 1, 60, dtype=np.float16).reshape(3, 4, 5), SPACING, ORIGIN, np.eye(3).ravel())
    read = read_volume(write_volume(volume, tmp_path / "half.nii.gz"))
    assert read.array.dtype == np.float32
    np.testing.assert_array_equal(read.array, volume.array.astype(np.float32))


def test_trailing_singleton_fourth_axis_reads_as_3d(tmp_path):
    array = np.arange(60, dtype=np.int16).reshape(1, 3, 4, 5)
    for ext in (".nii.gz", ".mha", ".nrrd"):
        path = tmp_path / f"singleton{ext}"
        sitk.WriteImage(sitk.GetImageFromArray(array, isVector=False), str(path))
        read = read_volume(path)
        assert read.shape == (3, 4, 5)
        np.testing.assert_array_equal(read.array, array[0])


# -- DICOM --------------------------------------------------------------------------------------


def test_dicom_file_reads_with_its_pixel_spacing_and_origin(pydicom_files):
    pydicom = pytest.importorskip("pydicom")
    path = pydicom_files / "CT_small.dcm"
    dataset = pydicom.dcmread(path)
    volume = read_volume(path)
    assert volume.shape == (1, 128, 128)
    np.testing.assert_allclose(volume.spacing[:2], (0.661468, 0.661468), atol=1e-6)
    np.testing.assert_allclose(volume.origin, [float(v) for v in dataset.ImagePositionPatient], atol=1e-4)
    row, column = np.asarray(dataset.ImageOrientationPatient[:3], float), np.asarray(dataset.ImageOrientationPatient[3:], float)
    np.testing.assert_allclose(volume.direction_matrix[:, 0], row, atol=1e-6)
    np.testing.assert_allclose(volume.direction_matrix[:, 1], column, atol=1e-6)
    # Stored values with the rescale applied (CT numbers).
    pixels = dataset.pixel_array.astype(float) * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[0], pixels)
    assert volume.metadata["modality"] == "CT"
    assert volume.metadata["source_format"] == "dcm"


def test_mr_dicom_file_reads(pydicom_files):
    volume = read_volume(pydicom_files / "MR_small.dcm")
    assert volume.shape == (1, 64, 64)
    np.testing.assert_allclose(volume.spacing[:2], (0.3125, 0.3125), atol=1e-6)


def write_dicom_series(folder: Path, volume: Volume, series_uid: str = "1.2.826.0.1.3680043.2.1125.1") -> None:
    """One file per slice, as SimpleITK's DicomSeriesFromArray example writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    image = volume.to_sitk()
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = [
        ("0008|0060", "MR"),
        ("0008|103e", "synthetic test series"),
        ("0020|000d", "1.2.826.0.1.3680043.2.1125.2"),
        ("0020|000e", series_uid),
        ("0020|0037", "\\".join(f"{v:.10f}" for v in (*direction[0:7:3], *direction[1:8:3]))),
        ("0018|0050", str(volume.spacing[2])),
        ("0008|0016", "1.2.840.10008.5.1.4.1.1.4"),
    ]
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        for tag, value in common:
            slice_image.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_series_folder_reads_with_slice_spacing_and_origin(tmp_path):
    source = make_volume(dtype=np.int16, spacing=(0.7, 0.7, 2.5))
    write_dicom_series(tmp_path / "series", source)
    volume = read_volume(tmp_path / "series")
    assert volume.shape == source.shape
    np.testing.assert_allclose(volume.spacing, SPACING, atol=1e-4)
    np.testing.assert_allclose(volume.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(volume.direction, source.direction, atol=1e-6)
    np.testing.assert_array_equal(volume.array, source.array)
    assert volume.metadata["source_format"] == "dicom-series"
    assert volume.metadata["modality"] == "MR"


def test_oblique_dicom_series_keeps_its_direction(tmp_path):
    source = make_volume(DIRECTIONS["tilted"], dtype=np.int16)
    write_dicom_series(tmp_path / "series", source)
    volume = read_volume(tmp_path / "series")
    np.testing.assert_allclose(volume.direction, source.direction, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, SPACING, atol=1e-4)
    np.testing.assert_allclose(volume.origin, ORIGIN, atol=1e-4)


def test_pydicom_ct_series_folder_reads(pydicom_files):
    folder = pydicom_files / "dicomdirtests" / "98892001" / "CT5N"
    if not folder.is_dir():
        pytest.skip("pydicom's CT5N series is not shipped")
    volume = read_volume(folder)
    assert volume.ndim == 3 and volume.shape[0] == 5
    assert min(volume.spacing) > 0


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    """ITK would stack the remaining slices at their mean spacing, misplacing them by up to 1.7 mm."""
    write_dicom_series(tmp_path / "series", make_volume(dtype=np.int16))
    (tmp_path / "series" / "slice_002.dcm").unlink()
    with pytest.raises(VolumeReadError, match="not evenly spaced") as error:
        read_volume(tmp_path / "series")
    assert str(tmp_path / "series") in str(error.value)


def test_folder_with_two_series_needs_a_series_uid(tmp_path):
    write_dicom_series(tmp_path / "study", make_volume(dtype=np.int16), series_uid="1.2.3.4.1")
    write_dicom_series(tmp_path / "other", make_volume(dtype=np.int16, shape=(3, 7, 9)), series_uid="1.2.3.4.2")
    for item in (tmp_path / "other").iterdir():
        item.rename(tmp_path / "study" / f"b_{item.name}")
    with pytest.raises(VolumeReadError, match="2 DICOM series") as error:
        read_volume(tmp_path / "study")
    assert str(tmp_path / "study") in str(error.value)
    assert read_volume(tmp_path / "study", series_id="1.2.3.4.2").shape == (3, 7, 9)
    with pytest.raises(VolumeReadError, match="no DICOM series 9.9"):
        read_volume(tmp_path / "study", series_id="9.9")


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(VolumeReadError) as error:
        read_volume(tmp_path)
    assert str(tmp_path) in str(error.value)


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
