"""Generation and inpainting with latent models (MAISI, MONAI generative bundles).

The run works on the same model grid as pixel models (`model_grid`: canonical orientation, the model's
spacing or, for a model fed the voxel spacing, the input's own; padded to what the autoencoder's compression
times the UNet's down-sampling needs) and gives its result back on the input's exact grid through the same
tasks (`GenerateTask`, `InpaintTask`: every voxel outside an inpainting region is the input's own). Between:
the arrays go into the networks' own layout and conditioning (`latent_networks`); the diffusion runs on the
latent (rectified flow with MONAI's RFlowScheduler, or the DDPM-family samplers); the latent is decoded in
overlapping tiles, so decoding memory stays bounded for large volumes.

Inpainting encodes the known image, regenerates the latent voxels the region touches (the rest is put back
on the known latent's own noise level after every step), decodes, and pastes inside the region only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import numpy as np
import torch

from ..diffusion.rectified_flow import RectifiedFlowSchedule, sample_rflow
from ..diffusion.samplers import sample, sample_repaint, sampler_steps
from ..diffusion.schedule import NoiseSchedule
from ..errors import LabelSchemaError
from ..intensity import intensity_map_for
from ..memory import is_out_of_memory
from ..model.card import ModelCard
from ..model.loading import LoadedModel, cpu_copy
from ..orientation import to_canonical
from ..volume import Volume
from .body_envelope import add_body_envelope
from .inputs import check_label_map, inpaint_inputs
from .latent_networks import LatentDenoiser, decode, encode, from_layout, preview_image, to_layout
from .model_grid import ModelGridProblem, as_3d, axial_slab, inpaint_crop, problem_on_model_grid
from .options import ProgressEvent, SamplingOptions
from .provenance import provenance
from .tasks import GenerateTask, InpaintTask, SynthesisTask

# The window (HU) a generated CT is shown in: soft tissue, where organs differ (air and bone saturate).
CT_DISPLAY_WINDOW = (-160.0, 240.0)


def generate_latent(
    loaded: LoadedModel, label_map: Volume, options: SamplingOptions, slice_range: tuple[int, int] | None = None
) -> Generator[ProgressEvent, None, list[Volume]]:
    """`api.generate` for a latent model (the options already resolved)."""
    card = loaded.card
    label_map.require_finite("label map")
    check_label_map(card, label_map)
    inputs = {"label_map": label_map.content_hash()}
    notices = []
    if card.latent is not None and card.latent.body_label is not None:
        label_map, notice = add_body_envelope(label_map, card.latent.body_label)
        if notice:
            notices.append(notice)
    canonical, offset = axial_slab(to_canonical(as_3d(label_map)), slice_range)
    problem = latent_problem(card, canonical, canonical, None, None, None)
    problem.slice_offset = offset
    task = GenerateTask.for_label_map(card, problem, canonical, label_map, inputs, whole_volume=slice_range is None)
    return _run(loaded, task, options, notices)


def inpaint_latent(
    loaded: LoadedModel, image: Volume, region: Volume, label_map: Volume | None, options: SamplingOptions
) -> Generator[ProgressEvent, None, list[Volume]]:
    """`api.inpaint` for a latent model: outside the region every voxel is the input's own, bit for bit."""
    card = loaded.card
    region, inputs = inpaint_inputs(card, image, region, label_map)
    notices = []
    if label_map is not None:
        if card.latent is not None and card.latent.body_label is not None:
            label_map, notice = add_body_envelope(label_map, card.latent.body_label, scan=image)
            if notice:
                notices.append(notice)
    elif card.conditioning.label_map == "controlnet":
        raise LabelSchemaError(
            f"model {card.name} draws the anatomy from a label map through its ControlNet: give the label map of the "
            "image (paint it, or make it with 'Labels from scan') to inpaint"
        )
    crop = inpaint_crop(card, image, region, label_map, options.context_mm)
    intensity = intensity_map_for(card.normalization, np.asarray(image.array, dtype=np.float32))
    problem = latent_problem(card, crop.image, crop.labels, crop.image, crop.region, intensity)
    task = InpaintTask.on_crop(card, problem, image, region, crop, inputs, options)
    return _run(loaded, task, options, notices)


