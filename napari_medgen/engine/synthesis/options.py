"""What a run is asked to do (`SamplingOptions`, the one home of every default) and what it reports (`ProgressEvent`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..diffusion.methods import DEFAULT_SAMPLER, SAMPLERS
from ..errors import MedgenError, OptionNotSupportedError
from ..volume import Volume

DEFAULT_STEPS = 20  # sampling steps of a model whose card names none

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


INPAINT_ESTIMATES = ("auto", "sample", "mean")


@dataclass
class SamplingOptions:
    """How to sample: the method, its steps, the seed, guidance, previews and, for inpainting, the box and seam.

    The command line and the widgets take their defaults from here, so a default changes in one place.
    """

    sampler: str | None = None  # None: the model card's `sampling` default, else DEFAULT_SAMPLER
    steps: int | None = None  # None: the model card's `sampling` default, else DEFAULT_STEPS
    seed: int = 0
    guidance: float | None = None  # None: the model card's default_guidance
    # Guidance rescaling (Lin et al., 2024), 0..1: pulls a guided prediction's spread back to the conditional one's.
    guidance_rescale: float = 0.0
    eta: float = 0.0
    variants: int = 1
    batch_size: int | None = None
    preview_every: int = 5
    class_index: int | None = None
    # Context attributes by name (the card's defaults for the rest) and the modality by name (the card's own if
    # None), for models that take them (`conditions`); resolved against the card, so the provenance has them all.
    attributes: dict[str, float] | None = None
    modality: str | None = None
    # 2-D models: how alike the noise of different slices is. 0: each slice's own noise (keyed by seed and
    # slice), so each slice gets its own texture, which shows as stripes across slices in sagittal and
    # coronal views; 1: every slice the same noise (keyed by seed), so neighbouring slices with nearly the
    # same anatomy come out nearly the same. In between: a mix with that correlation between any two slices.
    slice_noise_correlation: float | None = None  # None: the card's default_slice_noise_correlation
    # Per label index, where a tissue's texture continues through slices differently (card 2.2.0 of the demo:
    # white matter 0.9, grey matter 0.5, the rest 0.7). None: the card's, when the correlation is the card's
    # too; a correlation asked for applies to every voxel unless this is given as well.
    slice_noise_correlation_by_label: dict[int, float] | None = None
    # 2-D models: "axial" samples slice by slice along the axial axis; "tri" keeps the whole volume and gives the
    # network the slices of each plane in turn (`planes`; needs a network trained on all three orientations).
    # None: the card's `sampling.planes`. Tri-planar sampling draws every voxel its own noise.
    planes: str | None = None
    # Tri-planar: the last network calls on which all three planes are run and averaged; None: the card's.
    planes_average_last: int | None = None
    # Inpainting: the context processed around the region, and the width of the seam blend inside it.
    context_mm: float = 16.0
    feather_mm: float = 2.0
    # Inpainting: what fills the region. "sample": one draw from the model (a scan's texture: for inserting or
    # removing structures); "mean": the posterior mean, the average of `mean_draws` estimates of the image
    # from pure noise (one network call each for v- and x0-predicting models): the most faithful fill, and
    # smooth, for repairs; "auto": the mean where the region is at most `small_region_mm` thick (twice its
    # deepest voxel's distance to the known image), for models whose draws cost one call each (v- or
    # x0-prediction); else a sample. 45 mm covers regions up to 40 mm across, the largest measured: on the
    # training brain and two unseen ones the mean beat both a draw and biharmonic interpolation in PSNR and
    # SSIM at every size from 10 to 40 mm, where a draw lost to interpolation at 20-30 mm
    # (benchmarks/unseen_inpainting.py). Beyond that a draw keeps the scan's texture in a large fill.
    inpaint_estimate: str = "auto"
    mean_draws: int = 4
    small_region_mm: float = 45.0
    # Inpainting with the mean: near the region's border the known image predicts the missing voxels better
    # than the network does (biharmonic interpolation of the known voxels beats the mean within a voxel or two
    # of them, the network's anatomy wins deeper in); the two are blended with the interpolation's weight
    # falling as exp(-depth / border_interpolation_mm) from the outermost region voxels. 0: the mean alone.
    border_interpolation_mm: float = 2.0
    # Inpainting a scan finer than the model's grid: which fills get the scan's own fine detail: the label map's
    # tissue edges and local levels at the scan's resolution (`anatomy_edges`) and the scan's grain (`fine_detail`: a
    # random-phase texture with the spectrum and strength of what the model's grid cannot hold): "all", "sample"
    # (draws only: the mean stays as the model grid made it), or "none". "all": on the 1 mm template, four 20 mm balls
    # with the tissue labels given, the teacher's mean went from 26.9 dB, texture 0.89x (0.38-1.81) and 0 of 4 regions
    # meeting issue 33's targets to 29.5 dB, 1.12x (0.81-1.86) and 3 of 4 (biharmonic 24.0 dB; a draw 29.4 dB, 3 of 4),
    # benchmarks/inpaint_1mm.py.
    fine_detail: str = "all"
    # Inpainting without a label map, with a model that takes one: the tissue around the region (classes of the known
    # voxels' intensities) continued into it guides the fill (`continued_anatomy`); False: the fill is unguided.
    continue_anatomy: bool = True
    # Inpainting with models that have no known-image inputs (RePaint).
    jump_length: int = 5
    jump_count: int = 4

    def fine_detail_for(self, estimate: str) -> bool:
        """Whether a fill made as `estimate` ("sample" or "mean") takes the scan's fine detail."""
        return self.fine_detail == "all" or self.fine_detail == estimate

    def check(self) -> None:
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise MedgenError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps is not None and not 1 <= self.steps <= 10000:
            raise MedgenError(f"steps must be between 1 and the model's training steps, got {self.steps}")
        if self.guidance is not None and self.guidance < 0:
            raise MedgenError(f"guidance must be 0 or more (1 = no guidance), got {self.guidance}")
        if self.variants < 1:
            raise MedgenError(f"variants must be at least 1, got {self.variants}")
        if not 0.0 <= self.eta <= 1.0:
            raise MedgenError(f"eta must be between 0 and 1, got {self.eta}")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise MedgenError(f"guidance_rescale must be between 0 and 1, got {self.guidance_rescale}")
        if self.slice_noise_correlation is not None and not 0.0 <= self.slice_noise_correlation <= 1.0:
            raise MedgenError(f"slice_noise_correlation must be between 0 and 1, got {self.slice_noise_correlation}")
        for label, value in (self.slice_noise_correlation_by_label or {}).items():
            if not 0.0 <= value <= 1.0:
                raise MedgenError(f"slice_noise_correlation_by_label must be between 0 and 1, got {value} for label {label}")
        if self.fine_detail not in ("sample", "all", "none"):
            raise MedgenError(f"fine_detail is 'sample', 'all' or 'none', got {self.fine_detail!r}")
        if self.planes_average_last is not None and self.planes_average_last < 0:
            raise MedgenError(f"planes_average_last is a number of network calls, 0 or more; got {self.planes_average_last}")
        if self.planes not in (None, "axial", "tri"):
            raise MedgenError(f"planes is 'axial' (slice by slice) or 'tri' (the three planes in turn), got {self.planes!r}")
        if self.inpaint_estimate not in INPAINT_ESTIMATES:
            raise MedgenError(
                f"unknown inpainting estimate {self.inpaint_estimate!r}; choose one of {', '.join(INPAINT_ESTIMATES)}"
            )
        if not 1 <= self.mean_draws <= 64:
            raise MedgenError(f"mean_draws must be between 1 and 64, got {self.mean_draws}")
        if self.small_region_mm < 0:
            raise MedgenError(f"small_region_mm must be 0 mm or more, got {self.small_region_mm}")
        if self.border_interpolation_mm < 0:
            raise MedgenError(f"border_interpolation_mm must be 0 mm or more, got {self.border_interpolation_mm}")
        if self.context_mm < 0 or self.feather_mm < 0:
            raise MedgenError(
                f"context and feather widths must be 0 mm or more, got {self.context_mm} and {self.feather_mm}"
            )


