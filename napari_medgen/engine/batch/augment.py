"""Seeded augmentation of a label map: the known truth of a synthetic case.

Every transform keeps the label map's grid (shape, spacing, origin, direction), so the image generated
for it and the label map written beside it share one geometry, and keeps label values (nearest
neighbour only, pasted values from the schema):

- `elastic`: a smooth random warp in physical space (a cubic B-spline on a coarse mesh, displacements in
  mm) composed with a mild similarity (rotation, isotropic scale) about the anatomy's centre: heads of
  other sizes and shapes. SimpleITK does the resampling.
- `flip`: left-right in physical space (the patient's x axis in LPS), mirrored about the anatomy's
  mid-plane, with probability one half.
- `lesion`: one or two irregular blobs of one schema class pasted inside the anatomy (the schema's
  lesion / tumour class when it has one, else another tissue than the one they land in).

The same seed gives the same label map, on any machine: the record of what was applied goes to the
case's sidecar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import MedgenError
from ..model.labels import LabelSchema
from ..volume import Volume

AUGMENTATIONS = ("elastic", "flip", "lesion")

# Class names that make a schema's "lesion" class (pasted in preference to a tissue).
LESION_NAMES = ("lesion", "tumor", "tumour", "metastasis", "nodule", "cyst", "haemorrhage", "hemorrhage")


@dataclass(frozen=True)
class AugmentOptions:
    """Which transforms a case gets, and how strong they are (physical units)."""

    elastic: bool = True
    flip: bool = True
    lesion: bool = False
    control_spacing_mm: float = 40.0  # B-spline mesh spacing: the size of the bumps
    displacement_mm: tuple[float, float] = (1.5, 4.0)  # per case, the coefficients' standard deviation
    rotation_deg: float = 6.0  # up to this about each axis
    scale: tuple[float, float] = (0.92, 1.08)  # isotropic
    flip_probability: float = 0.5
    lesion_count: tuple[int, int] = (1, 2)
    lesion_radius_mm: tuple[float, float] = (3.0, 10.0)
    lesion_label: int | str | None = None  # None: the schema's lesion class, else a tissue unlike its surroundings

    @classmethod
    def parse(cls, text: str | None) -> AugmentOptions:
        """'elastic,flip,lesion' (any subset, or 'none') -> options."""
        names = [n.strip().lower() for n in (text or "").split(",") if n.strip()]
        if names == ["none"]:
            names = []
        unknown = [n for n in names if n not in AUGMENTATIONS]
        if unknown:
            raise MedgenError(
                f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)} (comma-separated) or none"
            )
        return cls(elastic="elastic" in names, flip="flip" in names, lesion="lesion" in names)

    def names(self) -> list[str]:
        return [n for n in AUGMENTATIONS if getattr(self, n)]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Augmented:
    """A label map after augmentation, with the record of what was done to it."""

    label_map: Volume
    record: dict[str, Any] = field(default_factory=dict)


def augment_label_map(
    label_map: Volume, schema: LabelSchema, options: AugmentOptions, seed: int | tuple[int, ...]
) -> Augmented:
    """The label map under the transforms `options` asks for, drawn from `seed`; same grid, schema values only."""
    rng = np.random.default_rng(seed if isinstance(seed, int) else list(seed))
    array = np.asarray(label_map.array)
    record: dict[str, Any] = {"seed": seed if isinstance(seed, int) else list(seed), "applied": []}
    background = 0
    if options.elastic:
        array, params = _elastic(label_map.with_array(array, metadata={}), options, rng, background)
        record["applied"].append("elastic")
        record["elastic"] = params
    if options.flip:
        flipped = bool(rng.random() < options.flip_probability)
        record["flip_left_right"] = flipped
        if flipped:
            array = _flip_left_right(label_map.with_array(array, metadata={}), background)
            record["applied"].append("flip")
    if options.lesion:
        array, pasted = _paste_lesions(label_map.with_array(array, metadata={}), schema, options, rng, background)
        record["lesions"] = pasted
        if pasted:
            record["applied"].append("lesion")
    array = np.ascontiguousarray(array.astype(label_map.array.dtype, copy=False))
    return Augmented(label_map.with_array(array, metadata={}), record)


# -- the transforms -------------------------------------------------------------------------------------
def _foreground_centre(volume: Volume, background: int) -> np.ndarray:
    """Physical centre (x, y[, z]) of the anatomy (voxels not background), or of the grid when empty."""
    inside = np.argwhere(volume.array != background)
    index_zyx = inside.mean(axis=0) if len(inside) else (np.asarray(volume.shape, float) - 1) / 2
    return volume.index_to_physical(np.asarray(index_zyx)[::-1])


def _elastic(volume: Volume, options: AugmentOptions, rng: np.random.Generator, background: int) -> tuple[np.ndarray, dict]:
    import SimpleITK as sitk

    image = volume.to_sitk()
    ndim = volume.ndim
    centre = _foreground_centre(volume, background)
    # Similarity about the anatomy's centre: a small rotation and an isotropic scale.
    angles = rng.uniform(-options.rotation_deg, options.rotation_deg, 3 if ndim == 3 else 1)
    scale = float(rng.uniform(*options.scale))
    affine = sitk.AffineTransform(ndim)
    affine.SetCenter(tuple(float(c) for c in centre))
    affine.SetMatrix(tuple((_rotation(np.deg2rad(angles), ndim) / scale).ravel()))  # maps output points to input
    # The B-spline's mesh covers the grid's physical extent with about control_spacing_mm between nodes.
    extent = np.asarray(volume.shape[::-1]) * np.asarray(volume.spacing)
    mesh = [max(1, round(float(e) / options.control_spacing_mm)) for e in extent]
    bspline = sitk.BSplineTransformInitializer(image, mesh, order=3)
    sigma = float(rng.uniform(*options.displacement_mm))
    count = len(bspline.GetParameters())
    bspline.SetParameters(tuple(rng.normal(0.0, sigma, count)))  # displacement coefficients, in mm
    composite = sitk.CompositeTransform([bspline, affine])  # applied last to first: affine, then the warp
    warped = sitk.Resample(image, image, composite, sitk.sitkNearestNeighbor, background, image.GetPixelID())
    params = {"rotation_deg": [round(float(a), 3) for a in angles], "scale": round(scale, 4),
              "bspline_mesh": mesh, "displacement_sd_mm": round(sigma, 3), "centre_mm": [round(float(c), 2) for c in centre]}
    return sitk.GetArrayFromImage(warped), params


def _rotation(angles: np.ndarray, ndim: int) -> np.ndarray:
    if ndim == 2:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    rx, ry, rz = angles
    x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def _flip_left_right(volume: Volume, background: int) -> np.ndarray:
    """Mirror the anatomy about its own left-right mid-plane (the LPS x axis), on the same grid.

    On a grid whose x axis runs along an index axis (the usual case) the mid-plane is put on a voxel
    centre or half-way between two, so every voxel lands exactly on another and nothing is resampled;
    an oblique grid is resampled (nearest neighbour) through the mirror.
    """
    import SimpleITK as sitk

    matrix = volume.direction_matrix
    axis = int(np.argmax(np.abs(matrix[0])))  # the index axis (x, y, z order) closest to the patient's x
    aligned = np.isclose(abs(matrix[0, axis]), 1.0, atol=1e-6)
    centre = _foreground_centre(volume, background)
    if aligned:
        inside = np.argwhere(volume.array != background)
        array_axis = volume.ndim - 1 - axis  # numpy's order is reversed
        mid = (inside[:, array_axis].min() + inside[:, array_axis].max()) / 2 if len(inside) else (volume.shape[array_axis] - 1) / 2
        mid = round(2 * mid) / 2
        source = np.rint(2 * mid - np.arange(volume.shape[array_axis])).astype(int)
        valid = (source >= 0) & (source < volume.shape[array_axis])
        out = np.full_like(volume.array, background)
        take = np.take(volume.array, source[valid], axis=array_axis)
        index = [slice(None)] * volume.ndim
        index[array_axis] = np.flatnonzero(valid)
        out[tuple(index)] = take
        return out
    image = volume.to_sitk()
    mirror = sitk.AffineTransform(volume.ndim)
    mirror.SetCenter(tuple(float(c) for c in centre))
    mirror.SetMatrix(tuple(np.diag([-1.0] + [1.0] * (volume.ndim - 1)).ravel()))
    return sitk.GetArrayFromImage(sitk.Resample(image, image, mirror, sitk.sitkNearestNeighbor, background, image.GetPixelID()))


def lesion_class(schema: LabelSchema, wanted: int | str | None) -> int | None:
    """The class to paste: the one asked for, else the schema's lesion class, else None (a tissue per blob)."""
    if isinstance(wanted, str):
        return schema.index_of(wanted)
    if isinstance(wanted, int):
        if wanted not in schema.indices or wanted == 0:
            raise MedgenError(f"lesion label {wanted} is not a non-background class of the model's schema {schema.indices}")
        return wanted
    for c in schema.classes:
        if c.index != 0 and any(word in c.name.lower() for word in LESION_NAMES):
            return c.index
    return None


