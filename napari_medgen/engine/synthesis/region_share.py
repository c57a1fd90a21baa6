"""How much of the anatomy an inpainting region covers: a front end asks before regenerating most of a
scan (a region layer that is really the whole tissue map is an easy mistake to make)."""

from __future__ import annotations

import numpy as np

from ..volume import Volume


def anatomy_mask(image: Volume, label_map: Volume | None = None) -> np.ndarray:
    """The anatomy of a scan: the label map's non-background voxels when one is given (on the image's
    grid), else the scan's foreground (above Otsu's threshold of its finite values)."""
    if label_map is not None:
        return np.asarray(label_map.array) > 0
    from skimage.filters import threshold_otsu

    values = np.asarray(image.array, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.any() or np.ptp(values[finite]) == 0:
        return finite
    return finite & (values > threshold_otsu(values[finite]))


def region_share(image: Volume, region: Volume, label_map: Volume | None = None) -> float:
    """The share (0-1) of the anatomy's voxels that the region (non-zero voxels, on the image's grid)
    covers; of the whole image where the scan shows no anatomy."""
    inside = np.asarray(region.array) != 0
    anatomy = anatomy_mask(image, label_map)
    if inside.shape != anatomy.shape:
        raise ValueError(f"region {inside.shape} and image {anatomy.shape} are not on one grid")
    total = int(anatomy.sum())
    if total == 0:
        return float(inside.mean())
    return float((inside & anatomy).sum() / total)
