"""The run loop: every unit (a batch of slices, or the whole volume for a 3-D model) of every variant,
with progress events, previews, and recovery from running out of memory."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import torch

from ..diffusion.denoiser import Denoiser, conditioning_stack
from ..diffusion.samplers import repaint_schedule, sample, sample_repaint, sampler_steps
from ..diffusion.schedule import NoiseSchedule
from ..errors import DeviceError
from ..memory import available_memory, is_out_of_memory
from ..model.loading import LoadedModel, cpu_copy
from ..volume import Volume
from .model_grid import ModelGridProblem
from .options import ProgressEvent, SamplingOptions
from .planes import TriPlanarDenoiser
from .provenance import provenance
from .tasks import SynthesisTask

# A unit: the slices of the model grid sampled in one network call (z range, all of y, all of x).
Unit = tuple[slice, ...]

# More pixels per network call than this buy a CPU no speed (the demo model's time per slice is flat
# from about 2 x 128x128 up, benchmarks/volume_scaling.py) and only hold more memory, delay previews
# and make cancelling slower; small slices (inpainting boxes) are batched up to it, which amortises
# the per-call overhead that dominates them.
CPU_PIXELS_PER_CALL = 1 << 16
MAX_SLICE_BATCH = 64


def run_task(
    loaded: LoadedModel, task: SynthesisTask, options: SamplingOptions
) -> Generator[ProgressEvent, None, list[Volume]]:
    """Sample every unit of every variant; returns the output volumes, each marked with its provenance.

    Running out of memory does not fail the run: the unit is sampled again with half as many slices
    per network call (the per-slice noise makes the result the same), and at one slice a model on an
    accelerator continues on the CPU; an event with a `notice` says so, and later events' message
    too. Only running out of memory on the CPU at one slice per call raises (DeviceError).
    """
    card = loaded.card
    problem = task.problem
    schedule = NoiseSchedule(card.scheduler)
    calls_per_unit = _calls_per_unit(options, schedule, problem)
    units = _units(loaded, problem, options)
    draws = options.mean_draws if options.inpaint_estimate == "mean" else 1
    total = calls_per_unit * len(units) * options.variants * draws
    done = 0
    results: list[Volume] = []
    first_device = loaded.device
    model = loaded
    note = ""  # what changed after running out of memory, told in every later event's message
    try:
        for variant in range(options.variants):
            mean = None  # the posterior-mean estimate: the average of `draws` draws on the model grid
            for draw in range(draws):
                seed = options.seed + variant + draw * options.variants
                estimate = np.full(problem.grid.shape, -1.0, np.float32)  # model grid, normalised
                if problem.known is not None:
                    estimate[...] = problem.known
                pending = list(units)
                while pending:
                    unit = pending.pop(0)
                    start = done
                    message = f"variant {variant + 1}/{options.variants}" + (f"; {note}" if note else "")
                    attempt = _sample_unit(model, problem, unit, options, seed, schedule, draw)
                    out_of_memory = False
                    try:
                        while True:
                            try:
                                step, _, x0 = next(attempt)
                            except StopIteration as stop:
                                estimate[unit] = stop.value
                                break
                            done += 1
                            preview = None
                            if options.preview_every > 0 and (step % options.preview_every == 0):
                                preview = _preview(task, estimate, unit, x0)
                            yield ProgressEvent(done, total, variant, message, preview)
                            del x0, preview
                    except Exception as error:  # only running out of memory is handled; the rest is raised again
                        if not is_out_of_memory(error):
                            raise
                        out_of_memory = True
                    finally:
                        attempt.close()
                    if not out_of_memory:
                        continue
                    # Out of memory: the tensors of the failed attempt are gone (the exception and its frames
                    # with it); give their memory back to the device, then try again with less.
                    done = start
                    if model.device.type == "cuda":
                        torch.cuda.empty_cache()
                    # (a tri-planar unit is the whole volume: it goes to the CPU as a 3-D model's does)
                    slices = _unit_slices(unit) if card.spatial_dims == 2 and problem.planes == "axial" else 1
                    if slices > 1:
                        cap = slices // 2
                        pending = _split_units([unit] + pending, cap)
                        units = _split_units(units, cap)
                        note = f"ran out of memory: {cap} slice{'s' if cap > 1 else ''} per network call"
                    elif model.device.type != "cpu":
                        lost = model.device
                        model = cpu_copy(model)
                        pending.insert(0, unit)
                        note = f"ran out of {lost.type.upper()} memory: fell back to the CPU (slower)"
                    else:
                        raise DeviceError(
                            "ran out of memory on the CPU even with one slice per network call; close other "
                            "programs, or crop the volume to the region of interest"
                        ) from None
                    total = done + calls_per_unit * (
                        len(pending) + len(units) * ((options.variants - variant) * draws - draw - 1))
                    yield ProgressEvent(
                        done, total, variant, f"variant {variant + 1}/{options.variants}; {note}", notice=note
                    )
                mean = estimate if mean is None else mean + estimate
            on_crop = problem.to_intensities(mean / draws if draws > 1 else mean, task.input_crop)
            results.append(task.output_from_crop(on_crop, variant))
    finally:
        if first_device.type == "cuda":
            torch.cuda.empty_cache()
    for variant, volume in enumerate(results):  # `model`: a CPU copy if the run fell back to the CPU
        volume.metadata = provenance(
            model, options, task.name, variant, task.inputs_sha256, done // options.variants, problem.planes_why)
        volume.metadata["provenance"].update(task.provenance_extra())
    return results


def _sample_unit(
    loaded: LoadedModel, problem: ModelGridProblem, unit: Unit, options: SamplingOptions, seed: int, schedule: NoiseSchedule,
    draw: int = 0,
):
    """One unit's sampling loop: yields (step, total, x0 estimate) per network call, returns the unit
    on the model grid. Its tensors go when it ends (or fails), so a retry starts with free memory."""
    denoise, x_t, noise_like, known_t, keep_t = _prepare_unit(loaded, problem, unit, options, seed, draw)
    if problem.by_repaint:
        steps = sample_repaint(
            denoise, x_t, schedule, options.steps, noise_like, known_t, keep_t, options.jump_length, options.jump_count
        )
    else:
        steps = sample(options.sampler, denoise, x_t, schedule, options.steps, noise_like, options.eta)
    while True:
        # Inference mode around each network call only, not across the yield: the caller's own code
        # between events (a front end, a notebook) must not run in inference mode.
        with torch.inference_mode():
            try:
                event = next(steps)
            except StopIteration as stop:
                final = stop.value
                break
        yield event
    return _unit_to_array(final, problem, unit)


def _unit_slices(unit: Unit) -> int:
    """Slices in a 2-D model's unit (a contiguous run of axial slices)."""
    return int(unit[0].stop - unit[0].start)


