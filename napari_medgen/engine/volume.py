"""`Volume`: an image or label array with its place in physical space.

The one currency between file I/O, the engine and the front ends.

Conventions (those of ITK / SimpleITK, so files round-trip without conversion):

- ``array`` is in ITK's array order: (z, y, x) for 3-D, (y, x) for 2-D, as
  ``SimpleITK.GetArrayFromImage`` returns it.
- ``spacing``, ``origin`` and ``direction`` are in ITK's index order (x, y, z), in millimetres, in the
  patient's LPS frame (x to the patient's Left, y to Posterior, z to Superior). ``direction`` is the
  row-major ``ndim x ndim`` matrix whose column *i* is the physical direction of index axis *i*.
- A voxel at index (i, j, k) = (x, y, z) lies at ``origin + direction @ (spacing * index)``.
- ``metadata`` is JSON-serialisable: the file's description, DICOM tags of interest, and for
  synthetic results the provenance that marks them as such.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GeometryMismatchError, InvalidVolumeError

# Tolerances for "same voxel grid": spacing and origin in mm, direction cosines unitless.
GRID_ATOL_MM = 1e-4
DIRECTION_ATOL = 1e-5


@dataclass
class Volume:
    """A scalar 2-D or 3-D image with spacing, origin and direction (see the module docstring)."""

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.dtype == bool:
            # Masks are label maps of 0/1; file formats have no boolean voxel type.
            array = array.astype(np.uint8)
        self.array = array
        ndim = array.ndim
        if ndim not in (2, 3):
            raise InvalidVolumeError(
                f"expected a 2-D or 3-D scalar volume, got an array of shape {array.shape}; "
                "split 4-D (time or channel) series into one volume per frame or channel"
            )
        if np.iscomplexobj(array) or not (
            np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
        ):
            raise InvalidVolumeError(
                f"voxel type {array.dtype} is not supported; use integer or floating-point voxels "
                "(take the magnitude of complex MR data first)"
            )
        if min(array.shape) < 1:
            raise InvalidVolumeError(f"the volume is empty (shape {array.shape})")
        self.spacing = tuple(float(v) for v in self.spacing)
        self.origin = tuple(float(v) for v in self.origin)
        self.direction = tuple(float(v) for v in self.direction)
        if len(self.spacing) != ndim or len(self.origin) != ndim or len(self.direction) != ndim * ndim:
            raise InvalidVolumeError(
                f"geometry does not fit a {ndim}-D array: spacing {self.spacing}, origin {self.origin}, "
                f"direction with {len(self.direction)} entries (need {ndim}, {ndim} and {ndim * ndim})"
            )
        if not all(np.isfinite(self.spacing)) or min(self.spacing) <= 0:
            raise InvalidVolumeError(
                f"voxel spacing must be positive and finite, got {self.spacing} mm; "
                "fix the file's header (pixdim / PixelSpacing) before using it"
            )
        if not all(np.isfinite(self.origin)):
            raise InvalidVolumeError(f"origin must be finite, got {self.origin}")
        matrix = self.direction_matrix
        if not np.allclose(matrix.T @ matrix, np.eye(ndim), atol=1e-3):
            raise InvalidVolumeError(
                f"direction {self.direction} is not a rotation (its columns must be orthonormal); "
                "the file's orientation header is damaged"
            )
        self.require_finite()

    def require_finite(self, what: str = "volume") -> None:
        """Refuse NaN or infinite voxels, naming how many: checked when a Volume is made and again when a
        run starts (an array can be changed in place after that). Nothing is replaced silently: a filled
        value would be synthesized around as if it were anatomy."""
        if np.issubdtype(self.array.dtype, np.floating) and not np.isfinite(self.array).all():
            bad = int(np.count_nonzero(~np.isfinite(self.array)))
            raise InvalidVolumeError(
                f"the {what} holds {bad:,} NaN or infinite voxels; replace them (e.g. with the background "
                "value) before generating or inpainting"
            )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: Any, metadata: dict[str, Any] | None = None) -> Volume:
        """Wrap a SimpleITK image (the array is copied out of ITK's buffer)."""
        import SimpleITK as sitk

        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidVolumeError(
                f"the image has {image.GetNumberOfComponentsPerPixel()} components per voxel (RGB or "
                "vector); convert it to a single grey-scale channel first"
            )
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            metadata=dict(metadata or {}),
        )

    def to_sitk(self) -> Any:
        """A SimpleITK image with the same voxels and geometry."""
        import SimpleITK as sitk

        array = self.array
        if array.dtype.kind == "f" and array.dtype not in (np.float32, np.float64):
            # ITK has no half (or extended) precision voxels: float16 from a network becomes float32.
            array = array.astype(np.float32 if array.dtype.itemsize < 4 else np.float64)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def with_array(self, array: np.ndarray, metadata: dict[str, Any] | None = None) -> Volume:
        """A new volume on the same voxel grid (shape must match)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise GeometryMismatchError(
                f"array of shape {array.shape} does not fit this volume's grid {self.array.shape}"
            )
        return Volume(
            array=array,
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction,
            metadata=copy.deepcopy(self.metadata) if metadata is None else metadata,
        )

    # -- geometry -----------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def direction_matrix(self) -> np.ndarray:
        n = len(self.spacing)
        return np.asarray(self.direction, dtype=float).reshape(n, n)

    @property
    def is_label_map(self) -> bool:
        """Integer voxels: a label map or mask rather than intensities."""
        return bool(np.issubdtype(self.array.dtype, np.integer))

    def index_to_physical(self, index_xyz: np.ndarray) -> np.ndarray:
        """Physical LPS point(s) in mm of continuous index(es) given in ITK (x, y, z) order."""
        index_xyz = np.asarray(index_xyz, dtype=float)
        return np.asarray(self.origin) + (index_xyz * np.asarray(self.spacing)) @ self.direction_matrix.T

    def same_grid(self, other: Volume) -> bool:
        """True when both volumes have the same shape, spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=GRID_ATOL_MM)
            and np.allclose(self.origin, other.origin, atol=GRID_ATOL_MM)
            and np.allclose(self.direction, other.direction, atol=DIRECTION_ATOL)
        )

    def require_same_grid(self, other: Volume, what: str = "label map", ref: str = "image") -> None:
        """Raise GeometryMismatchError naming the first difference between the two grids."""
        if self.same_grid(other):
            return
        for name, a, b in (
            ("shape", self.shape, other.shape),
            ("spacing", self.spacing, other.spacing),
            ("origin", self.origin, other.origin),
            ("direction", self.direction, other.direction),
        ):
            if name == "shape" and a != b or name != "shape" and not np.allclose(a, b, atol=GRID_ATOL_MM):
                raise GeometryMismatchError(
                    f"the {what}'s {name} {tuple(np.round(b, 4)) if name != 'shape' else b} differs from "
                    f"the {ref}'s {tuple(np.round(a, 4)) if name != 'shape' else a}; resample the {what} "
                    f"onto the {ref}'s grid or paint it on a layer made from the {ref}"
                )
        raise GeometryMismatchError(f"the {what} is not on the {ref}'s voxel grid")

    def content_hash(self) -> str:
        """SHA-256 of voxels and geometry: identifies an input in provenance records."""
        digest = hashlib.sha256()
        digest.update(str(self.array.dtype).encode())
        digest.update(str(self.array.shape).encode())
        digest.update(np.ascontiguousarray(self.array).tobytes())
        digest.update(np.asarray(self.spacing + self.origin + self.direction).tobytes())
        return digest.hexdigest()