def resolve_options(options: SamplingOptions | None, overrides: dict[str, Any], card: Any = None) -> SamplingOptions:
    """A checked copy of `options` with `overrides` applied; guidance, slice-noise correlation, steps and
    sampler from the card once the model is known, where none was asked for."""
    options = copy.copy(options) if options is not None else SamplingOptions()
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise TypeError(f"unknown sampling option {key!r}")
        setattr(options, key, value)
    if card is not None:
        from .conditions import resolved_attributes, resolved_modality

        check_guidance(card, options.guidance)
        options.attributes = resolved_attributes(card, options.attributes) or None
        options.modality = resolved_modality(card, options.modality)
    if options.guidance is None and card is not None:
        options.guidance = card.conditioning.default_guidance if card.supports_guidance else 1.0
    if card is not None:
        resolve_planes(card, options)
    if options.slice_noise_correlation is None and card is not None:
        options.slice_noise_correlation = card.conditioning.default_slice_noise_correlation
        if options.slice_noise_correlation_by_label is None:
            by_label = getattr(card.conditioning, "slice_noise_correlation_by_label", {})
            options.slice_noise_correlation_by_label = {int(k): float(v) for k, v in by_label.items()} or None
    if card is not None:  # steps and sampler: the card's (a distilled model's own), else the engine's
        defaults = getattr(card, "sampling", None)
        if options.sampler is None:
            options.sampler = defaults.sampler if defaults is not None else DEFAULT_SAMPLER
        if options.steps is None:
            options.steps = defaults.steps if defaults is not None else DEFAULT_STEPS
    options.check()
    return options


