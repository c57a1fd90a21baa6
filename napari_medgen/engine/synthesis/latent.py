"""Generation and inpainting with latent models (MAISI, MONAI generative bundles).

The run works on the same model grid as pixel models (`model_grid`: canonical orientation, the model's
spacing or, for a model fed the voxel spacing, the input's own; padded to what the autoencoder's compression
times the UNet's down-sampling needs) and gives its result back on the input's exact grid through the same
tasks (`GenerateTask`, `InpaintTask`: every voxel outside an inpainting region is the input's own). Between:
the arrays go into the networks' own layout (MAISI: RAS (x, y, z)); the diffusion runs on the latent
(rectified flow with MONAI's RFlowScheduler, or the DDPM-family samplers); the latent is decoded in
overlapping tiles (MONAI's sliding-window inference), so decoding memory stays bounded for large volumes.

Inpainting encodes the known image, regenerates the latent voxels the region touches (the rest is put back
on the known latent's own noise level after every step), decodes, and pastes inside the region only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import numpy as np
import torch

from ..diffusion.denoiser import one_hot
from ..diffusion.rectified_flow import RectifiedFlowSchedule, sample_rflow
from ..diffusion.samplers import sample, sample_repaint, sampler_steps
from ..diffusion.schedule import NoiseSchedule
from ..errors import InvalidVolumeError, LabelSchemaError
from ..intensity import intensity_map_for
from ..memory import is_out_of_memory
from ..model.card import ModelCard
from ..model.loading import LoadedModel, cpu_copy
from ..model.networks import monai_module
from ..orientation import to_canonical
from ..volume import Volume
from .body_envelope import add_body_envelope
from .model_grid import (
    ModelGridProblem,
    crop,
    problem_on_model_grid,
    region_box,
    region_on_image,
)
from .options import ProgressEvent, SamplingOptions
from .provenance import provenance
from .tasks import GenerateTask, InpaintTask, SynthesisTask

# Latent voxels (per axis, at most) of the tile decoded for a preview; the rest of the preview is a linear map
# of the latent fitted on that tile, so a preview costs a small decode, not a whole one.
PREVIEW_TILE = 8
# The window (HU) a generated CT is shown in: soft tissue, where organs differ (air and bone saturate).
CT_DISPLAY_WINDOW = (-160.0, 240.0)


def generate_latent(
    loaded: LoadedModel, label_map: Volume, options: SamplingOptions, slice_range: tuple[int, int] | None = None
) -> Generator[ProgressEvent, None, list[Volume]]:
    """`api.generate` for a latent model (the options already resolved)."""
    from .api import _background, _check_label_map, _check_slice_range

    card = loaded.card
    label_map.require_finite("label map")
    _check_label_map(loaded, label_map)
    if label_map.ndim != 3 or min(label_map.shape) < 2:
        raise InvalidVolumeError(f"model {card.name} is 3-D and needs a 3-D label map with more than one slice")
    inputs = {"label_map": label_map.content_hash()}
    notices = []
    if card.latent is not None and card.latent.body_label is not None:
        label_map, notice = add_body_envelope(label_map, card.latent.body_label)
        if notice:
            notices.append(notice)
    canonical = to_canonical(label_map)
    offset = 0
    if slice_range is not None:
        start, stop = _check_slice_range(slice_range, canonical.shape[0])
        canonical = crop(canonical, (slice(start, stop), slice(None), slice(None)))
        offset = start
    problem = _problem(card, canonical, canonical, None, None, None)
    problem.slice_offset = offset
    task = GenerateTask(
        name="generate",
        problem=problem,
        input_crop=canonical,
        inputs_sha256=inputs,
        label_map=label_map,
        whole_volume=slice_range is None,
        background=_background(card),
    )
    return _run(loaded, task, options, notices)


def inpaint_latent(
    loaded: LoadedModel, image: Volume, region: Volume, label_map: Volume | None, options: SamplingOptions
) -> Generator[ProgressEvent, None, list[Volume]]:
    """`api.inpaint` for a latent model: outside the region every voxel is the input's own, bit for bit."""
    from .api import _check_label_map, _outside_anatomy

    card = loaded.card
    if image.is_label_map and image.metadata.get("label_map"):
        raise InvalidVolumeError("the image to inpaint is a label map; give the scan (intensities) instead")
    image.require_finite("image to inpaint")
    if image.ndim != 3 or min(image.shape) < 2:
        raise InvalidVolumeError(f"model {card.name} is 3-D and needs a 3-D image with more than one slice")
    region_hash = region.content_hash()
    region = region_on_image(region, image)
    inputs = {"image": image.content_hash(), "region": region_hash}
    notices = []
    if label_map is not None:
        _check_label_map(loaded, label_map)
        image.require_same_grid(label_map, what="label map", ref="image")
        inputs["label_map"] = label_map.content_hash()
        if card.latent is not None and card.latent.body_label is not None:
            label_map, notice = add_body_envelope(label_map, card.latent.body_label, scan=image)
            if notice:
                notices.append(notice)
    elif card.conditioning.label_map == "controlnet":
        raise LabelSchemaError(
            f"model {card.name} draws the anatomy from a label map through its ControlNet: give the label map of the "
            "image (paint it, or make it with 'Labels from scan') to inpaint"
        )
    image3, region3 = to_canonical(image), to_canonical(region)
    labels3 = to_canonical(label_map) if label_map is not None else None
    box = region_box(region3, options.context_mm, card)
    image_crop, region_crop = crop(image3, box), crop(region3, box)
    labels_crop = crop(labels3, box) if labels3 is not None else None
    intensity = intensity_map_for(card.normalization, np.asarray(image.array, dtype=np.float32))
    problem = _problem(card, image_crop, labels_crop, image_crop, region_crop, intensity)
    task = InpaintTask.on_crop(problem, image, region, image3, box, image_crop, region_crop, inputs, options,
                               background=_outside_anatomy(card, image_crop, labels_crop))
    return _run(loaded, task, options, notices)


