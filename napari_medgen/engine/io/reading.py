"""Reading a file or a DICOM series folder as a `Volume`, refusing damaged or impossible files."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidVolumeError, UnsupportedFormatError, VolumeReadError
from ..volume import Volume
from .dicom import _read_dicom_series
from .formats import _header_metadata, _itk_reason, _read_sidecar, volume_extension
from .integrity import (
    _check_compressed_data,
    _check_compressed_stream,
    _check_memory,
    _check_nifti_complete,
    _check_shape_info,
    _check_spacing_info,
    _drop_trailing_singleton,
    _itk_readable,
    _voxel_bytes,
)


def read_volume(path: str | os.PathLike[str], series_id: str | None = None) -> Volume:
    """Read a NIfTI, MetaImage, NRRD or DICOM file, or a DICOM series folder, as a `Volume`.

    Raises VolumeReadError (missing, corrupt or truncated file), UnsupportedFormatError (other
    extension) or InvalidVolumeError (4-D, RGB, complex, NaN voxels, bad spacing).
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        is_folder, exists = path.is_dir(), path.exists()
        size = path.stat().st_size if exists else 0
    except OSError as error:  # e.g. a name too long for the file system
        raise VolumeReadError(f"{path}: cannot be opened ({error.strerror or error})") from None
    if is_folder:
        return _read_dicom_series(path, series_id)
    if not exists:
        raise VolumeReadError(f"{path}: no such file; check the path and its spelling")
    ext = volume_extension(path)
    if not ext:
        raise UnsupportedFormatError(
            f"{path.name}: unsupported file type; open NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), "
            "NRRD (.nrrd, .nhdr), DICOM (.dcm) or a folder holding one DICOM series"
        )
    if size == 0:
        raise VolumeReadError(f"{path}: the file is empty (0 bytes); it was not written completely")
    with _itk_readable(path, ext) as itk_path:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(itk_path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            if ext == ".nii.gz":
                _check_compressed_stream(path, path, 0, 47, 0)  # a damaged gzip stream: say so
            raise VolumeReadError(f"{path}: not a readable {ext} image ({_itk_reason(error)})") from None
        _check_shape_info(
            path, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize(), reader.GetPixelID()
        )
        _check_spacing_info(path, reader.GetSpacing())
        _check_memory(path, reader.GetSize(), reader.GetPixelID())
        if ext in (".nii", ".nii.gz"):
            _check_nifti_complete(path, ext)
        else:
            _check_compressed_data(path, ext, _voxel_bytes(reader.GetSize(), reader.GetPixelID()))
        try:
            image = reader.Execute()
        except RuntimeError as error:
            raise VolumeReadError(
                f"{path}: the file is truncated or corrupt and its voxels cannot be read "
                f"({_itk_reason(error)})"
            ) from None
    image = _drop_trailing_singleton(image)
    metadata = _header_metadata(reader)
    metadata.update(_read_sidecar(path))
    metadata["source_format"] = ext.lstrip(".")
    try:
        return Volume.from_sitk(image, metadata)
    except InvalidVolumeError as error:
        raise InvalidVolumeError(f"{path}: {error}") from None
