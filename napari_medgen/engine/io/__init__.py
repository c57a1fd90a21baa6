"""Reading and writing medical image volumes through SimpleITK, keeping their geometry.

Formats: NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr), a single DICOM file
(.dcm) and a DICOM series folder (read only: writing DICOM needs patient and study data that a
volume does not carry). Writes are atomic: files are written into a temporary folder beside the
target and moved into place only when complete, so a failed write never clobbers an existing file.
A volume's ``metadata`` goes into a ``<name>.json`` sidecar, and a short summary into the format's
description field where it has one.

`formats` (extensions, sidecar, header fields), `reading`, `integrity` (the checks that work around
ITK), `dicom` (series folders), `writing` (atomic writes).
"""

from .dicom import is_dicom_series_folder
from .formats import READ_EXTENSIONS, SYNTHETIC_MARK, WRITE_EXTENSIONS, sidecar_path, volume_extension
from .reading import read_volume
from .writing import check_writable_output, write_volume, write_volumes

__all__ = [
    "READ_EXTENSIONS",
    "SYNTHETIC_MARK",
    "WRITE_EXTENSIONS",
    "check_writable_output",
    "is_dicom_series_folder",
    "read_volume",
    "sidecar_path",
    "volume_extension",
    "write_volume",
    "write_volumes",
]
