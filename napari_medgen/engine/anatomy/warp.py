"""The atlas carried onto the scan: spatial priors (smoothed one-hot labels, linear) and labels (nearest neighbour).

Everything is resampled onto a box of the scan's own grid around the brain (same spacing, direction and voxel
centres as the scan, so pasting it back is exact) through the atlas-to-scan transform, which maps scan
points to atlas points.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..resample import Grid
from ..volume import Volume


def one_hot_priors(atlas_labels: Any, classes: list[int], sigma_mm: float) -> Any:
    """A vector image in atlas space: per brain class (in `classes` order) its one-hot, Gaussian-smoothed (float32)."""
    import SimpleITK as sitk

    channels = []
    for value in classes:
        channel = sitk.Cast(atlas_labels == value, sitk.sitkFloat32)
        channels.append(sitk.SmoothingRecursiveGaussian(channel, sigma_mm) if sigma_mm > 0 else channel)
    return sitk.Compose(channels)


def warp_priors(priors: Any, transform: Any, reference: Any, floor: float) -> np.ndarray:
    """Class probabilities on `reference`'s grid, (1 + brain classes, z, y, x), background first.

    Background is what the brain classes leave. Inside the brain, each brain class keeps at least `floor` of
    the brain's probability, so the scan's intensities can overrule the atlas's tissue there (not whether a
    voxel is brain: that stays the atlas's, smoothed)."""
    import SimpleITK as sitk

    warped = sitk.Resample(priors, reference, transform, sitk.sitkLinear, 0.0, priors.GetPixelID())
    brain_classes = sitk.GetArrayFromImage(warped).astype(np.float32)  # (z, y, x, classes)
    brain_classes = np.moveaxis(np.clip(brain_classes, 0, 1), -1, 0)
    brain = np.clip(brain_classes.sum(axis=0), 0, 1)
    count = brain_classes.shape[0]
    brain_classes = (1 - floor * count) * brain_classes + floor * brain[None]
    return np.concatenate([(1 - brain)[None], brain_classes], axis=0)


def warp_labels(atlas_labels: Any, transform: Any, reference: Any) -> np.ndarray:
    """The atlas labels on `reference`'s grid, nearest neighbour (values kept)."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(
        sitk.Resample(atlas_labels, reference, transform, sitk.sitkNearestNeighbor, 0, atlas_labels.GetPixelID())
    )


def box_around(scan: Volume, mask: Any, margin_mm: float) -> tuple[tuple[slice, ...], Grid]:
    """The box of `scan`'s voxels (array slices, and the sub-grid) covering `mask` (on any grid) plus a margin."""
    import SimpleITK as sitk

    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return tuple(slice(0, n) for n in scan.shape), Grid.of(scan)
    x, y, z, sx, sy, sz = stats.GetBoundingBox(1)
    corners = [
        mask.TransformContinuousIndexToPhysicalPoint([float(cx), float(cy), float(cz)])
        for cx in (x - 0.5, x + sx - 0.5)
        for cy in (y - 0.5, y + sy - 0.5)
        for cz in (z - 0.5, z + sz - 0.5)
    ]
    points = np.asarray(corners)
    inverse = np.linalg.inv(scan.direction_matrix)
    index = ((points - np.asarray(scan.origin)) @ inverse.T) / np.asarray(scan.spacing)  # continuous (x, y, z)
    margin = margin_mm / np.asarray(scan.spacing)
    low = np.maximum(0, np.floor(index.min(axis=0) - margin)).astype(int)
    high = np.minimum(np.asarray(scan.shape[::-1]) - 1, np.ceil(index.max(axis=0) + margin)).astype(int)
    if np.any(high < low):
        return tuple(slice(0, n) for n in scan.shape), Grid.of(scan)
    origin = scan.index_to_physical(low.astype(float))
    grid = Grid(tuple(int(v) for v in high - low + 1), scan.spacing, tuple(origin.tolist()), scan.direction)
    slices = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(low[::-1], high[::-1], strict=True))
    return slices, grid


def grid_image(grid: Grid) -> Any:
    """An empty SimpleITK image on `grid` (a reference for resampling)."""
    import SimpleITK as sitk

    image = sitk.Image([int(v) for v in grid.size], sitk.sitkUInt8)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image
