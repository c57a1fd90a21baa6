"""`generate` and `inpaint`: volumes in, volumes out, same geometry.

Both check their inputs at once (raising the project's errors, before any thread or progress bar
exists) and return generators: these yield `ProgressEvent`s (a step count and, every few steps, a
preview of the current estimate in the output's own grid) and return a list of result volumes, one
per variant. Closing the generator stops the work before the next network call.

The work happens on the model grid (`model_grid`): the input in canonical orientation, resampled to
the model's spacing (in-plane only for 2-D models, which go slice by slice along the axial axis with
the slice position as a condition), padded to what the UNet's down-sampling needs. Results are
resampled back onto the input's exact grid. Inpainting works only on a box around the region (plus a
context margin) and copies every voxel outside the region from the input unchanged; generation, for a card
that names its background label, only on a box around the anatomy (the rest of the output is the background).
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from typing import Any

import numpy as np

from ..errors import TaskNotSupportedError
from ..intensity import intensity_map_for
from ..model.card import ModelCard
from ..model.loading import LoadedModel, load_model
from ..orientation import to_canonical
from ..volume import Volume
from .inputs import check_fractions, check_label_map, inpaint_inputs
from .model_grid import (
    anatomy_box, as_2d, as_3d, axial_slab, crop, inpaint_crop, problem_on_model_grid, slice_positions,
)
from .options import ProgressEvent, SamplingOptions, resolve_options
from .own_grid import generation_grid
from .continued_anatomy import harmonised_guide
from .planes import settle_planes, tri_planar_positions
from .run import run_task
from .tasks import GenerateTask, InpaintTask


def generate(
    model: LoadedModel | str | None,
    label_map: Volume | None,
    options: SamplingOptions | None = None,
    slice_range: tuple[int, int] | None = None,
    tissue_fractions: list[Volume] | None = None,
    **option_overrides: Any,
) -> Generator[ProgressEvent, None, list[Volume]]:
    """Synthesize images that follow `label_map`, in its exact geometry; one per variant.

    `slice_range` (canonical axial slices, as napari shows them) limits a 3-D run to those slices,
    and the results then cover just those slices. `tissue_fractions`, for a model trained on them
    (``conditioning.tissue_fractions``), are each class's share of every voxel (classes 1, 2, ... in the
    schema's order, on the label map's grid: a segmentation's probability maps): the network is then told
    how much of a voxel at a boundary is each tissue, which the hard labels cannot say. A model that takes no
    label map generates on `label_map`'s grid, or with None on its own (`own_grid.generation_grid` gives others).
    """
    loaded, options = _model_for("generate", model, options, option_overrides)
    card = loaded.card
    if label_map is None:
        label_map = generation_grid(card)
    if card.latent is not None:  # latent models (MAISI, MONAI bundles): their own path
        if tissue_fractions is not None:
            raise TaskNotSupportedError(f"model {card.name} takes hard labels only, not tissue fractions")
        from .latent import generate_latent

        return generate_latent(loaded, label_map, options, slice_range)
    label_map.require_finite("label map")
    check_label_map(card, label_map)
    if tissue_fractions is not None:
        check_fractions(card, tissue_fractions, label_map)
    whole = to_canonical(as_3d(label_map))
    slab, offset = axial_slab(whole, slice_range)
    planes, why = settle_planes(card, options.planes, slab)
    # the network runs only on the anatomy and a margin of background around it
    box = anatomy_box(card, whole, (offset, offset + slab.shape[0]), all_axes=planes == "tri")
    canonical = slab if box is None else crop(slab, box)
    starts = (offset, 0, 0) if box is None else (offset + box[0].start, box[1].start, box[2].start)
    fractions = None
    if tissue_fractions is not None:
        fractions = [axial_slab(to_canonical(as_3d(f)), slice_range)[0] for f in tissue_fractions]
        fractions = fractions if box is None else [crop(f, box) for f in fractions]
    if planes == "tri":
        planes, why = settle_planes(card, planes, canonical)
    problem = problem_on_model_grid(card, canonical, labels=canonical, known=None, region=None, intensity=None,
                                    fractions=fractions, isotropic=planes == "tri")
    if card.spatial_dims == 2:
        problem.positions = slice_positions(canonical.shape[0], starts[0], whole.shape[0])
    problem.slice_offset = starts[0]
    _set_planes(card, problem, planes, why, canonical, starts, whole.shape)
    options = _with_planes(options, planes)
    inputs = {"label_map": label_map.content_hash()}
    if tissue_fractions is not None:
        inputs.update({f"tissue_fractions_{k}": f.content_hash() for k, f in enumerate(tissue_fractions, start=1)})
    task = GenerateTask.for_label_map(card, problem, canonical, label_map, inputs, whole_volume=slice_range is None,
                                      slab=slab, box=box)
    return run_task(loaded, task, options)


def inpaint(
    model: LoadedModel | str | None,
    image: Volume,
    region: Volume,
    label_map: Volume | None = None,
    options: SamplingOptions | None = None,
    **option_overrides: Any,
) -> Generator[ProgressEvent, None, list[Volume]]:
    """Regenerate the voxels of `image` inside `region`; every voxel outside is kept bit for bit.

    `label_map` (optional, on the image's grid) says what anatomy to put inside the region. Only a
    box around the region plus `options.context_mm` is processed; the seam is feathered over
    `options.feather_mm` inside the region.
    """
    loaded, options = _model_for("inpaint", model, options, option_overrides)
    card = loaded.card
    if card.latent is not None:
        from .latent import inpaint_latent

        return inpaint_latent(loaded, image, region, label_map, options)
    region, inputs = inpaint_inputs(card, image, region, label_map)
    # tri-planar where the whole image allows it: the box then takes context along z too
    planes, why = settle_planes(card, options.planes, to_canonical(as_3d(image)))
    crop = inpaint_crop(card, image, region, label_map, options.context_mm, all_axes=planes == "tri")
    intensity = intensity_map_for(card.normalization, np.asarray(image.array, dtype=np.float32))
    intensity, anatomy = harmonised_guide(card, intensity, crop, options.continue_anatomy)
    if planes == "tri":
        planes, why = settle_planes(card, planes, crop.image)
    problem = problem_on_model_grid(card, crop.image, crop.labels, crop.image, crop.region, intensity,
                                    isotropic=planes == "tri")
    if card.spatial_dims == 2:
        problem.positions = slice_positions(crop.image.shape[0], crop.box[0].start, crop.canonical_image.shape[0])
        problem.slice_offset = crop.box[0].start
    _set_planes(card, problem, planes, why, crop.image, tuple(b.start for b in crop.box), crop.canonical_image.shape)
    options = _estimate_options(card, _with_planes(options, planes), crop.region, problem.by_repaint)
    task = InpaintTask.on_crop(card, problem, image, region, crop, inputs, options, anatomy)
    return run_task(loaded, task, options)


def _set_planes(card: ModelCard, problem, planes: str, why: str, crop: Volume, offsets: tuple[int, ...],
                whole_shape: tuple[int, ...]) -> None:
    """Record on the problem how its slices are cut (and, tri-planar, each slice's position per plane)."""
    problem.planes, problem.planes_why = planes, why
    if planes == "tri":
        problem.plane_positions = tri_planar_positions(problem.grid.shape, card.spacing_mm[0], crop, offsets, whole_shape)


def _with_planes(options: SamplingOptions, planes: str) -> SamplingOptions:
    """The options as the run goes: the planes it samples (axial where a thin volume could not go tri-planar)."""
    if options.planes == planes:
        return options
    settled = copy.copy(options)
    settled.planes = planes
    return settled


def output_template(source: Volume, slice_range: tuple[int, int] | None = None) -> Volume:
    """An empty float volume on the grid a run's result will have (for a front end's preview layer).

    `source` is the label map (generate) or the image (inpaint); `slice_range` as in `generate`.
    """
    if slice_range is None:
        return source.with_array(np.zeros(source.shape, np.float32), metadata={})
    part, _ = axial_slab(to_canonical(as_3d(source)), slice_range)
    part = part.with_array(np.zeros(part.shape, np.float32), metadata={})
    return part if source.ndim == 3 else as_2d(part)


def _model_for(
    task: str, model: LoadedModel | str | None, options: SamplingOptions | None, overrides: dict[str, Any]
) -> tuple[LoadedModel, SamplingOptions]:
    """The loaded model and the checked options (the card's guidance where none was asked for) for `task`."""
    options = resolve_options(options, overrides)  # a bad option fails before a model is loaded
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if task not in loaded.card.tasks:
        raise TaskNotSupportedError(
            f"model {loaded.card.name} does not {task} (it does: {', '.join(loaded.card.tasks)})"
        )
    return loaded, resolve_options(options, {}, loaded.card)


def region_thickness_mm(region: Volume) -> float:
    """Twice the largest distance (mm) from a region voxel to the nearest voxel outside it: how far an
    inpainting must reach from the known image (a 10 mm ball: about 10; a long 4 mm stripe: about 4)."""
    from scipy.ndimage import distance_transform_edt

    inside = np.asarray(region.array) > 0  # nothing is known beyond the volume's edge
    if inside.all():
        return float("inf")
    if region.ndim == 3 and region.shape[0] == 1:  # one slice: distances within it
        return 2.0 * float(distance_transform_edt(inside[0], sampling=region.spacing[1::-1]).max())
    return 2.0 * float(distance_transform_edt(inside, sampling=region.spacing[::-1]).max())


def _estimate_options(card: ModelCard, options: SamplingOptions, region: Volume, by_repaint: bool) -> SamplingOptions:
    """The options an inpainting runs with once `inpaint_estimate` is settled. Models that predict the image
    or v give the mean's draws in one network call each (their image estimate from pure noise is the posterior
    mean given the conditions); noise-predicting ones and RePaint need the whole walk per draw, so "auto"
    takes the mean (for thin regions, where fidelity matters more than texture) only where it is cheap."""
    one_call = not by_repaint and card.scheduler.prediction_type != "epsilon"
    estimate = options.inpaint_estimate
    if estimate == "auto":
        thin = one_call and region_thickness_mm(region) <= options.small_region_mm
        estimate = "mean" if thin else "sample"
    resolved = copy.copy(options)
    resolved.inpaint_estimate = estimate
    if estimate == "mean" and one_call:
        resolved.steps, resolved.sampler = 1, "ddim"
    return resolved