def _problem(card: ModelCard, crop_volume: Volume, labels, known, region, intensity) -> ModelGridProblem:
    """The model grid; a model fed the voxel spacing works at the input's own spacing (no resampling)."""
    assert card.latent is not None
    if card.latent.spacing_input:
        card = card.model_copy(update={"spacing_mm": [float(s) for s in crop_volume.spacing]})
    return problem_on_model_grid(card, crop_volume, labels, known, region, intensity)


# -- layouts ----------------------------------------------------------------------------------------------
def to_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """A canonical (z, y, x) LPS array -> the networks' layout (`ras_xyz`: (x, y, z), x left->right, y
    posterior->anterior, z inferior->superior, as MAISI's RAS-oriented training arrays)."""
    if layout == "ras_xyz":
        return np.ascontiguousarray(np.transpose(array, (2, 1, 0))[::-1, ::-1, :])
    return np.ascontiguousarray(array)


def from_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """The inverse of `to_layout`."""
    if layout == "ras_xyz":
        return np.ascontiguousarray(np.transpose(array[::-1, ::-1, :], (2, 1, 0)))
    return np.ascontiguousarray(array)


def spacing_in_layout(spacing_xyz: tuple[float, ...], layout: str) -> list[float]:
    return [float(s) for s in (spacing_xyz if layout == "ras_xyz" else spacing_xyz[::-1])]


def label_channels(card: ModelCard, labels: np.ndarray) -> np.ndarray:
    """(C, ...) float32 ControlNet input: the label indices' bit-planes (MAISI's binarisation) or one-hot."""
    assert card.latent is not None
    if card.latent.label_encoding == "bits":
        bits = np.arange(card.latent.label_bits)
        return ((labels.astype(np.int64)[None] >> bits.reshape((-1,) + (1,) * labels.ndim)) & 1).astype(np.float32)
    return one_hot(labels[None], card.num_label_channels)[0]


