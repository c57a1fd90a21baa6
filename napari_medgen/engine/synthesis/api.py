"""`generate` and `inpaint`: volumes in, volumes out, same geometry.

Both check their inputs at once (raising the project's errors, before any thread or progress bar
exists) and return generators: these yield `ProgressEvent`s (a step count and, every few steps, a
preview of the current estimate in the output's own grid) and return a list of result volumes, one
per variant. Closing the generator stops the work before the next network call.

The work happens on the model grid (`model_grid`): the input in canonical orientation, resampled to
the model's spacing (in-plane only for 2-D models, which go slice by slice along the axial axis with
the slice position as a condition), padded to what the UNet's down-sampling needs. Results are
resampled back onto the input's exact grid. Inpainting works only on a box around the region (plus a
context margin) and copies every voxel outside the region from the input unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Generator
from typing import Any

import numpy as np

from ..errors import InvalidVolumeError, LabelSchemaError, MedgenError, TaskNotSupportedError
from ..intensity import harmonised_map, intensity_map_for
from ..label_tools import check_fraction_values
from ..model.card import ModelCard
from ..model.loading import LoadedModel, load_model
from ..orientation import to_canonical
from ..volume import Volume
from .model_grid import (
    as_2d,
    as_3d,
    crop,
    problem_on_model_grid,
    region_box,
    region_on_image,
    slice_positions,
)
from .options import ProgressEvent, SamplingOptions, resolve_options
from .run import run_task
from .tasks import GenerateTask, InpaintTask


def generate(
    model: LoadedModel | str | None,
    label_map: Volume,
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
    how much of a voxel at a boundary is each tissue, which the hard labels cannot say.
    """
    loaded, options = _model_for("generate", model, options, option_overrides)
    card = loaded.card
    if card.latent is not None:  # latent models (MAISI, MONAI bundles): their own path
        if tissue_fractions is not None:
            raise TaskNotSupportedError(f"model {card.name} takes hard labels only, not tissue fractions")
        from .latent import generate_latent

        return generate_latent(loaded, label_map, options, slice_range)
    label_map.require_finite("label map")
    _check_label_map(loaded, label_map)
    if tissue_fractions is not None:
        _check_fractions(card, tissue_fractions, label_map)
    canonical = to_canonical(as_3d(label_map))
    fractions = [to_canonical(as_3d(f)) for f in tissue_fractions] if tissue_fractions is not None else None
    total_slices = canonical.shape[0]
    offset = 0
    if slice_range is not None:
        start, stop = _check_slice_range(slice_range, total_slices)
        box = (slice(start, stop), slice(None), slice(None))
        canonical = crop(canonical, box)
        fractions = [crop(f, box) for f in fractions] if fractions is not None else None
        offset = start
    problem = problem_on_model_grid(card, canonical, labels=canonical, known=None, region=None, intensity=None,
                                    fractions=fractions)
    if card.spatial_dims == 2:
        problem.positions = slice_positions(canonical.shape[0], offset, total_slices)
    problem.slice_offset = offset
    inputs = {"label_map": label_map.content_hash()}
    if tissue_fractions is not None:
        inputs.update({f"tissue_fractions_{k}": f.content_hash() for k, f in enumerate(tissue_fractions, start=1)})
    task = GenerateTask(
        name="generate",
        problem=problem,
        input_crop=canonical,
        inputs_sha256=inputs,
        label_map=label_map,
        whole_volume=slice_range is None,
        background=_background(card),
    )
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
    if image.is_label_map and image.metadata.get("label_map"):
        raise InvalidVolumeError("the image to inpaint is a label map; give the scan (intensities) instead")
    if image.is_label_map and image.array.min() >= 0 and image.array.max() <= 1:
        raise InvalidVolumeError(
            "the image to inpaint holds only 0 and 1 (a mask or a boolean volume, not a scan); give the scan "
            "(intensities) as the image and the mask as the region"
        )
    image.require_finite("image to inpaint")
    if card.spatial_dims == 3 and (image.ndim == 2 or min(image.shape) < 2):
        # As in `generate`: a 3-D model on a single slice would only see padding around it.
        raise InvalidVolumeError(f"model {card.name} is 3-D and needs a 3-D image with more than one slice")
    region_hash = region.content_hash()  # the region as given, not as resampled onto the image
    region = region_on_image(region, image)
    if label_map is not None:
        _check_label_map(loaded, label_map)
        image.require_same_grid(label_map, what="label map", ref="image")
    image3, region3 = to_canonical(as_3d(image)), to_canonical(as_3d(region))
    labels3 = to_canonical(as_3d(label_map)) if label_map is not None else None
    box = region_box(region3, options.context_mm, card)
    image_crop, region_crop = crop(image3, box), crop(region3, box)
    labels_crop = crop(labels3, box) if labels3 is not None else None
    intensity = intensity_map_for(card.normalization, np.asarray(image.array, dtype=np.float32))
    if labels_crop is not None:  # another scanner's contrast: tissue medians of the known voxels -> learned levels
        intensity = harmonised_map(card.normalization, intensity, np.asarray(image_crop.array, np.float32),
                                   labels_crop.array, region_crop.array == 0)
    problem = problem_on_model_grid(card, image_crop, labels_crop, image_crop, region_crop, intensity)
    if card.spatial_dims == 2:
        problem.positions = slice_positions(image_crop.shape[0], box[0].start, image3.shape[0])
        problem.slice_offset = box[0].start
    options = _estimate_options(card, options, region_crop, problem.by_repaint)
    inputs = {"image": image.content_hash(), "region": region_hash}
    if label_map is not None:
        inputs["label_map"] = label_map.content_hash()
    task = InpaintTask.on_crop(problem, image, region, image3, box, image_crop, region_crop, inputs, options,
                               background=_outside_anatomy(card, image_crop, labels_crop))
    return run_task(loaded, task, options)


