"""The one adapter between a `Volume` and napari layer data: geometry in physical space.

napari places a layer's data index ``j`` (in the layer's axis order) at world point
``affine @ (scale * j + translate)``. We make napari's world the patient's physical space in
millimetres, LPS as in ITK, with world axes in array order: (z, y, x) for 3-D, (y, x) for 2-D. So
world axis 0 runs inferior -> superior, axis 1 anterior -> posterior, axis 2 right -> left, and an
axial slice shows anterior at the top and the patient's left on the right (radiological view).

To keep napari's slicing axis-aligned, the adapter shows the volume in the engine's canonical
orientation (`engine.orientation`: array axes permuted and flipped, as views, so that each layer axis
follows the world axis closest to it); only the remaining oblique rotation, if any, goes into
``affine``. The volume's own geometry and the permutation ride in
``layer.metadata['medgen_geometry']`` so that a layer, or a Labels layer painted on it, goes back to
disk on exactly the source's grid, never re-derived from floating-point layer transforms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .engine.errors import GeometryMismatchError, InvalidVolumeError, MedgenError
from .engine.orientation import canonical_axes, orient_array, to_canonical, unorient_array
from .engine.volume import Volume

GEOMETRY_KEY = "medgen_geometry"
# Residual rotations closer to identity than this are dropped rather than passed as an affine.
_IDENTITY_ATOL = 1e-6


def layer_transform(volume: Volume) -> dict[str, Any]:
    """``scale``, ``translate``, ``affine`` and ``metadata`` for a layer showing `volume`."""
    n = volume.ndim
    axes, flips = canonical_axes(volume.direction_matrix)
    canonical = to_canonical(volume)
    rotation_zyx = canonical.direction_matrix[::-1, ::-1]
    origin_zyx = np.asarray(canonical.origin[::-1])
    scale = np.asarray(canonical.spacing[::-1])
    metadata = {
        GEOMETRY_KEY: {
            "shape": list(volume.shape),
            "spacing": list(volume.spacing),
            "origin": list(volume.origin),
            "direction": list(volume.direction),
            "display_axes": axes,
            "display_flips": flips,
        }
    }
    if np.allclose(rotation_zyx, np.eye(n), atol=_IDENTITY_ATOL):
        return {"scale": scale, "translate": origin_zyx, "affine": None, "metadata": metadata}
    affine = np.eye(n + 1)
    affine[:n, :n] = rotation_zyx
    # world = R (scale * j + translate) = R scale j + origin  =>  translate = R^-1 origin. Not R^T: a
    # direction read from a file (NIfTI keeps it in float32) is orthonormal only to ~1e-7, enough to
    # move a voxel 100 mm from the origin by ~1e-5 mm.
    return {
        "scale": scale,
        "translate": np.linalg.solve(rotation_zyx, origin_zyx),
        "affine": affine,
        "metadata": metadata,
    }


def volume_to_layer_data(volume: Volume, layer_type: str | None = None, name: str | None = None) -> tuple:
    """A napari LayerDataTuple ``(data, kwargs, layer_type)`` showing `volume` in physical space."""
    if layer_type is None:
        layer_type = "labels" if volume.is_label_map and "synthetic" not in volume.metadata else "image"
    transform = layer_transform(volume)
    geometry = transform["metadata"][GEOMETRY_KEY]
    data = orient_array(volume.array, geometry["display_axes"], geometry["display_flips"])
    metadata = {k: v for k, v in volume.metadata.items() if k != GEOMETRY_KEY}
    metadata.update(transform["metadata"])
    kwargs: dict[str, Any] = {"scale": transform["scale"], "translate": transform["translate"], "metadata": metadata}
    if transform["affine"] is not None:
        kwargs["affine"] = transform["affine"]
    if name:
        kwargs["name"] = name
    return data, kwargs, layer_type


def layer_to_volume(
    data: np.ndarray,
    scale: Any = None,
    translate: Any = None,
    affine: Any = None,
    metadata: dict[str, Any] | None = None,
) -> Volume:
    """The inverse of `volume_to_layer_data`: layer data (and its transforms) back to a `Volume`.

    With the reference geometry in `metadata` (layers made by this plugin, and Labels layers made
    for them) the result is on exactly the source's grid. Without it (a layer napari made), the
    geometry is derived from the layer's scale, translate and affine.
    """
    data = np.asarray(data)
    metadata = dict(metadata or {})
    geometry = metadata.pop(GEOMETRY_KEY, None)
    if geometry is not None:
        array = unorient_array(data, geometry["display_axes"], geometry["display_flips"])
        if list(array.shape) != list(geometry["shape"]):
            raise GeometryMismatchError(
                f"layer data of shape {data.shape} does not fit its source grid {tuple(geometry['shape'])}; "
                "make a new Labels layer from the image"
            )
        return Volume(
            array=np.ascontiguousarray(array),
            spacing=geometry["spacing"],
            origin=geometry["origin"],
            direction=geometry["direction"],
            metadata=metadata,
        )
    n = data.ndim
    scale_zyx = np.ones(n) if scale is None else np.asarray(scale, dtype=float)
    translate_zyx = np.zeros(n) if translate is None else np.asarray(translate, dtype=float)
    matrix = np.eye(n + 1) if affine is None else np.asarray(affine, dtype=float)
    if matrix.shape == (n, n):
        matrix = np.block([[matrix, np.zeros((n, 1))], [np.zeros((1, n)), np.ones((1, 1))]])
    if scale_zyx.shape != (n,) or translate_zyx.shape != (n,) or matrix.shape != (n + 1, n + 1):
        raise GeometryMismatchError(
            f"layer data of shape {data.shape} does not fit its transforms (scale {scale_zyx.tolist()}, "
            f"translate {translate_zyx.tolist()}, affine of shape {matrix.shape}); only scalar 2-D or 3-D "
            "layers can be saved as volumes"
        )
    linear, shift = matrix[:n, :n], matrix[:n, n]
    # world = L (scale j + translate) + shift; L may carry a scale of its own: fold it into spacing.
    column_norms = np.linalg.norm(linear, axis=0)
    if not np.all(np.isfinite(linear)) or np.any(column_norms == 0) or np.any(scale_zyx == 0):
        raise GeometryMismatchError(
            f"the layer's transforms are degenerate (scale {scale_zyx.tolist()}, affine {matrix.tolist()}): an axis "
            "has no extent in the world; give the layer a non-zero scale"
        )
    spacing_zyx = scale_zyx * column_norms
    # A negative scale is napari's way to flip an axis: the flip goes into the direction, spacing stays positive.
    rotation_zyx = linear / column_norms * np.sign(spacing_zyx)
    spacing_zyx = np.abs(spacing_zyx)
    origin_zyx = linear @ translate_zyx + shift
    return Volume(
        array=np.ascontiguousarray(data),
        spacing=tuple(spacing_zyx[::-1]),
        origin=tuple(origin_zyx[::-1]),
        direction=tuple(rotation_zyx[::-1, ::-1].ravel()),
        metadata=metadata,
    )


def napari_layer_to_volume(layer: Any) -> Volume:
    """`layer_to_volume` for a napari layer object (Image or Labels); an error names the layer."""
    if getattr(layer, "rgb", False):
        raise InvalidVolumeError(
            f"layer {layer.name!r} is an RGB colour picture, not a scan; open the scan itself, or convert the "
            "layer to one grey-scale channel first"
        )
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data  # full resolution
    try:
        return layer_to_volume(
            np.asarray(data),
            scale=layer.scale,
            translate=layer.translate,
            affine=layer.affine.affine_matrix,
            metadata=layer.metadata,
        )
    except MedgenError as error:  # say which layer (NaN voxels, a grid that does not fit, ...)
        raise type(error)(f"layer {layer.name!r}: {error}") from None


def layer_kwargs_like(layer: Any) -> dict[str, Any]:
    """Transforms and reference geometry that put a new layer exactly on `layer`'s grid."""
    kwargs = {
        "scale": np.array(layer.scale),
        "translate": np.array(layer.translate),
        "affine": np.array(layer.affine.affine_matrix),
    }
    if GEOMETRY_KEY in layer.metadata:
        kwargs["metadata"] = {GEOMETRY_KEY: dict(layer.metadata[GEOMETRY_KEY])}
    return kwargs


