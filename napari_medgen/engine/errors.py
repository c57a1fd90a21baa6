"""The project's own exception types.

Every error a user can cause (a bad file, a wrong shape, a missing model, a bad region) is raised as
one of these, with a message that says what is wrong and what to do. Front ends catch
``MedgenError`` and show its message; anything else is a bug.
"""

from __future__ import annotations


class MedgenError(Exception):
    """Base class of every error a user can cause."""


class VolumeReadError(MedgenError):
    """A file or folder could not be read as a medical image volume."""


class VolumeWriteError(MedgenError):
    """A volume could not be written; any existing file at the path is left untouched."""


class UnsupportedFormatError(MedgenError):
    """The file extension is not one of the supported medical image formats."""


class InvalidVolumeError(MedgenError):
    """A volume's array or geometry is not usable (4-D, RGB, NaN, zero spacing, ...)."""


class GeometryMismatchError(MedgenError):
    """Two volumes that must share a voxel grid do not."""


class ModelCardError(MedgenError):
    """A model folder's card (model.json) is missing or fails the schema."""


class ModelWeightsError(MedgenError):
    """A model's weights are missing, unsafe, or do not fit the network the card describes."""


class ModelNotFoundError(MedgenError):
    """No model of that name is in any model folder."""


class LabelSchemaError(MedgenError):
    """A label map holds values that the model's label schema does not define."""


class RegionError(MedgenError):
    """An inpainting region is empty, outside the image, or does not fit the image."""


class TaskNotSupportedError(MedgenError):
    """The model does not support the task asked of it (e.g. inpainting)."""


class OptionNotSupportedError(MedgenError):
    """A sampling option that the model cannot honour (e.g. guidance for a model trained without it)."""


class DeviceError(MedgenError):
    """The requested device or precision is not available on this machine."""