def _split_units(units: list[Unit], cap: int) -> list[Unit]:
    """2-D units cut into runs of at most `cap` slices (3-D units, the whole volume, stay as they are)."""
    out = []
    for unit in units:
        if unit[0].start is None:
            out.append(unit)
            continue
        for z in range(unit[0].start, unit[0].stop, cap):
            out.append((slice(z, min(z + cap, unit[0].stop)),) + tuple(unit[1:]))
    return out


def _calls_per_unit(options: SamplingOptions, schedule: NoiseSchedule, problem: ModelGridProblem) -> int:
    if problem.by_repaint:
        walk = repaint_schedule(schedule.timesteps(options.steps), options.jump_length, options.jump_count)
        return sum(1 for t, s in walk if s < t)
    return sampler_steps(options.sampler, options.steps, schedule)


def _units(loaded: LoadedModel, problem: ModelGridProblem, options: SamplingOptions) -> list[Unit]:
    """Batches of slices (2-D model, axial), or the whole model grid (3-D model, or tri-planar sampling)."""
    shape = problem.grid.shape
    if loaded.card.spatial_dims == 3 or problem.planes == "tri":
        return [(slice(None), slice(None), slice(None))]
    slices = range(shape[0])
    if problem.region is not None:  # only slices that hold some of the region
        slices = [z for z in slices if problem.region[z].any()]
    slices = list(slices)
    batch = options.batch_size or auto_slice_batch(loaded, shape[1], shape[2])
    units = []
    for i in range(0, len(slices), batch):
        chunk = slices[i : i + batch]
        # Contiguous runs only, so a unit is a plain slice of the array.
        start = chunk[0]
        run = [z for j, z in enumerate(chunk) if z == start + j]
        units.append((slice(start, start + len(run)), slice(None), slice(None)))
        for z in chunk[len(run) :]:
            units.append((slice(z, z + 1), slice(None), slice(None)))
    return units