def latent_problem(card: ModelCard, crop_volume: Volume, labels, known, region, intensity) -> ModelGridProblem:
    """The model grid; a model fed the voxel spacing works at the input's own spacing (no resampling)."""
    assert card.latent is not None
    if card.latent.spacing_input:
        card = card.model_copy(update={"spacing_mm": [float(s) for s in crop_volume.spacing]})
    return problem_on_model_grid(card, crop_volume, labels, known, region, intensity)


# -- the run ----------------------------------------------------------------------------------------------
def _run(
    loaded: LoadedModel, task: SynthesisTask, options: SamplingOptions, notices: list[str]
) -> Generator[ProgressEvent, None, list[Volume]]:
    card = loaded.card
    latent = card.latent
    assert latent is not None
    problem = task.problem
    layout = latent.array_layout
    slices = card.spatial_dims == 2  # a 2-D model: the axial slices in one batch
    rflow = card.scheduler.rectified_flow
    if rflow:
        # A rectified-flow model has one sampler: MONAI's RFlowScheduler Euler steps (recorded as such).
        options = dataclasses.replace(options, sampler="rflow", eta=0.0)
        schedule: RectifiedFlowSchedule | NoiseSchedule = RectifiedFlowSchedule(card.scheduler)
    else:
        schedule = _LatentNoiseSchedule(card.scheduler)
    image_shape = to_layout(np.zeros(problem.grid.shape, np.uint8), layout, slices).shape
    batch, image_shape = (image_shape[0], image_shape[1:]) if slices else (1, image_shape)
    latent_shape = tuple(s // latent.compression for s in image_shape)
    numel = int(np.prod(latent_shape))
    inpainting = problem.region is not None
    if rflow:
        calls = len(schedule.timesteps(options.steps, numel))
    elif inpainting:
        calls = len(schedule.timesteps(options.steps))
    else:
        calls = sampler_steps(options.sampler, options.steps, schedule)
    total = (calls + 1) * options.variants  # + one decode per variant
    low, high = latent.image_range
    results: list[Volume] = []
    done = 0
    pending_notice = "; ".join(notices)
    model = loaded  # a CPU copy after running out of accelerator memory
    denoise, known_latent, keep = _prepare(model, problem, options)
    note = ""  # what changed after running out of memory, told in every later event's message
    variant = 0
    while variant < options.variants:
        seed = options.seed + variant
        start = done
        message = f"variant {variant + 1}/{options.variants}" + (f"; {note}" if note else "")
        try:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            noise = torch.randn((batch, latent.latent_channels) + latent_shape, generator=generator).to(model.device)

            def noise_like(x: torch.Tensor, _generator: torch.Generator = generator) -> torch.Tensor:
                return torch.randn(tuple(x.shape), generator=_generator).to(x.device)

            if rflow:
                steps = sample_rflow(denoise, noise, schedule, options.steps, known_latent, keep)
            elif inpainting:
                steps = sample_repaint(
                    denoise, noise, schedule, options.steps, noise_like, known_latent, keep, options.jump_length, 1
                )
            else:
                steps = sample(options.sampler, denoise, noise, schedule, options.steps, noise_like, options.eta)
            while True:
                with torch.inference_mode():
                    try:
                        step, _, x0 = next(steps)
                    except StopIteration as stop:
                        final = stop.value
                        break
                done += 1
                preview = None
                if options.preview_every > 0 and step % options.preview_every == 0 and step < calls and not slices:
                    with torch.inference_mode():
                        rough = preview_image(model, x0)
                    preview = _output(task, problem, rough, layout, low, high)
                    if preview.array.dtype != np.float32:
                        preview = preview.with_array(preview.array.astype(np.float32), metadata={})
                yield ProgressEvent(done, total, variant, message, preview, notice=pending_notice)
                pending_notice = ""
                del x0, preview
            if inpainting:
                final = keep * known_latent + (1 - keep) * final
            with torch.inference_mode():
                decoded = decode(model, final)
                image = (decoded[:, 0] if slices else decoded[0, 0]).numpy()
        except Exception as error:  # only running out of accelerator memory is handled; the rest is raised again
            if not is_out_of_memory(error) or model.device.type == "cpu":
                raise
            # As the pixel models' run does: the variant again from its start, on the CPU (same seed, same result).
            lost = model.device
            del error
            steps = noise = None
            if lost.type == "cuda":
                torch.cuda.empty_cache()
            model = cpu_copy(model)
            denoise, known_latent, keep = _prepare(model, problem, options)
            done = start
            note = f"ran out of {lost.type.upper()} memory: fell back to the CPU (slower)"
            yield ProgressEvent(done, total, variant, f"variant {variant + 1}/{options.variants}; {note}", notice=note)
            continue
        done += 1
        results.append(_output(task, problem, image, layout, low, high, slices))
        yield ProgressEvent(done, total, variant, f"{message}: decoded")
        variant += 1
    for variant, volume in enumerate(results):
        per_step = 2 if denoise.unconditional is not None else 1  # guided: the network with and without the modality
        volume.metadata = provenance(model, options, task.name, variant, task.inputs_sha256, calls * per_step)
        record = volume.metadata["provenance"]
        record["latent"] = {"scale_factor": latent.scale_factor, "latent_shape": list(latent_shape), "decode_tile": latent.decode_tile}
        if notices:
            record["notices"] = list(notices)
        if card.modality == "CT":  # napari shows the result in a soft-tissue window (napari_io.image_display_kwargs)
            volume.metadata["modality"] = "CT"
            volume.metadata["display_window"] = list(CT_DISPLAY_WINDOW)
    return results


def _prepare(
    model: LoadedModel, problem: ModelGridProblem, options: SamplingOptions
) -> tuple[LatentDenoiser, torch.Tensor | None, torch.Tensor | None]:
    """The run's denoiser on `model`'s device and, for inpainting, the known latent and where it is kept."""
    latent = model.card.latent
    assert latent is not None
    denoise = LatentDenoiser(model, problem, options)
    if problem.region is None:
        return denoise, None, None
    low, high = latent.image_range
    known_image = to_layout(problem.known, latent.array_layout)
    with torch.inference_mode():
        known_latent = encode(model, torch.from_numpy(_to_range(known_image, low, high)[None, None].copy()))
    region = torch.from_numpy(to_layout(problem.region.astype(np.float32), latent.array_layout)[None, None].copy())
    touched = torch.nn.functional.max_pool3d(region, kernel_size=latent.compression)
    return denoise, known_latent, (1.0 - touched).to(model.device)


def _to_range(normalised: np.ndarray, low: float, high: float) -> np.ndarray:
    """[-1, 1] (the card's normalisation) -> the autoencoder's image range."""
    return (low + (np.asarray(normalised, np.float32) + 1.0) * 0.5 * (high - low)).astype(np.float32)


def _output(task: SynthesisTask, problem: ModelGridProblem, image: np.ndarray, layout: str, low: float, high: float,
            slices: bool = False) -> Volume:
    """A decoded image (layout order, the autoencoder's range) -> the task's output volume."""
    clipped = np.clip(image, low, high)  # MAISI clips its decoder's output to the trained range
    estimate = from_layout(((clipped - low) / (high - low) * 2.0 - 1.0).astype(np.float32), layout, slices)
    if problem.region is not None:
        estimate = np.where(problem.region, estimate, problem.known)
    return task.output_from_crop(problem.to_intensities(estimate, task.input_crop))


class _LatentNoiseSchedule(NoiseSchedule):
    """A DDPM-family schedule on latents: no clipping of the clean estimate (latents are not in [-1, 1])."""

    def split(self, output: torch.Tensor, x_t: torch.Tensor, t: int, clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return super().split(output, x_t, t, clip=False)
