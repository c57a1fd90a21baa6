"""File I/O keeps voxels and geometry: round trips of every format, metadata, overwrites."""

from __future__ import annotations

import json

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
    make_volume,
    rotation,
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