def activation_bytes_per_pixel(loaded: LoadedModel) -> float:
    """Peak working memory of one network call per pixel of one slice, estimated from the UNet's widths.

    The encoder keeps num_res_blocks + 1 feature maps per level for the decoder's skip connections
    (each level a quarter of the pixels of the one above) and a decoder block holds a few maps of twice
    the top width at once; attention is fused (no tokens x tokens matrix). Calibrated on the demo model
    (measured 1.1-1.5 kB per pixel at fp32), with a 1.5x margin; a ControlNet doubles it.
    """
    kwargs = loaded.card.network.kwargs
    channels = [int(c) for c in kwargs.get("channels", (32, 64, 64))]
    blocks = kwargs.get("num_res_blocks", 2)
    blocks = [int(blocks)] * len(channels) if isinstance(blocks, (int, float)) else [int(b) for b in blocks]
    shrink = 4 if loaded.card.spatial_dims == 2 else 8
    elements = sum(c * (b + 1) / shrink**level for level, (c, b) in enumerate(zip(channels, blocks, strict=False)))
    elements += 12 * channels[0]
    if loaded.card.controlnet is not None:
        elements *= 2
    element_size = torch.empty((), dtype=loaded.dtype).element_size()
    return 1.5 * element_size * elements


def auto_slice_batch(loaded: LoadedModel, height: int, width: int) -> int:
    """Slices per network call, from the memory available on the model's device.

    A quarter of the available memory over the estimated working memory of one slice (doubled for
    models whose guidance batches two passes); on a CPU no more than `CPU_PIXELS_PER_CALL` pixels a
    call, which is where the CPU's throughput stops growing.
    """
    pixels = max(1, height * width)
    per_slice = activation_bytes_per_pixel(loaded) * pixels * (2 if loaded.card.supports_guidance else 1)
    batch = int((available_memory(loaded.device) // 4) // max(per_slice, 1))
    if loaded.device.type != "cuda":
        batch = min(batch, CPU_PIXELS_PER_CALL // pixels)
    return int(max(1, min(MAX_SLICE_BATCH, batch)))


def _prepare_unit(
    loaded: LoadedModel, problem: ModelGridProblem, unit: Unit, options: SamplingOptions, seed: int, draw: int = 0
):
    card = loaded.card
    device = loaded.device
    if card.spatial_dims == 2:
        z = range(*unit[0].indices(problem.grid.shape[0]))
        labels = problem.labels[unit] if problem.labels is not None else None
        condition = labels if problem.fractions is None else np.moveaxis(problem.fractions[(slice(None),) + tuple(unit)], 0, 1)
        known = problem.known[unit] if problem.known is not None else None
        region = problem.region[unit].astype(np.float32) if problem.region is not None else None
        positions = problem.positions[unit[0]] if problem.positions is not None else None
        keys = [seed * 100003 + problem.slice_offset + int(k) for k in z]
    else:
        labels = problem.labels[None] if problem.labels is not None else None
        condition = labels if problem.fractions is None else problem.fractions[None]
        known = problem.known[None] if problem.known is not None else None
        region = problem.region[None].astype(np.float32) if problem.region is not None else None
        positions = None
        keys = [seed]
    if problem.planes == "tri":
        return _prepare_tri_planar(loaded, problem, options, keys, draw)
    inpaint_channels = card.conditioning.known_image
    n_samples = len(keys) if card.spatial_dims == 2 else 1
    spatial = problem.grid.shape[1:] if card.spatial_dims == 2 else problem.grid.shape
    stack = conditioning_stack(
        card,
        condition,
        known if inpaint_channels else None,
        region if inpaint_channels else None,
        positions,
        shape=(n_samples,) + tuple(spatial),
    )
    conditioning = torch.from_numpy(stack).to(device)
    correlation = _slice_correlation(options, labels) if card.spatial_dims == 2 else 0.0
    noise = _SliceNoise(keys, seed, correlation)

    def noise_like(x: torch.Tensor) -> torch.Tensor:
        return noise.draw(tuple(x.shape[1:])).to(device)

    x_t = noise.draw((1,) + tuple(stack.shape[2:])).to(device)
    # A network trained on several planes is told that these slices are axial (the Denoiser's default for it).
    class_index = None if card.conditioning.orientations else options.class_index
    denoise = Denoiser(loaded, conditioning, options.guidance, class_index, guidance_rescale=options.guidance_rescale)
    return (denoise, x_t, noise_like) + _repaint_tensors(problem, known, region, device)


def _repaint_tensors(problem: ModelGridProblem, known, region, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """RePaint's known image and keep-mask, (N, 1, ...), for a model without known-image inputs."""
    if not problem.by_repaint:
        return None, None
    return torch.from_numpy(known[:, None].copy()).to(device), torch.from_numpy(1.0 - region[:, None]).to(device)


def _average_from(loaded: LoadedModel, problem: ModelGridProblem, options: SamplingOptions) -> int | None:
    """The first network call on which a tri-planar run averages the three planes (None: none does)."""
    last = options.planes_average_last or 0
    if last <= 0:
        return None
    return max(0, _calls_per_unit(options, NoiseSchedule(loaded.card.scheduler), problem) - last)


def _anatomy(loaded: LoadedModel, problem: ModelGridProblem) -> np.ndarray | None:
    """A generation's voxels that are not the card's background label (None: no such label, or inpainting)."""
    background = loaded.card.normalization.background_label
    if problem.region is not None or problem.labels is None or background is None:
        return None
    return problem.labels != background


def _prepare_tri_planar(
    loaded: LoadedModel, problem: ModelGridProblem, options: SamplingOptions, keys: list[int], draw: int = 0
):
    """The whole volume as (Z, 1, Y, X), its noise drawn per axial slice as slice-wise sampling draws it (each
    voxel its own: no slice correlation), and the denoiser that takes the planes in turn; the posterior mean's
    draw k starts at plane k, so that its one-call draws average the three planes' estimates."""
    region = problem.region.astype(np.float32) if problem.region is not None else None
    denoise = TriPlanarDenoiser(
        loaded, problem.labels, problem.fractions, problem.known, problem.region, problem.plane_positions or {},
        options.guidance, options.guidance_rescale,
        batch_size=lambda height, width: options.batch_size or auto_slice_batch(loaded, height, width),
        average_from=_average_from(loaded, problem, options),
        first_call=draw,
        unpadded=problem.unpadded_shape,
        anatomy=_anatomy(loaded, problem),
    )
    noise = _SliceNoise(keys, options.seed, 0.0)

    def noise_like(x: torch.Tensor) -> torch.Tensor:
        return noise.draw(tuple(x.shape[1:])).to(loaded.device)

    x_t = noise.draw((1,) + tuple(problem.grid.shape[1:])).to(loaded.device)
    return (denoise, x_t, noise_like) + _repaint_tensors(problem, problem.known, region, loaded.device)


def _slice_correlation(options: SamplingOptions, labels: np.ndarray | None) -> float | np.ndarray:
    """The slice-noise correlation of a unit's voxels: one number, or (slices, 1, y, x) where labels have their own."""
    default = options.slice_noise_correlation or 0.0
    by_label = options.slice_noise_correlation_by_label
    if not by_label or labels is None:
        return default
    correlation = np.full(labels.shape, default, dtype=np.float32)
    for label, value in by_label.items():
        correlation[labels == label] = value
    return correlation[:, None]


class _SliceNoise:
    """Seeded noise for a unit's samples: each slice's own draw, mixed with a draw every slice shares.

    Each slice has its own generator (keyed by seed and slice, so a seed gives the same image whatever the
    batch size) and one of its own seeded alike for all slices; mixed as sqrt(1 - c) own + sqrt(c) shared,
    every voxel's noise is still standard normal and the same voxel in two slices has correlation c (with a
    correlation per voxel, c1 and c2: sqrt(c1 c2)).
    """

    def __init__(self, keys: list[int], seed: int, correlation: float | np.ndarray) -> None:
        self.own = [torch.Generator(device="cpu").manual_seed(int(k) % (2**63)) for k in keys]
        c = np.asarray(correlation, dtype=np.float64)
        if c.ndim == 0:
            self.own_weight, self.shared_weight = float(np.sqrt(1.0 - c)), float(np.sqrt(c))
        else:
            self.own_weight = torch.from_numpy(np.sqrt(1.0 - c).astype(np.float32))
            self.shared_weight = torch.from_numpy(np.sqrt(c).astype(np.float32))
        shared_key = (seed * 100003 - 1) % (2**63)
        self.shared = [torch.Generator(device="cpu").manual_seed(shared_key) for _ in keys] if bool((c > 0).any()) else []

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        own = torch.stack([torch.randn(shape, generator=g) for g in self.own])
        if not self.shared:
            return own
        shared = torch.stack([torch.randn(shape, generator=g) for g in self.shared])
        return self.own_weight * own + self.shared_weight * shared


def _unit_to_array(x0: torch.Tensor, problem: ModelGridProblem, unit: Unit) -> np.ndarray:
    """A unit's estimate on the model grid; the known image kept outside the region."""
    array = x0.float().cpu().numpy()[:, 0]  # (slices, y, x) for 2-D models, (1, z, y, x) for 3-D
    if x0.dim() == 5:
        array = array[0]
    if problem.region is not None:
        array = np.where(problem.region[unit], array, problem.known[unit])
    return array


def _preview(task: SynthesisTask, estimate: np.ndarray, unit: Unit, x0: torch.Tensor) -> Volume:
    current = estimate.copy()
    current[unit] = _unit_to_array(x0, task.problem, unit)
    preview = task.output_from_crop(task.problem.to_intensities(current, task.input_crop))
    if preview.array.dtype != np.float32:  # an integer image's inpainting: show it as float32, as documented
        preview = preview.with_array(preview.array.astype(np.float32), metadata={})
    return preview
