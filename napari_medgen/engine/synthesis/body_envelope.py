"""The body envelope label (MAISI's 200) where a label map lacks it.

MAISI's CT ControlNet learned label maps in which every body voxel no organ label covers carries the body
label; without it the model sees air everywhere outside the organs and the result degrades badly (its own
validator warns of exactly this). Where the card declares a body label and the map has none, it is added:
from the scan when one is given (voxels above an air threshold, holes filled per axial slice, the largest
connected part), else from the painted labels' hull (the convex hull of the labelled voxels, per axial
slice), an approximation of the body outline that the caller is told about.
"""

from __future__ import annotations

import numpy as np

from ..orientation import canonical_axes, orient_array, unorient_array
from ..volume import Volume

AIR_THRESHOLD_HU = -500.0


def add_body_envelope(
    label_map: Volume, body_label: int, scan: Volume | None = None, threshold: float = AIR_THRESHOLD_HU
) -> tuple[Volume, str]:
    """`label_map` with `body_label` on the body's unlabelled voxels, and a notice saying so ('' when the
    map already has the label, or nothing could be added)."""
    labels = np.asarray(label_map.array)
    if (labels == body_label).any() or not labels.any():
        return label_map, ""
    if labels.ndim != 3:
        return label_map, ""
    axes, flips = canonical_axes(label_map.direction_matrix)
    canonical = orient_array(labels, axes, flips)  # axis 0 is axial
    if scan is not None and scan.same_grid(label_map):
        body = _body_from_scan(orient_array(np.asarray(scan.array, np.float32), axes, flips), canonical > 0, threshold)
        how = f"the scan (voxels above {threshold:g} HU, holes filled per axial slice)"
    else:
        body = _body_from_hull(canonical > 0)
        how = "the convex hull of the painted labels on each axial slice (an approximation of the body outline)"
    add = body & (canonical == 0)
    if not add.any():
        return label_map, ""
    out = canonical.copy()
    out[add] = body_label
    dtype = np.promote_types(labels.dtype, np.min_scalar_type(body_label))
    array = np.ascontiguousarray(unorient_array(out, axes, flips)).astype(dtype)
    notice = (
        f"the label map had no body label {body_label}, which this model expects on every unlabelled body voxel; "
        f"added it on {int(add.sum()):,} voxels from {how}"
    )
    return label_map.with_array(array, metadata=dict(label_map.metadata)), notice


def _body_from_hull(labelled: np.ndarray) -> np.ndarray:
    from skimage.morphology import convex_hull_image

    body = np.zeros_like(labelled)
    for z in range(labelled.shape[0]):
        if labelled[z].sum() >= 3:
            body[z] = convex_hull_image(labelled[z])
        else:
            body[z] = labelled[z]
    return body


def _body_from_scan(scan: np.ndarray, labelled: np.ndarray, threshold: float) -> np.ndarray:
    from scipy import ndimage

    body = (scan > threshold) | labelled
    for z in range(body.shape[0]):
        body[z] = ndimage.binary_fill_holes(body[z])
    parts, count = ndimage.label(body)
    if count > 1:  # the largest connected part: the patient, not the table or noise
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        body = (parts == int(sizes.argmax())) | labelled
    return body
