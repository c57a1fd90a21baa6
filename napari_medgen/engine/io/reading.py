"""Reading a file or a DICOM series folder as a `Volume`, refusing damaged or impossible files."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidVolumeError, UnsupportedFormatError, VolumeReadError
from ..volume import Volume
from .dicom import read_dicom_series
from .formats import header_metadata, itk_reason, read_sidecar, volume_extension
from .integrity import (
    check_compressed_data,
    check_compressed_stream,
    check_memory,
    check_nifti_complete,
    check_shape_info,
    check_spacing_info,
    drop_trailing_singleton,
    image_bytes,
    itk_readable,
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
        return read_dicom_series(path, series_id)
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
    with itk_readable(path, ext) as itk_path:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(itk_path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            if ext == ".nii.gz":
                check_compressed_stream(path, path, 0, 47, 0)  # a damaged gzip stream: say so
            raise VolumeReadError(f"{path}: not a readable {ext} image ({itk_reason(error)})") from None
        check_shape_info(
            path, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize(), reader.GetPixelID()
        )
        check_spacing_info(path, reader.GetSpacing())
        check_memory(path, reader.GetSize(), reader.GetPixelID())
        if ext in (".nii", ".nii.gz"):
            check_nifti_complete(path, ext)
        else:
            check_compressed_data(path, ext, image_bytes(reader.GetSize(), reader.GetPixelID()))
        try:
            image = reader.Execute()
        except RuntimeError as error:
            raise VolumeReadError(
                f"{path}: the file is truncated or corrupt and its voxels cannot be read "
                f"({itk_reason(error)})"
            ) from None
    image = drop_trailing_singleton(image)
    metadata = header_metadata(reader)
    metadata.update(read_sidecar(path))
    metadata["source_format"] = ext.lstrip(".")
    try:
        return Volume.from_sitk(image, metadata)
    except InvalidVolumeError as error:
        raise InvalidVolumeError(f"{path}: {error}") from None