def output_template(source: Volume, slice_range: tuple[int, int] | None = None) -> Volume:
    """An empty float volume on the grid a run's result will have (for a front end's preview layer).

    `source` is the label map (generate) or the image (inpaint); `slice_range` as in `generate`.
    """
    if slice_range is None:
        return source.with_array(np.zeros(source.shape, np.float32), metadata={})
    canonical = to_canonical(as_3d(source))
    start, stop = _check_slice_range(slice_range, canonical.shape[0])
    part = crop(canonical, (slice(start, stop), slice(None), slice(None)))
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


def _outside_anatomy(card: ModelCard, image_crop: Volume, labels_crop: Volume | None) -> np.ndarray | None:
    """The crop's voxels outside the anatomy: the label map's background label where a label map is given,
    else an MR image's voxels at or below the card's background value (a skull-stripped scan's zeros)."""
    norm = card.normalization
    if labels_crop is not None and norm.background_label is not None:
        return np.asarray(labels_crop.array) == norm.background_label
    if norm.kind == "mri_percentile":
        return np.asarray(image_crop.array) <= norm.background
    return None


def _background(card: ModelCard) -> tuple[int, float] | None:
    norm = card.normalization
    return None if norm.background_label is None else (norm.background_label, float(norm.background))


def _check_label_map(loaded: LoadedModel, label_map: Volume) -> None:
    card = loaded.card
    if not label_map.is_label_map:
        raise LabelSchemaError(
            "the label map holds non-integer values, so it looks like an image; give a label map (integers "
            "naming anatomy classes) or paint one in a Labels layer"
        )
    if label_map.ndim == 2 and card.spatial_dims == 3:
        raise InvalidVolumeError(f"model {card.name} is 3-D and needs a 3-D label map")
    card.label_schema.validate_label_map(label_map.array)


def _check_fractions(card: ModelCard, tissue_fractions: list[Volume], label_map: Volume) -> None:
    if not card.conditioning.tissue_fractions:
        raise TaskNotSupportedError(
            f"model {card.name} was trained on hard labels only; generate from the label map alone, or use a model "
            "whose card says conditioning.tissue_fractions"
        )
    wanted = card.num_label_channels - 1
    if len(tissue_fractions) != wanted:
        names = ", ".join(c.name for c in card.label_schema.classes if c.index > 0)
        raise LabelSchemaError(f"model {card.name} needs {wanted} tissue fraction maps ({names}), got {len(tissue_fractions)}")
    for k, fraction in enumerate(tissue_fractions, start=1):
        check_fraction_values(fraction, f"tissue fraction map {k}")
        fraction.require_same_grid(label_map, what=f"tissue fraction map {k}", ref="label map")


def _check_slice_range(slice_range: tuple[int, int], total: int) -> tuple[int, int]:
    start, stop = int(slice_range[0]), int(slice_range[1])
    if not 0 <= start < stop <= total:
        raise MedgenError(f"slice range {start}:{stop} is outside the volume's {total} slices")
    return start, stop