def volume_like_layer(data: np.ndarray, reference: Any) -> Volume:
    """A Volume for `data` drawn on `reference`'s grid (a region or label layer of the same shape)."""
    data = np.asarray(data)
    if data.shape != tuple(reference.data.shape):
        raise GeometryMismatchError(
            f"the layer's shape {data.shape} does not match the image layer's {tuple(reference.data.shape)}; "
            "make the label or region layer from the image (the painter does this)"
        )
    return layer_to_volume(
        np.array(data, copy=True),
        scale=reference.scale,
        translate=reference.translate,
        affine=reference.affine.affine_matrix,
        metadata={GEOMETRY_KEY: reference.metadata[GEOMETRY_KEY]} if GEOMETRY_KEY in reference.metadata else {},
    )


def layer_data_for_volume(volume: Volume, layer: Any) -> np.ndarray:
    """`volume`, which is on `layer`'s own grid (as `napari_layer_to_volume(layer)` gave it), as new data
    for that layer: in the layer's array order, so it shows in the same place with the layer's transforms."""
    geometry = layer.metadata.get(GEOMETRY_KEY)
    if geometry is None:
        return np.asarray(volume.array)
    return np.asarray(orient_array(volume.array, geometry["display_axes"], geometry["display_flips"]))


def same_placement(layer: Any, reference: Any) -> bool:
    """True when two layers put the same data index at the same world point (scale, translate, affine)."""
    pairs = (
        (np.asarray(layer.scale, float), np.asarray(reference.scale, float)),
        (np.asarray(layer.translate, float), np.asarray(reference.translate, float)),
        (np.asarray(layer.affine.affine_matrix, float), np.asarray(reference.affine.affine_matrix, float)),
    )
    return all(a.shape == b.shape and np.allclose(a, b, rtol=1e-7, atol=1e-6) for a, b in pairs)


