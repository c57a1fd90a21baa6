"""The scan as registration sees it, its head mask, and where the atlas brain may sit in it to start with.

Clinical T1s hold skull, scalp, neck and sometimes shoulders, while the atlas is a brain only. Started
from the centres of the two images, the atlas lands in the middle of the head-and-neck, tens of millimetres
below the brain, and mutual information then settles for the wrong place. So the start is chosen among a
few placements of the atlas brain's centre, each refined briefly at coarse resolution, keeping the one
whose metric is best:

1. the centre of the head mask (a brain-only or skull-stripped scan, or a head without neck);
2. under the top of the head mask, by the atlas's own centre-to-vertex distance (a skull-stripped scan);
3. the same, a further 12 mm down (skull and scalp over the brain).

The head mask is the scan above Otsu's threshold, its largest connected part, closed and hole-filled.
"Top" is the superior end in physical space (+z in ITK's LPS), so this relies on a correct orientation
header; a scan whose header says the head is upside down or lying on its side fails here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidVolumeError
from ..resample import grid_at_spacing
from ..volume import Volume

SCALP_MM = 12.0  # skull and scalp over the vertex in an adult T1
SLAB_MM = 110.0  # the part of the head mask under its top whose centre gives the brain's left-right/front-back place


def working_image(scan: Volume, spacing_mm: float) -> Any:
    """The scan as float32 SimpleITK image no finer than `spacing_mm` per axis, smoothed before
    down-sampling, intensities clipped to the 0.5-99.5th percentiles of the non-zero voxels."""
    import SimpleITK as sitk

    array = np.asarray(scan.array, dtype=np.float32)
    nonzero = array[array != 0]
    if nonzero.size < 100 or float(nonzero.max() - nonzero.min()) <= 0:
        raise InvalidVolumeError("the scan is empty or constant; labels need a scan with anatomy in it")
    low, high = np.percentile(nonzero, [0.5, 99.5])
    clipped = np.clip(array, min(0.0, float(low)), float(high)).astype(np.float32)
    image = scan.with_array(clipped, metadata={}).to_sitk()
    target = tuple(max(s, spacing_mm) for s in scan.spacing)
    if np.allclose(target, scan.spacing):
        return image
    sigmas = [0.5 * np.sqrt(max(t**2 - s**2, 0.0)) for t, s in zip(target, scan.spacing, strict=True)]
    smooth = sitk.SmoothingRecursiveGaussian(image, sigmas) if max(sigmas) > 0 else image
    grid = grid_at_spacing(scan, target)
    return sitk.Resample(
        smooth,
        list(grid.size),
        sitk.Transform(),
        sitk.sitkLinear,
        grid.origin,
        grid.spacing,
        grid.direction,
        0.0,
        sitk.sitkFloat32,
    )


def head_mask(image: Any) -> Any:
    """The largest bright connected part of `image` (Otsu), closed and with its holes filled (uint8)."""
    import SimpleITK as sitk

    mask = sitk.OtsuThreshold(image, 0, 1)
    parts = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    mask = sitk.Cast(parts == 1, sitk.sitkUInt8)
    mask = sitk.BinaryMorphologicalClosing(mask, [2, 2, 2])
    return sitk.BinaryFillhole(mask)


def mask_points(mask: Any) -> np.ndarray:
    """Physical (x, y, z) points of a mask's voxels, (n, 3)."""
    import SimpleITK as sitk

    index_zyx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if index_zyx.size == 0:
        return np.zeros((0, 3))
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    return np.asarray(mask.GetOrigin()) + (index_zyx[:, ::-1] * np.asarray(mask.GetSpacing())) @ direction.T


def start_points(scan_head: Any, atlas_brain: Any) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """The atlas brain's centre and the candidate places for it in the scan (name, point), as above."""
    atlas_points = mask_points(atlas_brain)
    atlas_centre = atlas_points.mean(axis=0)
    centre_to_top = float(np.percentile(atlas_points[:, 2], 99.9) - atlas_centre[2])
    head = mask_points(scan_head)
    if len(head) < 100:
        raise InvalidVolumeError("no head found in the scan (nothing above the background); is it an MR of the head?")
    top = float(np.percentile(head[:, 2], 99.9))
    slab = head[head[:, 2] > top - SLAB_MM]
    across = slab[:, :2].mean(axis=0)
    return atlas_centre, [
        ("head centre", head.mean(axis=0)),
        ("under the top", np.array([across[0], across[1], top - centre_to_top])),
        ("under skull and scalp", np.array([across[0], across[1], top - centre_to_top - SCALP_MM])),
    ]
