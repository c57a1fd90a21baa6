"""Classical label-map editing for painting anatomy (remapping, filling gaps between slices), and tissue
fractions on a grid."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from .errors import InvalidVolumeError, LabelSchemaError
from .model.labels import LabelSchema
from .resample import Grid, resample
from .volume import Volume


def check_fraction_values(fraction: Volume, name: str) -> None:
    """A tissue fraction map holds finite values in 0..1 (a map in percent or 0-255 would be read as all 1)."""
    fraction.require_finite(name)
    low, high = float(fraction.array.min()), float(fraction.array.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise InvalidVolumeError(
            f"{name} holds values from {low:g} to {high:g}; fractions lie in 0..1 (a probability map in percent or "
            "0-255 needs rescaling)"
        )


def fractions_on_grid(maps: list[Volume], grid: Grid, channels: int) -> np.ndarray:
    """(channels, z, y, x) tissue fractions on `grid` from the fraction maps of classes 1 .. channels - 1.

    Resampled linearly (a fraction is an average over the voxel); where the classes' fractions sum past 1
    (resampling overshoot, maps that do not quite add up) they are scaled to 1; the background, class 0,
    takes what is left. Outside the maps the voxel is all background.
    """
    if len(maps) != channels - 1:
        raise LabelSchemaError(f"{len(maps)} tissue fraction maps given; the model has {channels - 1} classes besides background")
    shares = np.stack([np.clip(resample(m, grid, "linear").array.astype(np.float32), 0.0, 1.0) for m in maps])
    shares /= np.maximum(shares.sum(axis=0), 1.0)
    return np.concatenate([1.0 - shares.sum(axis=0, keepdims=True), shares]).astype(np.float32)


def remap_labels(label_map: np.ndarray, mapping: dict[int, int], schema: LabelSchema) -> np.ndarray:
    """Map source label values onto the schema's; values not in `mapping` become background (0).

    Raises LabelSchemaError if a target is not in the schema.
    """
    unknown = sorted({v for v in mapping.values() if v not in schema.indices})
    if unknown:
        raise LabelSchemaError(f"target labels {unknown} are not in the model's schema ({schema.indices})")
    lookup = np.zeros(int(max(label_map.max(), max(mapping, default=0))) + 1, dtype=np.uint16)
    for source, target in mapping.items():
        if source >= 0:
            lookup[source] = target
    out = lookup[np.clip(label_map, 0, None).astype(np.int64)]
    return out.astype(schema.label_dtype)


def parse_mapping(text: str) -> dict[int, int]:
    """'1:2, 4:3' -> {1: 2, 4: 3}; a clear error for anything else."""
    mapping: dict[int, int] = {}
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            source, target = (int(v) for v in part.split(":"))
        except ValueError:
            raise LabelSchemaError(f"cannot read {part.strip()!r}; write the mapping as source:target pairs, e.g. 1:2, 4:3") from None
        mapping[source] = target
    return mapping


def _signed_distance(mask: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """Positive inside, negative outside, in mm."""
    if not mask.any():
        return np.full(mask.shape, -1e6)
    inside = distance_transform_edt(mask, sampling=sampling)
    outside = distance_transform_edt(~mask, sampling=sampling)
    return inside - outside


def interpolate_between_slices(label_map: np.ndarray, label: int, spacing_yx: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Voxels to fill so a structure painted on some slices (axis 0) spans the slices between them.

    Between consecutive painted slices the shape is the zero level of the linearly blended signed
    distance maps (shape-based interpolation). Only background voxels of unpainted slices are
    returned, so other structures are never overwritten. Returns a boolean mask.
    """
    painted = [z for z in range(label_map.shape[0]) if (label_map[z] == label).any()]
    fill = np.zeros(label_map.shape, bool)
    for z0, z1 in zip(painted, painted[1:], strict=False):
        if z1 - z0 < 2:
            continue
        d0 = _signed_distance(label_map[z0] == label, spacing_yx)
        d1 = _signed_distance(label_map[z1] == label, spacing_yx)
        for z in range(z0 + 1, z1):
            w = (z - z0) / (z1 - z0)
            fill[z] = ((1 - w) * d0 + w * d1 > 0) & (label_map[z] == 0)
    return fill
