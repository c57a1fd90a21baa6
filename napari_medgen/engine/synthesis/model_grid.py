"""The run's inputs on the model's grid, and the geometry between that grid and the user's volumes.

Three grids take part in a run: the user's volume (any orientation); the *input crop*, the part of it
the run covers (all of it, a slice range, or a box around an inpainting region) in canonical
orientation on the input's own spacing; and the *model grid*, that crop resampled to the model's
spacing (in-plane only for 2-D models) and padded to what the UNet's down-sampling needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import memory
from ..errors import GeometryMismatchError, InvalidVolumeError, MedgenError, RegionError
from ..intensity import IntensityMap, intensity_map_for
from ..label_tools import fractions_on_grid
from ..model.card import ModelCard
from ..orientation import canonical_axes, to_canonical, unorient_array
from ..resample import Grid, grid_at_spacing, resample
from ..volume import Volume


@dataclass
class ModelGridProblem:
    """The run's inputs on the model grid (array order z, y, x; 2-D volumes have z = 1), padded."""

    grid: Grid
    labels: np.ndarray | None  # uint16, the schema's indices
    known: np.ndarray | None  # the known image, normalised to [-1, 1]
    region: np.ndarray | None  # True = generate, False = keep
    positions: np.ndarray | None = None  # per slice, in [0, 1] (2-D models)
    pad: tuple[int, ...] = ()
    intensity: IntensityMap = field(default_factory=lambda: IntensityMap(0.0, 1.0))
    # Canonical index of the crop's first slice in the whole volume: per-slice noise is keyed by it, so a
    # slice range or an inpainting box gets the same noise as a run over the whole volume.
    slice_offset: int = 0
    # Inpainting with a model that has no known-image inputs: RePaint's resampling walk.
    by_repaint: bool = False
    # (classes, z, y, x) tissue fractions, given in place of the labels' one-hot to a model trained on them.
    fractions: np.ndarray | None = None
    # 2-D models: "axial" (slice by slice) or "tri" (the whole volume on an isotropic grid, the planes in turn,
    # each slice's position along the axis it cuts in `plane_positions`); why a tri-planar run went axial.
    planes: str = "axial"
    planes_why: str = ""
    plane_positions: dict[str, np.ndarray] | None = None

    @property
    def unpadded_shape(self) -> tuple[int, ...]:
        return tuple(s - p for s, p in zip(self.grid.shape, self.pad, strict=True))

    def to_intensities(self, estimate: np.ndarray, input_crop: Volume) -> Volume:
        """A normalised estimate on the model grid -> intensities on the input crop's grid."""
        unpadded = estimate[tuple(slice(0, s) for s in self.unpadded_shape)]
        on_model_grid = Volume(self.intensity.inverse(unpadded), self.grid.spacing, self.grid.origin, self.grid.direction)
        return resample(on_model_grid, Grid.of(input_crop), "linear", default_value=float(self.intensity.low))