def body_region_vectors(card: ModelCard, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MAISI's top and bottom body-region one-hots: the first and last region any of whose labels is present."""
    assert card.latent is not None and card.latent.body_regions is not None
    present = set(np.unique(labels).tolist())
    regions = card.latent.body_regions
    hits = [i for i, indices in enumerate(regions) if present & set(indices)]
    if not hits:
        hits = [0]
    eye = np.eye(len(regions), dtype=np.float32)
    return eye[min(hits)], eye[max(hits)]


# -- the networks -----------------------------------------------------------------------------------------
class LatentDenoiser:
    """The UNet (with its ControlNet) on a latent, with the run's fixed conditioning."""

    def __init__(self, loaded: LoadedModel, problem: ModelGridProblem) -> None:
        from ..diffusion.denoiser import prepare_for_inference

        prepare_for_inference(loaded)
        _match_precision(loaded)
        card = loaded.card
        latent = card.latent
        assert latent is not None
        self.network = loaded.networks["network"]
        self.controlnet = loaded.networks.get("controlnet")
        self.dtype, self.device = loaded.dtype, loaded.device
        layout = latent.array_layout
        self.kwargs: dict[str, torch.Tensor] = {}
        self.control_kwargs: dict[str, torch.Tensor] = {}
        if latent.modality_code is not None:
            code = torch.tensor([latent.modality_code], dtype=torch.long, device=self.device)
            self.kwargs["class_labels"] = code
            self.control_kwargs["class_labels"] = code
        if latent.spacing_input:
            spacing = spacing_in_layout(problem.grid.spacing, layout)
            self.kwargs["spacing_tensor"] = torch.tensor([spacing], dtype=self.dtype, device=self.device) * latent.spacing_scale
        labels = to_layout(problem.labels, layout) if problem.labels is not None else None
        if latent.body_regions is not None:
            top, bottom = body_region_vectors(card, labels if labels is not None else np.zeros(1, np.int64))
            self.kwargs["top_region_index_tensor"] = torch.from_numpy(top[None] * latent.body_region_scale).to(self.device, self.dtype)
            self.kwargs["bottom_region_index_tensor"] = torch.from_numpy(bottom[None] * latent.body_region_scale).to(self.device, self.dtype)
        self.condition = None
        if self.controlnet is not None:
            if labels is None:
                labels = to_layout(np.zeros(problem.grid.shape, np.int64), layout)
            self.condition = torch.from_numpy(label_channels(card, labels)[None]).to(self.device, self.dtype)
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        self.calls += 1
        x = x_t.to(self.dtype)
        if isinstance(t, torch.Tensor):  # rectified flow: MAISI's torch.Tensor((t,)), a float timestep
            timesteps = torch.Tensor((t,)).to(self.device)
        else:
            timesteps = torch.full((1,), int(t), dtype=torch.long, device=self.device)
        extra = {}
        if self.controlnet is not None:
            down, mid = self.controlnet(x=x, timesteps=timesteps, controlnet_cond=self.condition, **self.control_kwargs)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.network(x, timesteps, **self.kwargs, **extra).float()


def _match_precision(loaded: LoadedModel) -> None:
    """MAISI's group norms compute in float32 and hand back float16 only when told (`norm_float16`, which the
    importer turns off for the CPU): on a model loaded in fp16 they must, or the next fp16 convolution refuses
    their float32 output."""
    if loaded.extra.get("norm_precision") == str(loaded.dtype):
        return
    for network in loaded.networks.values():
        for module in network.modules():
            if hasattr(module, "norm_float16"):
                module.norm_float16 = loaded.dtype == torch.float16
    loaded.extra["norm_precision"] = str(loaded.dtype)


def decode(loaded: LoadedModel, z: torch.Tensor, tile: list[int] | None = None) -> torch.Tensor:
    """Latent -> image (the autoencoder's range), in overlapping tiles of `tile` latent voxels (the card's
    decode_tile) blended with Gaussian weights; the output accumulates on the CPU."""
    latent = loaded.card.latent
    assert latent is not None
    autoencoder = loaded.networks["autoencoder"]
    scale = float(latent.scale_factor)
    _match_precision(loaded)
    tile = [min(int(t), int(s)) for t, s in zip(tile or latent.decode_tile, z.shape[2:], strict=True)]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return autoencoder.decode_stage_2_outputs(window.to(loaded.dtype) / scale).float()

    z = z.to(loaded.device)
    if all(s <= t for s, t in zip(z.shape[2:], tile, strict=True)):
        return predictor(z).cpu()
    inference = monai_module("monai.inferers").sliding_window_inference
    return inference(
        z, roi_size=tile, sw_batch_size=1, predictor=predictor, overlap=latent.decode_overlap, mode="gaussian",
        sw_device=loaded.device, device=torch.device("cpu"),
    )


def encode(loaded: LoadedModel, image: torch.Tensor) -> torch.Tensor:
    """Image (the autoencoder's range) -> latent (the encoder's mean x scale factor), in tiles."""
    latent = loaded.card.latent
    assert latent is not None
    autoencoder = loaded.networks["autoencoder"]
    scale = float(latent.scale_factor)
    _match_precision(loaded)
    tile = [min(int(t) * latent.compression, int(s)) for t, s in zip(latent.decode_tile, image.shape[2:], strict=True)]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        z_mu, _ = autoencoder.encode(window.to(loaded.dtype))
        return (z_mu * scale).float()

    image = image.to(loaded.device)
    if all(s <= t for s, t in zip(image.shape[2:], tile, strict=True)):
        return predictor(image)
    inference = monai_module("monai.inferers").sliding_window_inference
    return inference(
        image, roi_size=tile, sw_batch_size=1, predictor=predictor, overlap=latent.decode_overlap, mode="gaussian"
    ).to(loaded.device)


def preview_image(loaded: LoadedModel, z: torch.Tensor) -> np.ndarray:
    """A low-cost decode of latent `z` (layout order, image resolution, the autoencoder's range): a central
    tile of at most PREVIEW_TILE latent voxels per axis is decoded, a linear map latent -> intensity is fitted on
    it (least squares against the tile's decode averaged over each latent voxel), applied everywhere and
    upsampled."""
    latent = loaded.card.latent
    assert latent is not None
    f = latent.compression
    spatial = z.shape[2:]
    box = tuple(slice(max(0, (s - PREVIEW_TILE) // 2), max(0, (s - PREVIEW_TILE) // 2) + min(s, PREVIEW_TILE)) for s in spatial)
    tile = z[(slice(None), slice(None)) + box]
    decoded = decode(loaded, tile, tile=list(tile.shape[2:]))
    pooled = torch.nn.functional.avg_pool3d(decoded, kernel_size=f).double()[0, 0].reshape(-1)
    features = torch.cat([tile[0].cpu().double().reshape(tile.shape[1], -1), torch.ones(1, pooled.numel(), dtype=torch.float64)])
    coefficients = torch.linalg.lstsq(features.T, pooled[:, None]).solution[:, 0]
    weights, bias = coefficients[:-1], coefficients[-1]
    coarse = torch.einsum("c...,c->...", z[0].cpu().double(), weights) + bias
    fine = torch.nn.functional.interpolate(coarse[None, None].float(), scale_factor=f, mode="trilinear", align_corners=False)
    return fine[0, 0].numpy()


# -- the run ----------------------------------------------------------------------------------------------
def _run(
    loaded: LoadedModel, task: SynthesisTask, options: SamplingOptions, notices: list[str]
) -> Generator[ProgressEvent, None, list[Volume]]:
    card = loaded.card
    latent = card.latent
    assert latent is not None
    problem = task.problem
    layout = latent.array_layout
    rflow = card.scheduler.rectified_flow
    if rflow:
        # A rectified-flow model has one sampler: MONAI's RFlowScheduler Euler steps (recorded as such).
        options = dataclasses.replace(options, sampler="rflow", eta=0.0)
        schedule: RectifiedFlowSchedule | NoiseSchedule = RectifiedFlowSchedule(card.scheduler)
    else:
        schedule = _LatentNoiseSchedule(card.scheduler)
    image_shape = to_layout(np.zeros(problem.grid.shape, np.uint8), layout).shape
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
    denoise, known_latent, keep = _prepare(model, problem)
    note = ""  # what changed after running out of memory, told in every later event's message
    variant = 0
    while variant < options.variants:
        seed = options.seed + variant
        start = done
        message = f"variant {variant + 1}/{options.variants}" + (f"; {note}" if note else "")
        try:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            noise = torch.randn((1, latent.latent_channels) + latent_shape, generator=generator).to(model.device)

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
                if options.preview_every > 0 and step % options.preview_every == 0 and step < calls:
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
                image = decode(model, final)[0, 0].numpy()
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
            denoise, known_latent, keep = _prepare(model, problem)
            done = start
            note = f"ran out of {lost.type.upper()} memory: fell back to the CPU (slower)"
            yield ProgressEvent(done, total, variant, f"variant {variant + 1}/{options.variants}; {note}", notice=note)
            continue
        done += 1
        results.append(_output(task, problem, image, layout, low, high))
        yield ProgressEvent(done, total, variant, f"{message}: decoded")
        variant += 1
    for variant, volume in enumerate(results):
        volume.metadata = provenance(model, options, task.name, variant, task.inputs_sha256)
        record = volume.metadata["provenance"]
        record["latent"] = {"scale_factor": latent.scale_factor, "latent_shape": list(latent_shape), "decode_tile": latent.decode_tile}
        if notices:
            record["notices"] = list(notices)
        if card.modality == "CT":  # napari shows the result in a soft-tissue window (napari_io.image_display_kwargs)
            volume.metadata["modality"] = "CT"
            volume.metadata["display_window"] = list(CT_DISPLAY_WINDOW)
    return results


def _prepare(model: LoadedModel, problem: ModelGridProblem) -> tuple[LatentDenoiser, torch.Tensor | None, torch.Tensor | None]:
    """The run's denoiser on `model`'s device and, for inpainting, the known latent and where it is kept."""
    latent = model.card.latent
    assert latent is not None
    denoise = LatentDenoiser(model, problem)
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


def _output(task: SynthesisTask, problem: ModelGridProblem, image: np.ndarray, layout: str, low: float, high: float) -> Volume:
    """A decoded image (layout order, the autoencoder's range) -> the task's output volume."""
    clipped = np.clip(image, low, high)  # MAISI clips its decoder's output to the trained range
    estimate = from_layout(((clipped - low) / (high - low) * 2.0 - 1.0).astype(np.float32), layout)
    if problem.region is not None:
        estimate = np.where(problem.region, estimate, problem.known)
    return task.output_from_crop(problem.to_intensities(estimate, task.input_crop))


class _LatentNoiseSchedule(NoiseSchedule):
    """A DDPM-family schedule on latents: no clipping of the clean estimate (latents are not in [-1, 1])."""

    def split(self, output: torch.Tensor, x_t: torch.Tensor, t: int, clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return super().split(output, x_t, t, clip=False)
