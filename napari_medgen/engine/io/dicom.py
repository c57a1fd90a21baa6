"""DICOM series folders: one series, evenly spaced slices, a few non-identifying tags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidVolumeError, VolumeReadError
from ..volume import Volume
from .formats import DICOM_TAGS, itk_reason
from .integrity import check_shape_info

# Largest distance between a DICOM slice's recorded position and its place in the stacked volume
# that is accepted (as a fraction of the slice spacing): more means missing slices or variable spacing.
NON_UNIFORM_TOLERANCE = 0.05


def is_dicom_series_folder(path: str | os.PathLike[str]) -> bool:
    import SimpleITK as sitk

    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def read_dicom_series(folder: Path, series_id: str | None) -> Volume:
    """The series `series_id` (the only one, when None) of a DICOM folder as a volume: evenly spaced slices only."""
    import SimpleITK as sitk

    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise VolumeReadError(f"{folder}: the folder holds no DICOM series")
    if series_id is None:
        if len(series_ids) > 1:
            raise VolumeReadError(
                f"{folder}: the folder holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); "
                "choose one with its series instance UID"
            )
        series_id = series_ids[0]
    elif series_id not in series_ids:
        raise VolumeReadError(f"{folder}: no DICOM series {series_id} (found {', '.join(series_ids)})")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeReadError(f"{folder}: the DICOM series cannot be read ({itk_reason(error)})") from None
    check_shape_info(folder, image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize())
    metadata: dict[str, Any] = {"source_format": "dicom-series", "dicom_series_uid": series_id}
    deviation = _slice_position_deviation(reader, image, len(files))
    if deviation is not None and deviation > NON_UNIFORM_TOLERANCE * image.GetSpacing()[2]:
        raise VolumeReadError(
            f"{folder}: the DICOM slices are not evenly spaced (a slice lies {deviation:.3g} mm from its place "
            f"in a regular stack of {len(files)} slices): a slice file may be missing, or the series has a "
            "variable slice spacing or a gantry tilt. Check the folder is complete, or resample the series "
            "to a regular grid first (e.g. in 3D Slicer)"
        )
    for tag, key in DICOM_TAGS.items():
        if reader.HasMetaDataKey(0, tag):
            metadata[key] = reader.GetMetaData(0, tag).strip()
    try:
        return Volume.from_sitk(image, metadata)
    except InvalidVolumeError as error:
        raise InvalidVolumeError(f"{folder}: {error}") from None


def _slice_position_deviation(reader: Any, image: Any, count: int) -> float | None:
    """Largest distance (mm) between a slice's ImagePositionPatient and where the stacked volume puts it.

    ITK stacks a series at one (mean) spacing; a missing slice or a variable spacing would misplace
    slices silently.
    """
    if image.GetDimension() != 3 or image.GetSize()[2] != count or count < 3:
        return None
    worst = 0.0
    for k in range(count):
        if not reader.HasMetaDataKey(k, "0020|0032"):
            return None
        try:
            position = np.array([float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")])
        except ValueError:
            return None
        if position.shape != (3,):
            return None
        placed = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k)))
        worst = max(worst, float(np.linalg.norm(position - placed)))
    return worst