def problem_on_model_grid(
    card: ModelCard,
    input_crop: Volume,
    labels: Volume | None,
    known: Volume | None,
    region: Volume | None,
    intensity: IntensityMap | None,
    fractions: list[Volume] | None = None,
    isotropic: bool = False,
) -> ModelGridProblem:
    """Resample the crop's label map (and tissue fraction maps), known image and region onto the model grid,
    padded for the UNet. `isotropic` (tri-planar sampling): a 2-D model's spacing along all three axes, and
    every axis padded, since each is cut into slices."""
    if card.spatial_dims == 2 and isotropic:
        spacing = (card.spacing_mm[0],) * 3
    elif card.spatial_dims == 2:
        spacing = (card.spacing_mm[0], card.spacing_mm[1], input_crop.spacing[2])
    else:
        spacing = tuple(card.spacing_mm)
    grid = grid_at_spacing(input_crop, spacing)
    voxels = int(np.prod(grid.size))
    if voxels > memory.MAX_WORK_VOXELS:
        raise InvalidVolumeError(
            f"the volume needs {voxels:,} voxels at the model's spacing, more than the memory budget of "
            f"{memory.MAX_WORK_VOXELS:,}; crop it to the region of interest or raise NAPARI_MEDGEN_MAX_VOXELS"
        )
    intensity = intensity or intensity_map_for(card.normalization, None)
    # uint16 (the schema caps label indices at 65535): the working copy of a whole volume costs a quarter
    # of int64's memory (3-D scaling: 5.2 -> 2.6 bytes of peak per output byte); batches widen in one_hot.
    labels_m = resample(labels, grid, "nearest").array.astype(np.uint16) if labels is not None else None
    known_m = intensity.forward(resample(known, grid, "linear").array) if known is not None else None
    region_m = resample(region, grid, "nearest").array.astype(bool) if region is not None else None
    if region_m is not None and not region_m.any():
        region_m = voxels_touched(region, grid)
    divisor = card.downsampling_factor
    pad = [(0, 0)] * 3
    for axis in (1, 2) if card.spatial_dims == 2 and not isotropic else (0, 1, 2):
        size = grid.shape[axis]
        pad[axis] = (0, int(np.ceil(max(size, 8) / divisor) * divisor) - size)
    padded_shape = tuple(s + p[1] for s, p in zip(grid.shape, pad, strict=True))
    fractions_m = None
    if fractions is not None:
        fractions_m = np.pad(fractions_on_grid(fractions, grid, card.num_label_channels), [(0, 0)] + pad)
        fractions_m[0] = 1.0 - fractions_m[1:].sum(axis=0)  # the padding is background
    return ModelGridProblem(
        fractions=fractions_m,
        grid=Grid(tuple(padded_shape[::-1]), grid.spacing, grid.origin, grid.direction),
        labels=np.pad(labels_m, pad, constant_values=0) if labels_m is not None else None,
        known=np.pad(known_m, pad, constant_values=-1.0) if known_m is not None else None,
        region=np.pad(region_m, pad, constant_values=False) if region_m is not None else None,
        pad=tuple(p[1] for p in pad),
        intensity=intensity,
        by_repaint=region is not None and not card.conditioning.known_image,
    )


def voxels_touched(region: Volume, grid: Grid) -> np.ndarray:
    """The voxels of `grid` that hold the centre of some region voxel (any dimension, vectorised).

    A region thinner than the grid's voxels still covers the voxels it falls in.
    """
    out = np.zeros(grid.shape, bool)
    index_zyx = np.argwhere(region.array > 0)
    if index_zyx.size == 0:
        return out
    points = region.index_to_physical(index_zyx[:, ::-1].astype(float))
    direction = np.asarray(grid.direction, dtype=float).reshape(len(grid.size), len(grid.size))
    continuous = ((points - np.asarray(grid.origin)) @ direction) / np.asarray(grid.spacing)
    target = np.rint(continuous).astype(np.int64)
    inside = np.all((target >= 0) & (target < np.asarray(grid.size)), axis=1)
    out[tuple(target[inside][:, ::-1].T)] = True
    return out


def slice_positions(count: int, offset: int, total: int) -> np.ndarray:
    """Each slice's place along the axial axis of the whole volume, in [0, 1] (a 2-D model's condition)."""
    return (np.arange(count) + offset) / max(total - 1, 1)


