"""The one resampler: SimpleITK, onto a target grid given by size, spacing, origin and direction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .volume import Volume


@dataclass(frozen=True)
class Grid:
    """A voxel grid in physical space, in ITK (x, y, z) order."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, volume: Volume) -> Grid:
        return cls(tuple(volume.shape[::-1]), volume.spacing, volume.origin, volume.direction)

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape (z, y, x)."""
        return tuple(self.size[::-1])


def grid_at_spacing(volume: Volume, spacing: tuple[float, ...]) -> Grid:
    """A grid with `spacing` covering the same physical extent as `volume`, centred on it."""
    old_spacing = np.asarray(volume.spacing)
    new_spacing = np.asarray(spacing, dtype=float)
    size_xyz = np.asarray(volume.shape[::-1])
    new_size = np.maximum(1, np.round(size_xyz * old_spacing / new_spacing)).astype(int)
    # Offset of the new first voxel centre from the old one, along the volume's own axes.
    shift = (new_spacing - old_spacing) / 2 + (size_xyz * old_spacing - new_size * new_spacing) / 2
    origin = np.asarray(volume.origin) + volume.direction_matrix @ shift
    return Grid(tuple(int(v) for v in new_size), tuple(new_spacing.tolist()), tuple(origin.tolist()), volume.direction)


def resample(volume: Volume, grid: Grid, interpolation: str = "linear", default_value: float = 0.0) -> Volume:
    """`volume` on `grid`: 'nearest' for label maps (values kept), 'linear' for images."""
    import SimpleITK as sitk

    if (
        tuple(grid.size) == tuple(volume.shape[::-1])
        and np.allclose(grid.spacing, volume.spacing, atol=1e-9)
        and np.allclose(grid.origin, volume.origin, atol=1e-9)
        and np.allclose(grid.direction, volume.direction, atol=1e-12)
    ):
        return volume.with_array(np.array(volume.array, copy=True))
    interpolator = {"nearest": sitk.sitkNearestNeighbor, "linear": sitk.sitkLinear}[interpolation]
    image = volume.to_sitk()
    if interpolation == "linear" and not np.issubdtype(volume.array.dtype, np.floating):
        image = sitk.Cast(image, sitk.sitkFloat32)
    out = sitk.Resample(
        image,
        [int(v) for v in grid.size],
        sitk.Transform(),
        interpolator,
        tuple(grid.origin),
        tuple(grid.spacing),
        tuple(grid.direction),
        float(default_value),
        image.GetPixelID(),
    )
    return Volume.from_sitk(out, dict(volume.metadata))
