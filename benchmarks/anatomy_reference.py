"""The reference that `anatomy_accuracy.py` measures labels from a scan against: ANTs SyN (antspyx), optional.

The same atlas as the demo model's (the shipped ICBM152 T1, background set to 0, and its tissue labels), registered
to the same scan with ``ants.registration(type_of_transform="SyN")`` (affine then SyN, its defaults), the labels
carried over by nearest neighbour: no tissue model, as the issue that asked for it measured it. `syn_labels` is
None when antspyx is not installed (``pip install antspyx``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from napari_medgen.engine.volume import Volume


def available() -> bool:
    try:
        import ants  # noqa: F401
    except ImportError:
        return False
    return True


def _to_ants(volume: Volume, dtype: Any = np.float32) -> Any:
    import ants

    return ants.from_numpy(
        np.ascontiguousarray(np.asarray(volume.array).transpose(2, 1, 0).astype(dtype)),
        origin=tuple(float(v) for v in volume.origin),
        spacing=tuple(float(v) for v in volume.spacing),
        direction=np.asarray(volume.direction, float).reshape(3, 3),
    )


def syn_labels(scan: Volume, atlas_t1: Volume, atlas_labels: Volume) -> tuple[np.ndarray, float] | None:
    """(labels on the scan's grid, wall seconds) from ANTs SyN, or None without antspyx."""
    if not available():
        return None
    import ants

    started = time.perf_counter()
    brain_only = atlas_t1.with_array(np.where(atlas_labels.array > 0, atlas_t1.array, 0).astype(np.float32))
    fixed = _to_ants(scan)
    registration = ants.registration(fixed, _to_ants(brain_only), type_of_transform="SyN")
    moved = ants.apply_transforms(
        fixed, _to_ants(atlas_labels), registration["fwdtransforms"], interpolator="nearestNeighbor"
    )
    labels = np.rint(moved.numpy()).astype(np.uint8).transpose(2, 1, 0)
    return labels, round(time.perf_counter() - started, 1)
