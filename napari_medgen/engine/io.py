"""Reading and writing medical image volumes through SimpleITK, keeping their geometry.

Formats: NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr), a single DICOM file
(.dcm) and a DICOM series folder (read only: writing DICOM needs patient and study data that a
volume does not carry). Writes are atomic: files are written into a temporary folder beside the
target and moved into place only when complete, so a failed write never clobbers an existing file.
A volume's ``metadata`` goes into a ``<name>.json`` sidecar, and a short summary into the format's
description field where it has one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidVolumeError, UnsupportedFormatError, VolumeReadError, VolumeWriteError
from .volume import Volume

READ_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
# Key under which the project stores its metadata inside MetaImage / NRRD headers.
HEADER_KEY = "napari_medgen"
# DICOM tags copied into metadata: enough to know what a volume is, nothing that identifies a patient.
DICOM_TAGS = {
    "0008|0060": "modality",
    "0008|103e": "series_description",
    "0018|0050": "slice_thickness",
    "0028|1050": "window_center",
    "0028|1051": "window_width",
}


def volume_extension(path: str | os.PathLike[str]) -> str:
    """The (lower-case) format extension of a path, '' if none of ours; '.nii.gz' counts as one."""
    name = Path(path).name.lower()
    for ext in READ_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return ""


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``scan.nii.gz`` -> ``scan.json``: where a volume's metadata is written beside it."""
    path = Path(path)
    ext = volume_extension(path)
    stem = path.name[: -len(ext)] if ext else path.stem
    return path.with_name(stem + ".json")


def is_dicom_series_folder(path: str | os.PathLike[str]) -> bool:
    import SimpleITK as sitk

    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def read_volume(path: str | os.PathLike[str], series_id: str | None = None) -> Volume:
    """Read a NIfTI, MetaImage, NRRD or DICOM file, or a DICOM series folder, as a `Volume`.

    Raises VolumeReadError (missing, corrupt or truncated file), UnsupportedFormatError (other
    extension) or InvalidVolumeError (4-D, RGB, complex, NaN voxels, bad spacing).
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path, series_id)
    if not path.exists():
        raise VolumeReadError(f"{path}: no such file; check the path and its spelling")
    ext = volume_extension(path)
    if not ext:
        raise UnsupportedFormatError(
            f"{path.name}: unsupported file type; open NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), "
            "NRRD (.nrrd, .nhdr), DICOM (.dcm) or a folder holding one DICOM series"
        )
    if path.stat().st_size == 0:
        raise VolumeReadError(f"{path}: the file is empty (0 bytes); it was not written completely")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise VolumeReadError(f"{path}: not a readable {ext} image ({_itk_reason(error)})") from None
    _check_shape_info(path, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize())
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeReadError(
            f"{path}: the file is truncated or corrupt and its voxels cannot be read "
            f"({_itk_reason(error)})"
        ) from None
    metadata = _header_metadata(reader)
    metadata.update(_read_sidecar(path))
    metadata["source_format"] = ext.lstrip(".")
    try:
        return Volume.from_sitk(image, metadata)
    except InvalidVolumeError as error:
        raise InvalidVolumeError(f"{path}: {error}") from None


def _read_dicom_series(folder: Path, series_id: str | None) -> Volume:
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
        raise VolumeReadError(f"{folder}: the DICOM series cannot be read ({_itk_reason(error)})") from None
    _check_shape_info(folder, image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize())
    metadata: dict[str, Any] = {"source_format": "dicom-series", "dicom_series_uid": series_id}
    for tag, key in DICOM_TAGS.items():
        if reader.HasMetaDataKey(0, tag):
            metadata[key] = reader.GetMetaData(0, tag).strip()
    try:
        return Volume.from_sitk(image, metadata)
    except InvalidVolumeError as error:
        raise InvalidVolumeError(f"{folder}: {error}") from None


def _check_shape_info(path: Path, dimension: int, components: int, size: tuple[int, ...]) -> None:
    if components != 1:
        raise InvalidVolumeError(
            f"{path}: the image has {components} components per voxel (RGB or vector data); "
            "napari-medgen works on single-channel grey-scale scans"
        )
    if dimension == 4 and size[3] == 1:
        return  # a 3-D volume stored with a trailing singleton axis is still 3-D
    if dimension not in (2, 3):
        raise InvalidVolumeError(
            f"{path}: the image is {dimension}-D (size {tuple(size)}); napari-medgen needs a 2-D or "
            "3-D volume: extract one time point or channel first"
        )


def _header_metadata(reader: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    keys = set(reader.GetMetaDataKeys())
    if HEADER_KEY in keys:
        try:
            metadata.update(json.loads(reader.GetMetaData(HEADER_KEY)))
        except json.JSONDecodeError:
            pass
    if "descrip" in keys and reader.GetMetaData("descrip").strip():
        metadata["description"] = reader.GetMetaData("descrip").strip()
    for tag, key in DICOM_TAGS.items():
        if tag in keys:
            metadata[key] = reader.GetMetaData(tag).strip()
    return metadata


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # a damaged sidecar must not stop the image from opening
    return data if isinstance(data, dict) else {}


def _itk_reason(error: Exception) -> str:
    """The useful last line of an ITK exception message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if not line.startswith(("sitk::ERROR", "in ", "File ")) or len(lines) == 1:
            return line[:300]
    return lines[-1][:300] if lines else "unknown reason"