def volume_for_image_layer(layer: Any, image_layer: Any, resample_allowed: bool) -> Volume:
    """A Labels layer (a region or anatomy) as a Volume to use with `image_layer`'s scan.

    A layer made for the image (same shape, same place in the world) is taken on the image's exact
    grid. Any other layer keeps its own geometry, so that the engine resamples it (a region,
    `resample_allowed`) or refuses it as not lining up (a label map) instead of silently taking the
    image's grid and landing in the wrong place. A label map of another shape is refused here.
    """
    same_shape = tuple(layer.data.shape) == tuple(image_layer.data.shape)
    if (same_shape and same_placement(layer, image_layer)) or (not same_shape and not resample_allowed):
        return volume_like_layer(layer.data, image_layer)  # the shape check and its message live there
    volume = napari_layer_to_volume(layer)
    return volume.with_array(np.array(volume.array, copy=True), metadata={})


def shapes_to_region(shapes_layer: Any, image_layer: Any, slice_index: int) -> np.ndarray:
    """A region mask, in `image_layer`'s data, from the shapes drawn on slice `slice_index` (axis 0).

    Shape vertices go through world coordinates, so shapes and image may have different transforms.
    """
    from skimage.draw import polygon

    shape = tuple(image_layer.data.shape)
    mask = np.zeros(shape, bool)
    for vertices in shapes_layer.data:
        world = np.array([shapes_layer.data_to_world(v) for v in vertices])
        index = np.array([image_layer.world_to_data(w) for w in world])
        if len(shape) == 3:
            rr, cc = polygon(index[:, -2], index[:, -1], shape[-2:])
            mask[slice_index, rr, cc] = True
        else:
            rr, cc = polygon(index[:, -2], index[:, -1], shape)
            mask[rr, cc] = True
    return mask
