"""Anatomy-conditioned generation and inpainting: from volumes in, to volumes out, same geometry.

`generate` and `inpaint` check their inputs at once and return generators: these yield `ProgressEvent`s (a step count and, every few
steps, a preview of the current estimate in the output's own grid) and return a list of result
volumes, one per variant. Closing the generator stops the work before the next network call.

The work happens on a working grid: the input in canonical orientation (`orientation`), resampled
to the model's spacing (in-plane only for 2-D models, which go slice by slice along the axial axis
with the slice position as a condition), padded to what the UNet's down-sampling needs. Results are
resampled back onto the input's exact grid. Inpainting works only on a box around the region (plus
a context margin) and copies every voxel outside the region from the input unchanged.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import __version__
from .denoiser import Denoiser, conditioning_stack
from .errors import (
    DeviceError,
    GeometryMismatchError,
    InvalidVolumeError,
    LabelSchemaError,
    MedgenError,
    RegionError,
    TaskNotSupportedError,
)
from .card import ModelCard
from .intensity import IntensityMap, intensity_map_for
from .models import LoadedModel, load_model
from .orientation import canonical_axes, to_canonical, unorient_array
from .resample import Grid, grid_at_spacing, resample
from .sampling import DEFAULT_SAMPLER, SAMPLERS, NoiseSchedule, sample, sample_repaint, sampler_steps
from .volume import Volume

# Default memory budget for one run's working arrays (float32 voxels times the number of copies).
MAX_WORK_VOXELS = int(os.environ.get("NAPARI_MEDGEN_MAX_VOXELS", 512 * 512 * 512))


@dataclass
class ProgressEvent:
    """One step of a run: `step` of `total` network calls; `preview` is the current estimate, when given.

    `preview` is a Volume on the output's grid (float32 voxels): the current estimate, ready to show
    with the same layer adapter as the result. `notice` is a one-off word for the user (the run ran out of
    memory and goes on with fewer slices per call, or on the CPU), given once, on the event where it happens.
    """

    step: int
    total: int
    variant: int = 0
    message: str = ""
    preview: Volume | None = None
    notice: str = ""


@dataclass
class SamplingOptions:
    """How to sample: the method, its steps, the seed, guidance and previews."""

    sampler: str = DEFAULT_SAMPLER
    steps: int = 20
    seed: int = 0
    guidance: float | None = None  # None: the model card's default_guidance
    eta: float = 0.0
    variants: int = 1
    batch_size: int | None = None
    preview_every: int = 5
    class_index: int | None = None
    # Inpainting with models that have no known-image inputs (RePaint).
    jump_length: int = 5
    jump_count: int = 4

    def check(self) -> None:
        if self.sampler not in SAMPLERS:
            raise MedgenError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not 1 <= self.steps <= 10000:
            raise MedgenError(f"steps must be between 1 and the model's training steps, got {self.steps}")
        if self.guidance is not None and self.guidance < 0:
            raise MedgenError(f"guidance must be 0 or more (1 = no guidance), got {self.guidance}")
        if self.variants < 1:
            raise MedgenError(f"variants must be at least 1, got {self.variants}")
        if not 0.0 <= self.eta <= 1.0:
            raise MedgenError(f"eta must be between 0 and 1, got {self.eta}")


@dataclass
class _Work:
    """The problem on the working grid (array order z, y, x; 2-D volumes have z = 1)."""

    grid: Grid
    labels: np.ndarray | None  # int, working shape
    known: np.ndarray | None  # normalised to [-1, 1]
    region: np.ndarray | None  # 1 = generate, 0 = keep
    positions: np.ndarray | None  # per slice, in [0, 1]
    pad: tuple[int, ...] = ()
    intensity: IntensityMap = field(default_factory=lambda: IntensityMap(0.0, 1.0))
    # Canonical index of the frame's first slice in the whole volume: per-slice noise is keyed by
    # it, so a slice range or an inpainting box gets the same noise as a run over the whole volume.
    slice_offset: int = 0


# -- public entry points ---------------------------------------------------------------------------
def generate(
    model: LoadedModel | str | None,
    label_map: Volume,
    options: SamplingOptions | None = None,
    slice_range: tuple[int, int] | None = None,
    **option_overrides: Any,
) -> Generator[ProgressEvent, None, list[Volume]]:
    """Synthesize images that follow `label_map`, in its exact geometry; one per variant.

    Checks the inputs at once (raising the project's errors) and returns a generator that yields
    `ProgressEvent`s and returns the result volumes.

    `slice_range` (canonical axial slices, as napari shows them) limits a 3-D run to those slices,
    and the results then cover just those slices.
    """
    options = _options(options, option_overrides)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    card = loaded.card
    options = _options(options, {}, card)  # the card's default guidance where none was asked for
    if "generate" not in card.tasks:
        raise TaskNotSupportedError(f"model {card.name} does not generate images (it does: {', '.join(card.tasks)})")
    _check_label_map(loaded, label_map)
    canonical = to_canonical(_as_3d(label_map))
    total_slices = canonical.shape[0]
    offset = 0
    if slice_range is not None:
        start, stop = _check_slice_range(slice_range, total_slices)
        canonical = _crop(canonical, (slice(start, stop), slice(None), slice(None)))
        offset = start
    frame = canonical
    work = _working_problem(loaded, frame, labels=frame, known=None, region=None, intensity=None)
    work.positions = _positions(frame.shape[0], offset, total_slices) if card.spatial_dims == 2 else None
    work.slice_offset = offset
    inputs = {"label_map": label_map.content_hash()}
    if slice_range is None:
        present = lambda result: _back_to_source(result, label_map)  # noqa: E731
    else:
        present = lambda result: result if label_map.ndim == 3 else _as_2d(result)  # noqa: E731
    return _marked_run(loaded, work, options, frame, None, present, "generate", inputs)


def inpaint(
    model: LoadedModel | str | None,
    image: Volume,
    region: Volume,
    label_map: Volume | None = None,
    options: SamplingOptions | None = None,
    context_mm: float = 16.0,
    feather_mm: float = 2.0,
    **option_overrides: Any,
) -> Generator[ProgressEvent, None, list[Volume]]:
    """Regenerate the voxels of `image` inside `region`; every voxel outside is kept bit for bit.

    `label_map` (optional, on the image's grid) says what anatomy to put inside the region. Only a
    box around the region plus `context_mm` is processed; the seam is feathered over `feather_mm`
    inside the region.
    """
    options = _options(options, option_overrides)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    card = loaded.card
    options = _options(options, {}, card)  # the card's default guidance where none was asked for
    if "inpaint" not in card.tasks:
        raise TaskNotSupportedError(f"model {card.name} does not inpaint (it does: {', '.join(card.tasks)})")
    if image.is_label_map and image.metadata.get("label_map"):
        raise InvalidVolumeError("the image to inpaint is a label map; give the scan (intensities) instead")
    if image.is_label_map and image.array.min() >= 0 and image.array.max() <= 1:
        raise InvalidVolumeError(
            "the image to inpaint holds only 0 and 1 (a mask or a boolean volume, not a scan); give the scan "
            "(intensities) as the image and the mask as the region"
        )
    if card.spatial_dims == 3 and (image.ndim == 2 or min(image.shape) < 2):
        # As in `generate`: a 3-D model on a single slice would only see padding around it.
        raise InvalidVolumeError(f"model {card.name} is 3-D and needs a 3-D image with more than one slice")
    region_hash = region.content_hash()  # the region as given, not as resampled onto the image
    region = _region_on_image(region, image)
    if label_map is not None:
        _check_label_map(loaded, label_map)
        image.require_same_grid(label_map, what="label map", ref="image")
    image3, region3 = to_canonical(_as_3d(image)), to_canonical(_as_3d(region))
    labels3 = to_canonical(_as_3d(label_map)) if label_map is not None else None
    box = _region_box(region3, context_mm, card)
    frame_image = _crop(image3, box)
    frame_region = _crop(region3, box)
    frame_labels = _crop(labels3, box) if labels3 is not None else None
    intensity = intensity_map_for(card.normalization, np.asarray(image.array, dtype=np.float32))
    work = _working_problem(loaded, frame_image, labels=frame_labels, known=frame_image, region=frame_region, intensity=intensity)
    if card.spatial_dims == 2:
        work.positions = _positions(frame_image.shape[0], box[0].start, image3.shape[0])
        work.slice_offset = box[0].start
    inputs = {"image": image.content_hash(), "region": region_hash}
    if label_map is not None:
        inputs["label_map"] = label_map.content_hash()
    canvas = np.asarray(image3.array, dtype=np.float32)
    weight = _feather_weights(frame_region.array > 0, frame_image.spacing, feather_mm)

    def paste(on_frame: Volume) -> Volume:
        pasted = canvas.copy()
        pasted[box] = weight * on_frame.array + (1.0 - weight) * canvas[box]
        return image3.with_array(pasted, metadata={})

    def present(result: Volume) -> Volume:
        volume = _back_to_source(result, image)
        generated = volume.array
        if not np.issubdtype(image.array.dtype, np.floating):
            info = np.iinfo(image.array.dtype)
            generated = np.clip(np.rint(generated), info.min, info.max)
        # Outside the region: the input's own voxels, exactly.
        return image.with_array(np.where(region.array > 0, generated, image.array).astype(image.array.dtype), metadata={})

    return _marked_run(loaded, work, options, frame_image, paste, present, "inpaint", inputs)


def output_template(source: Volume, slice_range: tuple[int, int] | None = None) -> Volume:
    """An empty float volume on the grid a run's result will have (for a front end's preview layer).

    `source` is the label map (generate) or the image (inpaint); `slice_range` as in `generate`.
    """
    if slice_range is None:
        return source.with_array(np.zeros(source.shape, np.float32), metadata={})
    canonical = to_canonical(_as_3d(source))
    start, stop = _check_slice_range(slice_range, canonical.shape[0])
    frame = _crop(canonical, (slice(start, stop), slice(None), slice(None)))
    frame = frame.with_array(np.zeros(frame.shape, np.float32), metadata={})
    return frame if source.ndim == 3 else _as_2d(frame)


# -- the run ---------------------------------------------------------------------------------------
def _marked_run(loaded, work, options, frame, paste, present, task: str, inputs: dict[str, str]):
    """The sampling run as a generator; its results carry the provenance that marks them synthetic.

    `generate` and `inpaint` check their inputs and prepare the work eagerly (so a user's mistake
    raises at the call, before any thread or progress bar exists) and return this generator.
    """
    state: dict[str, Any] = {}
    results = yield from _run(loaded, work, options, frame, paste, present, state)
    used = state.get("model", loaded)  # a CPU copy if the run fell back to the CPU
    for variant, volume in enumerate(results):
        volume.metadata = _provenance(used, options, task, variant, inputs)
    return results


def _run(
    loaded: LoadedModel,
    work: _Work,
    options: SamplingOptions,
    frame: Volume,
    paste,
    present,
    state: dict[str, Any] | None = None,
) -> Generator[ProgressEvent, None, list[Volume]]:
    """Sample every unit of every variant; returns the output volumes (via `paste` and `present`).

    `paste` puts a result on the frame's grid into the full canonical volume (inpainting) or is None;
    `present` turns a canonical result into the output volume (the source's array order and grid).

    Running out of memory does not fail the run: the unit is sampled again with half as many slices
    per network call (the per-slice noise makes the result the same), and at one slice a model on an
    accelerator continues on the CPU; an event with a `notice` says so, and later events' message
    too. Only running out of memory on the CPU at one slice per call raises (DeviceError).
    `state["model"]` is left holding the model that finished the run.
    """
    card = loaded.card
    schedule = NoiseSchedule(card.scheduler)
    calls_per_unit = _calls_per_unit(options, schedule, work)
    units = _units(loaded, work, options)
    total = calls_per_unit * len(units) * options.variants
    done = 0
    results: list[Volume] = []
    device = loaded.device
    model = loaded
    note = ""  # what changed after running out of memory, told in every later event's message
    state = {} if state is None else state
    try:
        for variant in range(options.variants):
            seed = options.seed + variant
            buffer = np.full(work.grid.shape, -1.0, np.float32)  # working grid, normalised
            if work.known is not None:
                buffer[...] = work.known
            pending = list(units)
            while pending:
                unit = pending.pop(0)
                start = done
                message = f"variant {variant + 1}/{options.variants}" + (f"; {note}" if note else "")
                attempt = _sample_unit(model, work, unit, options, seed, schedule)
                out_of_memory = False
                try:
                    while True:
                        try:
                            step, _, x0 = next(attempt)
                        except StopIteration as stop:
                            buffer[unit] = stop.value
                            break
                        done += 1
                        preview = None
                        if options.preview_every > 0 and (step % options.preview_every == 0):
                            preview = _preview(work, buffer, unit, x0, frame, paste, present)
                        yield ProgressEvent(done, total, variant, message, preview)
                        del x0, preview
                except Exception as error:  # only running out of memory is handled; the rest is raised again
                    if not _is_out_of_memory(error):
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
                slices = _unit_slices(unit) if card.spatial_dims == 2 else 1
                if slices > 1:
                    cap = slices // 2
                    pending = _split_units([unit] + pending, cap)
                    units = _split_units(units, cap)
                    note = f"ran out of memory: {cap} slice{'s' if cap > 1 else ''} per network call"
                elif model.device.type != "cpu":
                    from .models import cpu_copy

                    lost = model.device
                    model = cpu_copy(model)
                    pending.insert(0, unit)
                    note = f"ran out of {lost.type.upper()} memory: fell back to the CPU (slower)"
                else:
                    raise DeviceError(
                        "ran out of memory on the CPU even with one slice per network call; close other "
                        "programs, or crop the volume to the region of interest"
                    ) from None
                state["model"] = model
                total = done + calls_per_unit * (len(pending) + len(units) * (options.variants - variant - 1))
                yield ProgressEvent(
                    done, total, variant, f"variant {variant + 1}/{options.variants}; {note}", notice=note
                )
            results.append(present(_finish(work, buffer, frame, paste)))
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    state["model"] = model
    return results


def _sample_unit(
    loaded: LoadedModel, work: _Work, unit: tuple[slice, ...], options: SamplingOptions, seed: int, schedule: NoiseSchedule
):
    """One unit's sampling loop: yields (step, total, x0 estimate) per network call, returns the unit
    on the working grid. Its tensors go when it ends (or fails), so a retry starts with free memory."""
    denoise, x_t, noise_like, known_t, keep_t = _prepare_unit(loaded, work, unit, options, seed)
    if loaded.card.conditioning.known_image or work.region is None:
        steps = sample(options.sampler, denoise, x_t, schedule, options.steps, noise_like, options.eta)
    else:
        steps = sample_repaint(
            denoise, x_t, schedule, options.steps, noise_like, known_t, keep_t, options.jump_length, options.jump_count
        )
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
    return _unit_to_array(final, work, unit)


# Exception types that mean "out of memory" (torch.OutOfMemoryError since torch 2.5, torch.cuda's before).
_OUT_OF_MEMORY_TYPES = tuple(
    {t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t}
) + (MemoryError,)
_OUT_OF_MEMORY_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "alloc_failed")


def _is_out_of_memory(error: BaseException) -> bool:
    """Running out of device or host memory (CUDA, MPS, the CPU allocator, numpy), not any other error."""
    if isinstance(error, _OUT_OF_MEMORY_TYPES):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OUT_OF_MEMORY_TEXT)


def _unit_slices(unit: tuple[slice, ...]) -> int:
    """Slices in a 2-D model's unit (a contiguous run of axial slices)."""
    return int(unit[0].stop - unit[0].start)


def _split_units(units: list[tuple[slice, ...]], cap: int) -> list[tuple[slice, ...]]:
    """2-D units cut into runs of at most `cap` slices (3-D units, the whole volume, stay as they are)."""
    out = []
    for unit in units:
        if unit[0].start is None:
            out.append(unit)
            continue
        for z in range(unit[0].start, unit[0].stop, cap):
            out.append((slice(z, min(z + cap, unit[0].stop)),) + tuple(unit[1:]))
    return out


def _calls_per_unit(options: SamplingOptions, schedule: NoiseSchedule, work: _Work) -> int:
    if work.region is not None and not work.known_image_model:  # type: ignore[attr-defined]
        from .sampling import repaint_schedule

        walk = repaint_schedule(schedule.timesteps(options.steps), options.jump_length, options.jump_count)
        return sum(1 for t, s in walk if s < t)
    return sampler_steps(options.sampler, options.steps, schedule)


def _units(loaded: LoadedModel, work: _Work, options: SamplingOptions) -> list[tuple[slice, ...]]:
    """Batches of slices (2-D model) or the whole working volume (3-D model)."""
    shape = work.grid.shape
    if loaded.card.spatial_dims == 3:
        return [(slice(None), slice(None), slice(None))]
    slices = range(shape[0])
    if work.region is not None:  # only slices that hold some of the region
        slices = [z for z in slices if work.region[z].any()]
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


# More pixels per network call than this buy a CPU no speed (the demo model's time per slice is flat
# from about 2 x 128x128 up, benchmarks/volume_scaling.py) and only hold more memory, delay previews
# and make cancelling slower; small slices (inpainting boxes) are batched up to it, which amortises
# the per-call overhead that dominates them.
CPU_PIXELS_PER_CALL = 1 << 16
MAX_SLICE_BATCH = 64


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


def available_memory(device: torch.device) -> int:
    """Bytes the device can still give: CUDA's free memory, or the system's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 << 30


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


def _prepare_unit(loaded: LoadedModel, work: _Work, unit: tuple[slice, ...], options: SamplingOptions, seed: int):
    card = loaded.card
    device = loaded.device
    if card.spatial_dims == 2:
        z = range(*unit[0].indices(work.grid.shape[0]))
        labels = work.labels[unit] if work.labels is not None else None
        known = work.known[unit] if work.known is not None else None
        region = work.region[unit].astype(np.float32) if work.region is not None else None
        positions = work.positions[unit[0]] if work.positions is not None else None
        keys = [seed * 100003 + work.slice_offset + int(k) for k in z]
    else:
        labels = work.labels[None] if work.labels is not None else None
        known = work.known[None] if work.known is not None else None
        region = work.region[None].astype(np.float32) if work.region is not None else None
        positions = None
        keys = [seed]
    inpaint_channels = card.conditioning.known_image
    n_samples = len(keys) if card.spatial_dims == 2 else 1
    spatial = work.grid.shape[1:] if card.spatial_dims == 2 else work.grid.shape
    stack = conditioning_stack(
        card,
        labels,
        known if inpaint_channels else None,
        region if inpaint_channels else None,
        positions,
        shape=(n_samples,) + tuple(spatial),
    )
    conditioning = torch.from_numpy(stack).to(device)
    generators = [torch.Generator(device="cpu").manual_seed(int(k) % (2**63)) for k in keys]

    def noise_like(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.randn(x.shape[1:], generator=g) for g in generators]).to(device)

    spatial = stack.shape[2:]
    x_t = torch.stack([torch.randn((1,) + spatial, generator=g) for g in generators]).to(device)
    denoise = Denoiser(loaded, conditioning, options.guidance, options.class_index)
    known_t = keep_t = None
    if work.region is not None and not inpaint_channels:
        known_t = torch.from_numpy(known[:, None].copy()).to(device)
        keep_t = torch.from_numpy(1.0 - region[:, None]).to(device)
    return denoise, x_t, noise_like, known_t, keep_t


def _unit_to_array(x0: torch.Tensor, work: _Work, unit: tuple[slice, ...]) -> np.ndarray:
    """A unit's estimate on the working grid; the known image kept outside the region."""
    array = x0.float().cpu().numpy()[:, 0]  # (slices, y, x) for 2-D models, (1, z, y, x) for 3-D
    if x0.dim() == 5:
        array = array[0]
    if work.region is not None:
        array = np.where(work.region[unit], array, work.known[unit])
    return array


def _preview(work: _Work, buffer: np.ndarray, unit: tuple[slice, ...], x0: torch.Tensor, frame: Volume, paste, present) -> Volume:
    current = buffer.copy()
    current[unit] = _unit_to_array(x0, work, unit)
    preview = present(_finish(work, current, frame, paste))
    if preview.array.dtype != np.float32:  # an integer image's inpainting: show it as float32, as documented
        preview = preview.with_array(preview.array.astype(np.float32), metadata={})
    return preview


def _finish(work: _Work, buffer: np.ndarray, frame: Volume, paste) -> Volume:
    """Working buffer -> intensities on the frame's grid, pasted into the full image when inpainting."""
    unpadded = buffer[tuple(slice(0, s) for s in _unpadded_shape(work))]
    intensities = work.intensity.inverse(unpadded)
    on_working = Volume(intensities, work.grid.spacing, work.grid.origin, work.grid.direction)
    on_frame = resample(on_working, Grid.of(frame), "linear", default_value=float(work.intensity.low))
    return on_frame if paste is None else paste(on_frame)


def _feather_weights(region: np.ndarray, spacing_xyz: tuple[float, ...], feather_mm: float) -> np.ndarray:
    """1 deep inside the region, falling to 0 at its border over `feather_mm` (0 outside)."""
    if feather_mm <= 0:
        return region.astype(np.float32)
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(region, sampling=spacing_xyz[::-1])
    return np.clip(depth / feather_mm, 0.0, 1.0).astype(np.float32)


# -- preparing the working problem ----------------------------------------------------------------
def _working_problem(
    loaded: LoadedModel, frame: Volume, labels: Volume | None, known: Volume | None, region: Volume | None, intensity: IntensityMap | None
) -> _Work:
    card = loaded.card
    if card.spatial_dims == 2:
        spacing = (card.spacing_mm[0], card.spacing_mm[1], frame.spacing[2])
    else:
        spacing = tuple(card.spacing_mm)
    grid = grid_at_spacing(frame, spacing)
    voxels = int(np.prod(grid.size))
    if voxels > MAX_WORK_VOXELS:
        raise InvalidVolumeError(
            f"the volume needs {voxels:,} voxels at the model's spacing, more than the memory budget of "
            f"{MAX_WORK_VOXELS:,}; crop it to the region of interest or raise NAPARI_MEDGEN_MAX_VOXELS"
        )
    intensity = intensity or intensity_map_for(card.normalization, None)
    # uint16 (the schema caps label indices at 65535): the working copy of a whole volume costs a quarter
    # of int64's memory (3-D scaling: 5.2 -> 2.6 bytes of peak per output byte); batches widen in one_hot.
    labels_w = resample(labels, grid, "nearest").array.astype(np.uint16) if labels is not None else None
    known_w = intensity.forward(resample(known, grid, "linear").array) if known is not None else None
    region_w = resample(region, grid, "nearest").array.astype(bool) if region is not None else None
    if region_w is not None and not region_w.any():
        region_w = _voxels_touched(region, grid)
    divisor = 2 ** (len(card.network.kwargs.get("channels", (1,))) - 1)
    axes = (1, 2) if card.spatial_dims == 2 else (0, 1, 2)
    pad = [(0, 0)] * 3
    for axis in axes:
        size = grid.shape[axis]
        target = max(size, 8)
        target = int(np.ceil(target / divisor) * divisor)
        pad[axis] = (0, target - size)
    background_label = 0
    padded_shape = tuple(s + p[1] for s, p in zip(grid.shape, pad, strict=True))
    padded_grid = Grid(tuple(padded_shape[::-1]), grid.spacing, grid.origin, grid.direction)
    work = _Work(
        grid=padded_grid,
        labels=np.pad(labels_w, pad, constant_values=background_label) if labels_w is not None else None,
        known=np.pad(known_w, pad, constant_values=-1.0) if known_w is not None else None,
        region=np.pad(region_w, pad, constant_values=False) if region_w is not None else None,
        positions=None,
        pad=tuple(p[1] for p in pad),
        intensity=intensity,
    )
    work.known_image_model = card.conditioning.known_image  # type: ignore[attr-defined]
    return work


def _unpadded_shape(work: _Work) -> tuple[int, ...]:
    return tuple(s - p for s, p in zip(work.grid.shape, work.pad, strict=True))


def _voxels_touched(region: Volume, grid: Grid) -> np.ndarray:
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


def _positions(count: int, offset: int, total: int) -> np.ndarray:
    return (np.arange(count) + offset) / max(total - 1, 1)


def _region_box(region: Volume, context_mm: float, card: ModelCard) -> tuple[slice, ...]:
    """The region's bounding box, widened by `context_mm` and to at least one training tile of the model.

    In-plane only for 2-D models. The tile floor matters: a network with group normalisation and
    attention judges a frame by its statistics, and one much smaller than the crops it was trained on
    gets them wrong (brain-t1-demo, a 10 mm region: PSNR 11.5 dB in a 16 mm-context box, 16.5 dB in a
    training-tile-sized one).
    """
    where = np.argwhere(region.array > 0)
    low, high = where.min(0), where.max(0) + 1
    spacing = np.asarray(region.spacing[::-1], dtype=float)  # array order (z, y, x)
    margin = np.ceil(context_mm / spacing).astype(int)
    tile_mm = np.asarray(card.tile_size[::-1], float) * np.asarray(card.spacing_mm[::-1], float)
    tile_vox = np.ceil(tile_mm / spacing[-len(tile_mm):]).astype(int)
    floor = np.zeros(3, int)
    floor[-len(tile_vox):] = tile_vox
    if card.spatial_dims == 2:
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


def _crop(volume: Volume, box: tuple[slice, ...]) -> Volume:
    """A sub-volume (a copy) with its origin moved to the box's first voxel."""
    start = [s.start or 0 for s in box]
    origin = volume.index_to_physical(np.asarray(start[::-1], dtype=float))
    return Volume(np.ascontiguousarray(volume.array[box]), volume.spacing, tuple(origin), volume.direction, volume.metadata)


def _region_on_image(region: Volume, image: Volume) -> Volume:
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
            resampled = resampled.with_array(_voxels_touched(region, Grid.of(image)).astype(np.uint8))
        region = resampled
        if not region.array.any():
            raise RegionError(
                "the inpainting region lies outside the image; draw it on a layer made from this image"
            )
    return region.with_array((region.array > 0).astype(np.uint8), metadata={})


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


def _check_slice_range(slice_range: tuple[int, int], total: int) -> tuple[int, int]:
    start, stop = int(slice_range[0]), int(slice_range[1])
    if not 0 <= start < stop <= total:
        raise MedgenError(f"slice range {start}:{stop} is outside the volume's {total} slices")
    return start, stop


def _as_3d(volume: Volume) -> Volume:
    if volume.ndim == 3:
        return volume
    d = volume.direction_matrix
    direction = np.eye(3)
    direction[:2, :2] = d
    return Volume(
        volume.array[None], volume.spacing + (1.0,), volume.origin + (0.0,), tuple(direction.ravel()), volume.metadata
    )


def _as_2d(volume: Volume) -> Volume:
    d = volume.direction_matrix[:2, :2]
    return Volume(volume.array[0], volume.spacing[:2], volume.origin[:2], tuple(d.ravel()), volume.metadata)


def _back_to_source(result3: Volume, source: Volume) -> Volume:
    """A canonical 3-D result back into `source`'s array order and exact geometry."""
    source3 = _as_3d(source)
    axes, flips = canonical_axes(source3.direction_matrix)
    array = np.ascontiguousarray(unorient_array(result3.array, axes, flips)).astype(np.float32, copy=False)
    return source.with_array(array.reshape(source.shape), metadata={})


def _options(options: SamplingOptions | None, overrides: dict[str, Any], card: Any = None) -> SamplingOptions:
    options = copy.copy(options) if options is not None else SamplingOptions()
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise TypeError(f"unknown sampling option {key!r}")
        setattr(options, key, value)
    if options.guidance is None and card is not None:  # left open until the model (and its card) is known
        options.guidance = card.conditioning.default_guidance if card.supports_guidance else 1.0
    options.check()
    return options


def _provenance(loaded: LoadedModel, options: SamplingOptions, task: str, variant: int, inputs: dict[str, str]) -> dict[str, Any]:
    """What marks a result as synthetic and says how it was made."""
    return {
        "synthetic": True,
        "provenance": {
            "generator": f"napari-medgen {__version__}",
            "task": task,
            "model": loaded.card.name,
            "model_version": loaded.card.version,
            "weights_sha256": loaded.weights_sha256,
            "sampler": options.sampler,
            "steps": options.steps,
            "eta": options.eta,
            "guidance": options.guidance,
            "seed": options.seed + variant,
            "variant": variant,
            "inputs_sha256": inputs,
            "device": str(loaded.device),
            "precision": str(loaded.dtype).replace("torch.", ""),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