def _paste_lesions(
    volume: Volume, schema: LabelSchema, options: AugmentOptions, rng: np.random.Generator, background: int
) -> tuple[np.ndarray, list[dict]]:
    """Irregular blobs (an ellipsoid with a noisy boundary, in mm) of one class, inside the anatomy only."""
    from scipy.ndimage import gaussian_filter

    array = np.array(volume.array, copy=True)
    inside = np.argwhere(array != background)
    fixed = lesion_class(schema, options.lesion_label)
    tissues = [i for i in schema.indices if i != background]
    pasted: list[dict] = []
    if not len(inside) or not tissues:
        return array, pasted
    spacing_zyx = np.asarray(volume.spacing[::-1])
    for _ in range(int(rng.integers(options.lesion_count[0], options.lesion_count[1] + 1))):
        centre = inside[int(rng.integers(len(inside)))]
        radii_mm = rng.uniform(*options.lesion_radius_mm, size=volume.ndim)
        reach = np.ceil(radii_mm.max() * 1.5 / spacing_zyx).astype(int)
        low = np.maximum(centre - reach, 0)
        high = np.minimum(centre + reach + 1, array.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
        grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
        offsets_mm = np.stack([(g - c) * s for g, c, s in zip(grids, centre, spacing_zyx, strict=True)], axis=-1)
        rotation = _rotation(rng.uniform(0, np.pi, 3 if volume.ndim == 3 else 1), volume.ndim)
        distance = np.sqrt((((offsets_mm @ rotation.T) / radii_mm) ** 2).sum(axis=-1))
        wobble = gaussian_filter(rng.normal(0.0, 1.0, distance.shape), sigma=max(1.0, reach.min() / 3))
        wobble /= max(float(np.abs(wobble).max()), 1e-6)
        blob = (distance + 0.3 * wobble) <= 1.0
        region = array[box]
        blob &= region != background  # only inside the anatomy: the outline stays as it was
        if not blob.any():
            continue
        if fixed is not None:
            value = fixed
        else:  # a tissue unlike what the blob lands in, so the paste changes the anatomy
            present = np.bincount(region[blob].ravel().astype(np.int64))
            host = int(np.argmax(present))
            choices = [t for t in tissues if t != host] or tissues
            value = int(choices[int(rng.integers(len(choices)))])
        region[blob] = value
        pasted.append({"label": int(value), "centre_index_zyx": [int(c) for c in centre],
                       "radii_mm": [round(float(r), 2) for r in radii_mm], "voxels": int(blob.sum())})
    return array, pasted