def resolve_planes(card: Any, options: SamplingOptions) -> None:
    """Settle `options.planes` against the card: its `sampling.planes` where none was asked for; "tri" refused
    for a network not trained on all three planes, and with a slice-noise correlation (slices of every plane
    share the volume's voxels, so each voxel draws its own noise)."""
    trained = list(getattr(card.conditioning, "orientations", []))
    if options.planes is None:
        defaults = getattr(card, "sampling", None)
        options.planes = defaults.planes if defaults is not None else "axial"
    if options.planes != "tri":
        return
    if card.spatial_dims != 2 or len(trained) < 3:
        raise OptionNotSupportedError(
            f"model {card.name} cannot sample tri-planar: its network was trained on "
            f"{', '.join(trained) or 'axial'} slices only; leave planes out or give 'axial'"
        )
    if options.slice_noise_correlation not in (None, 0.0) or options.slice_noise_correlation_by_label:
        raise OptionNotSupportedError(
            "tri-planar sampling draws each voxel its own noise: a slice-noise correlation is for axial sampling; "
            "leave it out, or give planes 'axial'"
        )
    options.slice_noise_correlation, options.slice_noise_correlation_by_label = 0.0, None
    if options.planes_average_last is None:
        defaults = getattr(card, "sampling", None)
        options.planes_average_last = defaults.planes_average_last if defaults is not None else 0


def check_guidance(card: Any, guidance: float | None) -> None:
    """Refuse a guidance weight (other than 1, none) that `card`'s model cannot apply: it would run without
    it, and the result and its provenance would claim what did not happen."""
    if guidance is None or guidance == 1.0 or card.supports_guidance:
        return
    why = ("a latent model is guided on its modality only, and this one was not trained for it" if card.is_latent
           else "it was trained without dropping its conditions (condition_dropout 0)"
           if card.conditioning.label_map != "none" else "it has no condition to guide by")
    raise OptionNotSupportedError(
        f"model {card.name} cannot apply classifier-free guidance {guidance:g}: {why}; leave guidance out or give 1"
    )
