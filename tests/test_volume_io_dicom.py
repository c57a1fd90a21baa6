"""DICOM: single files and series folders read with their spacing, origin and direction; broken series refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from geometry_cases import (
    DIRECTIONS,
    ORIGIN,
    SPACING,
    make_volume,
)

from napari_medgen.engine.errors import (
    VolumeReadError,
)
from napari_medgen.engine.io import read_volume
from napari_medgen.engine.volume import Volume

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