def region_box(
    region: Volume, context_mm: float, card: ModelCard, all_axes: bool = False, tile_fraction: float = 1.0
) -> tuple[slice, ...]:
    """The region's bounding box, widened by `context_mm` and to at least `tile_fraction` of a training tile.

    In-plane only for 2-D models, unless `all_axes` (tri-planar sampling cuts every axis into slices). The tile floor matters: a network with group normalisation and
    attention judges a crop by its statistics, and one much smaller than the crops it was trained on
    gets them wrong (brain-t1-demo, a 10 mm region: PSNR 11.5 dB in a 16 mm-context box, 16.5 dB in a
    training-tile-sized one).
    """
    where = np.argwhere(region.array > 0)
    low, high = where.min(0), where.max(0) + 1
    spacing = np.asarray(region.spacing[::-1], dtype=float)  # array order (z, y, x)
    margin = np.ceil(context_mm / spacing).astype(int)
    tile_mm = np.asarray(card.tile_size[::-1], float) * np.asarray(card.spacing_mm[::-1], float)
    tile_vox = np.ceil(tile_fraction * tile_mm / spacing[-len(tile_mm):]).astype(int)
    floor = np.zeros(3, int)
    floor[-len(tile_vox):] = tile_vox
    if card.spatial_dims == 2 and all_axes:  # a coronal or sagittal slice's height is along z
        floor[0] = tile_vox[0]
    elif card.spatial_dims == 2:
        margin[0] = 0
    low, high = low - margin, high + margin
    short = np.maximum(floor - (high - low), 0)  # grow evenly to the tile's extent, then shift inside the image
    low, high = low - short // 2, high + (short - short // 2)
    shape = np.asarray(region.shape)
    shift_up = np.maximum(-low, 0)
    low, high = low + shift_up, high + shift_up
    shift_down = np.maximum(high - shape, 0)
    low, high = np.maximum(low - shift_down, 0), np.minimum(high - shift_down, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


# How much background around the anatomy a generation runs the network on (mm). Beyond it every output voxel is
# the card's background whatever the network says, so the rest of the grid is work for nothing (the sample brain's
# box is 0.6 of its volume); within it the network sees the brain's edge with the context it was trained with.
ANATOMY_CONTEXT_MM = 12.0
# The box is at least this share of a training tile: the demo models learned on whole slices and on crops down to
# a third of one (brain-t1-demo-fast, the sample brain: a whole-tile floor kept every in-plane voxel, 13.5 s; half
# a tile cut them to 0.75, 10.3 s, with the realism figures within 0.06 of each other).
ANATOMY_TILE_FRACTION = 0.5


def anatomy_box(
    card: ModelCard, whole: Volume, slab: tuple[int, int], all_axes: bool, context_mm: float = ANATOMY_CONTEXT_MM
) -> tuple[slice, ...] | None:
    """The box of the canonical label map `whole`'s axial slices `slab` (start, stop) that a generation runs the
    network on: its anatomy (voxels not the card's background label), grown to at least `ANATOMY_TILE_FRACTION` of
    a training tile (`region_box`) and widened by `context_mm` within the volume (across slices only where the
    network sees across them: tri-planar or 3-D). In-plane it is the whole volume's box, so a slice range is cut
    as the whole volume is and its slices come out the same. None where there is nothing to leave out: no background label, no anatomy, or the whole slab."""
    background = card.normalization.background_label
    if background is None or card.conditioning.label_map == "none":
        return None
    anatomy = np.asarray(whole.array) != background
    if not anatomy.any():
        return None
    all_axes = all_axes or card.spatial_dims == 3  # a 3-D network needs the context across slices too
    box = list(region_box(whole.with_array(anatomy.astype(np.uint8), metadata={}), 0.0, card, all_axes,
                          tile_fraction=ANATOMY_TILE_FRACTION))
    # the margin clipped at the volume's edge (not shifted inwards as an inpainting's tile is: more background
    # on the far side is work for nothing); slice by slice, none across the slices
    margin = np.ceil(context_mm / np.asarray(whole.spacing[::-1], float)).astype(int)
    for axis in range(3) if all_axes else (1, 2):
        box[axis] = slice(max(box[axis].start - int(margin[axis]), 0), min(box[axis].stop + int(margin[axis]), whole.shape[axis]))
    start, stop = max(box[0].start, slab[0]), min(box[0].stop, slab[1])
    # slices of the slab beyond the anatomy's box are all background; a slab with no anatomy keeps its slices
    box[0] = slice(start - slab[0], stop - slab[0]) if start < stop else slice(0, slab[1] - slab[0])
    if all(b.stop - b.start == n for b, n in zip(box, (slab[1] - slab[0],) + whole.shape[1:], strict=True)):
        return None
    return tuple(box)


@dataclass
class InpaintCrop:
    """What an inpainting works on: the image in canonical orientation, the box around the region (plus its
    context margin) in it, and the image's, region's and label map's crops to that box."""

    canonical_image: Volume
    box: tuple[slice, ...]
    image: Volume
    region: Volume
    labels: Volume | None


def inpaint_crop(
    card: ModelCard, image: Volume, region: Volume, label_map: Volume | None, context_mm: float, all_axes: bool = False
) -> InpaintCrop:
    """The crop of an inpainting: `region` and `label_map` on `image`'s grid, brought to canonical orientation
    (2-D volumes as one slice) and cut to the box `region_box` gives (context along every axis if `all_axes`)."""
    image3, region3 = to_canonical(as_3d(image)), to_canonical(as_3d(region))
    box = region_box(region3, context_mm, card, all_axes)
    labels = crop(to_canonical(as_3d(label_map)), box) if label_map is not None else None
    return InpaintCrop(image3, box, crop(image3, box), crop(region3, box), labels)


def axial_slab(canonical: Volume, slice_range: tuple[int, int] | None) -> tuple[Volume, int]:
    """`canonical` cut to the axial slices `slice_range` (checked against its slices), and the index of the
    first; the whole volume and 0 when no range is given."""
    if slice_range is None:
        return canonical, 0
    start, stop = int(slice_range[0]), int(slice_range[1])
    total = canonical.shape[0]
    if not 0 <= start < stop <= total:
        raise MedgenError(f"slice range {start}:{stop} is outside the volume's {total} slices")
    return crop(canonical, (slice(start, stop), slice(None), slice(None))), start


def crop(volume: Volume, box: tuple[slice, ...]) -> Volume:
    """A sub-volume (a copy) with its origin moved to the box's first voxel."""
    start = [s.start or 0 for s in box]
    origin = volume.index_to_physical(np.asarray(start[::-1], dtype=float))
    return Volume(np.ascontiguousarray(volume.array[box]), volume.spacing, tuple(origin), volume.direction, volume.metadata)


def region_on_image(region: Volume, image: Volume) -> Volume:
    """The region on the image's grid (resampled, nearest, if drawn on another grid); never empty."""
    if not region.is_label_map:
        region = region.with_array((region.array > 0.5).astype(np.uint8))
    if not region.array.any():
        raise RegionError("the inpainting region is empty; paint or draw the region to regenerate first")
    if not image.same_grid(region):
        if region.ndim != image.ndim:
            raise GeometryMismatchError(f"the region is {region.ndim}-D but the image is {image.ndim}-D")
        resampled = resample(region, Grid.of(image), "nearest")
        if not resampled.array.any():
            # Thinner than the image's voxels (a stroke between voxel centres): take the voxels
            # it falls in rather than losing it.
            resampled = resampled.with_array(voxels_touched(region, Grid.of(image)).astype(np.uint8))
        region = resampled
        if not region.array.any():
            raise RegionError(
                "the inpainting region lies outside the image; draw it on a layer made from this image"
            )
    return region.with_array((region.array > 0).astype(np.uint8), metadata={})


def feather_weights(region: np.ndarray, spacing_xyz: tuple[float, ...], feather_mm: float) -> np.ndarray:
    """1 deep inside the region, falling to 0 at its border over `feather_mm` (0 outside)."""
    if feather_mm <= 0:
        return region.astype(np.float32)
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(region, sampling=spacing_xyz[::-1])
    return np.clip(depth / feather_mm, 0.0, 1.0).astype(np.float32)


def as_3d(volume: Volume) -> Volume:
    """A 2-D volume as a 3-D one of one slice (identity through-plane); 3-D volumes as they are."""
    if volume.ndim == 3:
        return volume
    d = volume.direction_matrix
    direction = np.eye(3)
    direction[:2, :2] = d
    return Volume(
        volume.array[None], volume.spacing + (1.0,), volume.origin + (0.0,), tuple(direction.ravel()), volume.metadata
    )


def as_2d(volume: Volume) -> Volume:
    """A one-slice 3-D volume back to 2-D."""
    d = volume.direction_matrix[:2, :2]
    return Volume(volume.array[0], volume.spacing[:2], volume.origin[:2], tuple(d.ravel()), volume.metadata)


def back_to_source(canonical: Volume, source: Volume) -> Volume:
    """A canonical 3-D result back into `source`'s array order and exact geometry (float32)."""
    axes, flips = canonical_axes(as_3d(source).direction_matrix)
    array = np.ascontiguousarray(unorient_array(canonical.array, axes, flips)).astype(np.float32, copy=False)
    return source.with_array(array.reshape(source.shape), metadata={})
