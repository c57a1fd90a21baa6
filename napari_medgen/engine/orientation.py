"""Canonical orientation: the array axes permuted and flipped (no resampling) to follow LPS.

After `to_canonical`, array axis 0/1/2 (z, y, x) runs inferior->superior, anterior->posterior and
right->left as closely as the scan allows; only a truly oblique acquisition keeps a residual
rotation in its direction. The engine slices 2-D models along canonical axis 0 (axial), and the
napari front shows layers in the same axes, so "the current slice" means the same thing to both.
"""

from __future__ import annotations

import itertools

import numpy as np

from .volume import Volume

# The canonical array axis each plane's slices are cut across (z, y, x: inferior-superior, anterior-posterior,
# right-left); a slice keeps the other two axes in array order (axial: y, x; coronal: z, x; sagittal: z, y).
PLANE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


def canonical_axes(direction: np.ndarray) -> tuple[list[int], list[bool]]:
    """For each canonical axis (array order), the source array axis it takes and whether it is flipped.

    `direction` is ITK's (x, y, z) matrix; the permutation maximises alignment with the world axes.
    """
    n = direction.shape[0]
    rotation_zyx = direction[::-1, ::-1]  # row: world axis, column: array axis, both in (z, y, x)
    best = max(
        itertools.permutations(range(n)),
        key=lambda perm: sum(abs(rotation_zyx[world, axis]) for world, axis in enumerate(perm)),
    )
    flips = [bool(rotation_zyx[world, axis] < 0) for world, axis in enumerate(best)]
    return list(best), flips


def orient_array(array: np.ndarray, axes: list[int], flips: list[bool]) -> np.ndarray:
    """Source array -> canonical array (a view)."""
    view = np.transpose(array, axes)
    for axis, flip in enumerate(flips):
        if flip:
            view = np.flip(view, axis)
    return view


def unorient_array(canonical: np.ndarray, axes: list[int], flips: list[bool]) -> np.ndarray:
    """Canonical array -> source array order (a view); the inverse of `orient_array`."""
    view = canonical
    for axis, flip in enumerate(flips):
        if flip:
            view = np.flip(view, axis)
    return np.transpose(view, np.argsort(axes))


def to_canonical(volume: Volume) -> Volume:
    """The same voxels, same physical places, with array axes in canonical order (exact, no resampling)."""
    axes, flips = canonical_axes(volume.direction_matrix)
    n = volume.ndim
    first_voxel_zyx = np.array([volume.shape[axis] - 1 if flip else 0 for axis, flip in zip(axes, flips, strict=True)])
    # Index (source array order) of the voxel that becomes canonical index 0.
    source_index_zyx = np.zeros(n)
    for canonical_axis, axis in enumerate(axes):
        source_index_zyx[axis] = first_voxel_zyx[canonical_axis]
    origin = volume.index_to_physical(source_index_zyx[::-1])
    rotation_zyx = volume.direction_matrix[::-1, ::-1]
    canonical_rotation_zyx = np.stack(
        [rotation_zyx[:, axis] * (-1.0 if flip else 1.0) for axis, flip in zip(axes, flips, strict=True)], axis=1
    )
    spacing_zyx = np.asarray(volume.spacing[::-1])[axes]
    return Volume(
        array=orient_array(volume.array, axes, flips),
        spacing=tuple(spacing_zyx[::-1]),
        origin=tuple(origin),
        direction=tuple(canonical_rotation_zyx[::-1, ::-1].ravel()),
        metadata=volume.metadata,
    )
