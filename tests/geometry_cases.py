"""Volumes with non-trivial geometry for the foundation tests (I/O, layer adapter, napari reader/writers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_medgen.engine.volume import Volume

# A typical anisotropic scan: fine in-plane, thick slices.
SPACING = (0.7, 0.7, 2.5)
ORIGIN = (-91.25, 12.5, -37.75)
SHAPE_ZYX = (5, 7, 9)
ALL_FORMATS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
# NIfTI stores geometry as float32 (and direction as a quaternion): it round-trips to ~1e-5.
FLOAT32_FORMATS = (".nii", ".nii.gz")


def rotation(seed: int, ndim: int = 3, proper: bool = True) -> np.ndarray:
    """A random orthonormal matrix, det +1 (proper) or -1 (a rotation with a flip)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


# Directions (ITK's row-major (x, y, z) matrices) that the adapter must place exactly.
DIRECTIONS = {
    "identity": np.eye(3),
    # The MNI152 template's RAS+ identity seen in ITK's LPS: x and y flipped.
    "lps_flip_xy": np.diag([-1.0, -1.0, 1.0]),
    "single_flip": np.diag([1.0, -1.0, 1.0]),
    # Sagittal acquisition: array axes permuted against the patient axes.
    "permutation": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    "permutation_flip": np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
    # A slightly tilted axial scan (gantry tilt style), then fully random oblique ones.
    "tilted": np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]]
    ),
    "oblique_1": rotation(1),
    "oblique_2": rotation(2),
    "oblique_improper": rotation(3, proper=False),
}


def unique_voxels(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Every voxel a distinct value, so a voxel can be found again wherever the axes went."""
    return np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(dtype)


def make_volume(
    direction: np.ndarray | None = None,
    shape: tuple[int, ...] = SHAPE_ZYX,
    dtype=np.float32,
    spacing: tuple[float, ...] = SPACING,
    origin: tuple[float, ...] = ORIGIN,
    metadata: dict | None = None,
) -> Volume:
    ndim = len(shape)
    direction = np.eye(ndim) if direction is None else np.asarray(direction)
    return Volume(
        array=unique_voxels(shape, dtype) if np.dtype(dtype).kind == "f" else _label_voxels(shape, dtype),
        spacing=spacing[:ndim],
        origin=origin[:ndim],
        direction=tuple(direction.ravel()),
        metadata=dict(metadata or {}),
    )


def _label_voxels(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Integer voxels spanning the type's range where they can (negative values for signed types)."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    low = max(info.min, -1000)
    high = min(info.max, 60000)
    array = rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    array.flat[0] = low
    array.flat[-1] = high
    return array


def listing(folder: Path) -> dict[str, bytes]:
    """Every file in a folder (recursively) with its bytes: to show that nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