def write_volume(volume: Volume, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write `volume` to `path` atomically; returns the path written.

    The format follows the extension (NIfTI, MetaImage, NRRD). Integer label maps keep their integer
    type. ``volume.metadata`` goes to a ``<name>.json`` sidecar and, summarised, to the header.
    On any failure the existing file at `path` (and its sidecar) is left exactly as it was.
    """
    import SimpleITK as sitk

    path = Path(path)
    ext = volume_extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise UnsupportedFormatError(
            f"{path.name}: cannot write this file type; write NIfTI (.nii.gz), MetaImage (.mha) or "
            "NRRD (.nrrd)" + (" (DICOM export is not supported)" if ext == ".dcm" else "")
        )
    if path.is_dir():
        raise VolumeWriteError(f"{path}: is a folder; give a file name such as {path / 'result.nii.gz'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VolumeWriteError(f"{path}: the folder {parent} does not exist; create it first")
    image = volume.to_sitk()
    header_json = json.dumps(volume.metadata, sort_keys=True, default=str) if volume.metadata else ""
    if header_json and ext in (".mha", ".mhd", ".nrrd", ".nhdr"):
        image.SetMetaData(HEADER_KEY, header_json)
    if ext in (".nii", ".nii.gz"):
        image.SetMetaData("descrip", _description(volume.metadata))
    try:
        staging = Path(tempfile.mkdtemp(prefix=".medgen-write-", dir=parent))
    except OSError as error:
        raise VolumeWriteError(f"{path}: cannot write in {parent} ({error.strerror}); check permissions") from None
    try:
        staged = staging / path.name
        try:
            sitk.WriteImage(image, str(staged), useCompression=compress)
        except RuntimeError as error:
            raise VolumeWriteError(f"{path}: writing failed ({_itk_reason(error)}); nothing was changed") from None
        if volume.metadata:
            (staging / sidecar_path(path).name).write_text(
                json.dumps(volume.metadata, indent=2, sort_keys=True, default=str)
            )
        # Move data files first and the header / main file last, so a reader never finds a header
        # pointing at data that is not there yet.
        produced = sorted(staging.iterdir(), key=lambda p: (p.name == path.name, p.name))
        for item in produced:
            os.replace(item, parent / item.name)
    except OSError as error:
        raise VolumeWriteError(
            f"{path}: writing failed ({error.strerror or error}); the disk may be full or read-only. "
            "Existing files were left as they were"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _description(metadata: dict[str, Any]) -> str:
    """NIfTI's 80-byte description: says 'synthetic' first, since that is what must not be lost."""
    provenance = metadata.get("provenance") or {}
    if metadata.get("synthetic") or provenance:
        model = provenance.get("model", "?")
        text = f"SYNTHETIC napari-medgen {model} seed={provenance.get('seed', '?')}"
    else:
        text = str(metadata.get("description", ""))
    return text[:79]


def as_label_dtype(array: np.ndarray) -> np.ndarray:
    """The smallest unsigned integer type that holds the labels (what label files are stored as)."""
    top = int(array.max()) if array.size else 0
    if int(array.min()) < 0:
        return array.astype(np.int16 if top < 2**15 else np.int32)
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return array.astype(dtype)
    return array.astype(np.int64)
