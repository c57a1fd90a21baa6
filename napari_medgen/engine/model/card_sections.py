"""The sections of a model card (pydantic models: network, normalization, conditioning, atlas, sampling
defaults, scheduler, latent space) and the allow-lists of MONAI classes they check names against. `card`
assembles them into the `ModelCard` and checks them against each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# MONAI network classes a card may name (monai.networks.nets, or MAISI's in
# monai.apps.generation.maisi.networks: the *Maisi names). Anything else is refused.
ALLOWED_NETWORKS = ("DiffusionModelUNet", "SPADEDiffusionModelUNet", "DiffusionModelUNetMaisi")
ALLOWED_CONTROLNETS = ("ControlNet", "ControlNetMaisi")
ALLOWED_AUTOENCODERS = ("AutoencoderKL", "AutoencoderKlMaisi")
MAISI_NETWORKS = ("DiffusionModelUNetMaisi", "ControlNetMaisi", "AutoencoderKlMaisi")
# MONAI schedulers whose noise schedule (betas) we take; the sampling loops are ours. RFlowScheduler:
# rectified flow (velocity prediction), a latent model's only (MAISI's).
ALLOWED_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "RFlowScheduler")
# Keyword arguments that would let a card reach outside the network's constructor are refused.
_FORBIDDEN_KWARGS = {"__class__", "__init__", "state_dict", "path", "file", "filename"}


class StrictModel(BaseModel):
    """A card section: no unknown keys, no NaN or infinity."""

    # No NaN or infinity in any number of a card: they would pass every range check (NaN <= 0 is False).
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class NetworkSpec(StrictModel):
    """A MONAI network class and its constructor's keyword arguments."""

    class_name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kwargs")
    @classmethod
    def _plain_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        bad = set(kwargs) & _FORBIDDEN_KWARGS
        if bad:
            raise ValueError(f"keyword arguments {sorted(bad)} are not allowed")
        return kwargs


class IntensityNormalization(StrictModel):
    """How scan intensities map to the network's [-1, 1] and back.

    ``mri_percentile``: the background value maps to -1 and the image's own ``high_percentile`` of its
    foreground to +1 (MR intensities have no absolute scale); generated images (no image to take
    percentiles from) map back to ``output_min``..``output_max``. ``ct_window``: ``window_min``..``window_max`` HU map to [-1, 1] and back.
    """

    kind: Literal["mri_percentile", "ct_window"]
    high_percentile: float = Field(99.5, gt=50, le=100)
    window_min: float | None = None
    window_max: float | None = None
    output_min: float = 0.0
    output_max: float = 1000.0
    background: float = Field(0.0, description="intensity of voxels outside the body / brain")
    background_label: int | None = Field(
        None,
        ge=0,
        description="label whose voxels are exactly `background` in a generated image (the scans it learned from "
        "are exactly that there, e.g. a skull-stripped brain); None: left as generated",
    )
    label_levels: dict[str, float] | None = Field(
        None,
        description="each tissue label's median intensity on the network's scale in the training data; inpainting "
        "maps the known voxels' tissue medians of another scan onto them (intensity harmonisation)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> IntensityNormalization:
        if self.kind == "ct_window" and (
            self.window_min is None or self.window_max is None or self.window_max <= self.window_min
        ):
            raise ValueError("a CT window needs window_min < window_max (in HU)")
        if self.output_max <= self.output_min:
            raise ValueError("output_max must exceed output_min")
        return self


class ContextAttribute(StrictModel):
    """One entry of the context vector a network is conditioned on (the zoo's brain LDM: sex, age, ventricular and
    brain volume), in the vector's order: the value the user gives, its range and its default (the publisher's)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    label: str = ""
    minimum: float = 0.0
    maximum: float = 1.0
    default: float
    unit: str = ""

    @model_validator(mode="after")
    def _in_range(self) -> ContextAttribute:
        if not self.minimum < self.maximum or not self.minimum <= self.default <= self.maximum:
            raise ValueError(f"context attribute {self.name!r} needs minimum < maximum and its default between them")
        return self


class Conditioning(StrictModel):
    """What the network is conditioned on, and how (which extra input channels, in this order).

    Input channels of a channel-concatenating UNet: the noisy image (1), then the label map one-hot
    (one channel per schema class, if ``label_map``), then the known image and the inpainting mask
    (2, if ``known_image``), then the slice position embedding (2 * ``position_frequencies``, if
    ``slice_position``). SPADE networks take the label map through their ``seg`` input instead.
    """

    label_map: Literal["none", "channels", "spade", "controlnet"] = "channels"
    known_image: bool = False
    slice_position: bool = False
    position_frequencies: int = Field(4, ge=1, le=32)
    class_index: int | None = Field(None, ge=1, description="number of classes / modalities embedded")
    condition_dropout: float = Field(
        0.0, ge=0, lt=1, description="probability the label map was dropped in training (>0: guidance works)"
    )
    default_guidance: float = Field(
        1.0, ge=0, le=20, description="classifier-free guidance weight used when none is asked for (1 = none)"
    )
    default_slice_noise_correlation: float = Field(
        0.0, ge=0, le=1, description="2-D models: correlation of the noise of different slices when none is asked for"
    )
    # Trained with the label channels sometimes carrying tissue fractions (partial volume) instead of the one-hot,
    # the network takes either at inference: hard painted labels, or fractions from a segmentation's probabilities.
    tissue_fractions: bool = Field(
        False, description="the label channels also take tissue fractions (each voxel's share of every class)"
    )
    # A tissue's texture continues through slices as the tissue does (white matter smooth, folded grey matter
    # changing from slice to slice), so a card may give some labels their own correlation.
    slice_noise_correlation_by_label: dict[str, float] = Field(
        default_factory=dict,
        description="2-D models: the slice-noise correlation of the voxels of these label indices, when none is "
        "asked for; other voxels use default_slice_noise_correlation",
    )

    # The slice plane each 2-D sample was cut in, given to the network as its class embedding (index in this
    # list): one network for axial, coronal and sagittal slices, which tri-planar sampling needs. Empty: axial only.
    orientations: list[Literal["axial", "coronal", "sagittal"]] = Field(
        default_factory=list,
        description="2-D models: the slice planes the network was trained on, embedded as class labels (index here)",
    )

    # A context vector (cross-attention context; with `context_channels` also broadcast as extra input channels
    # after the latent, as the brain LDM's sampler feeds it). Latent models only.
    context: list[ContextAttribute] = Field(default_factory=list)
    context_channels: bool = False

    @field_validator("slice_noise_correlation_by_label")
    @classmethod
    def _correlations(cls, by_label: dict[str, float]) -> dict[str, float]:
        for key, value in by_label.items():
            if not key.isdigit() or not 0.0 <= value <= 1.0:
                raise ValueError(f"slice_noise_correlation_by_label needs label indices and values in 0..1, got {key!r}: {value}")
        return by_label


class AtlasSpec(StrictModel):
    """The atlas labels are made from on a user's scan: an image and its label map in the card's schema, on one
    grid; each a file inside the model folder, or ``sample:<file>`` for the package's shipped sample folder."""

    image: str = Field(min_length=1)
    labels: str = Field(min_length=1)
    description: str = ""

    @field_validator("image", "labels")
    @classmethod
    def _inside(cls, name: str) -> str:
        path = Path(name.removeprefix("sample:"))
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"atlas files must lie inside the model folder (or be sample:<file>), got {name!r}")
        return name


class SamplingDefaults(StrictModel):
    """How the model is meant to be sampled when the user asks for nothing else: a distilled few-step model
    was trained for its own step count and sampler (other settings would leave its training); a teacher's
    sampler is chosen by measurement. `reason` says why, for the user reading the card."""

    steps: int = Field(ge=1, le=10000)
    sampler: str = Field(min_length=1)
    # "tri": each step runs the network on the slices of one plane, the planes in turn (needs orientations).
    planes: Literal["axial", "tri"] = "axial"
    # Tri-planar: on this many last network calls, all three planes are run and their estimates averaged (MADM /
    # TOSM's ending); each such call costs three.
    planes_average_last: int = Field(0, ge=0, le=10000)
    reason: str = ""

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, name: str) -> str:
        from ..diffusion.methods import SAMPLERS

        if name not in SAMPLERS:
            raise ValueError(f"sampler {name!r} is not one of {', '.join(SAMPLERS)}")
        return name


class SchedulerSpec(StrictModel):
    """The MONAI scheduler whose noise schedule (betas, or rectified flow's settings) the samplers use."""

    class_name: str = "DDPMScheduler"
    num_train_timesteps: int = Field(1000, ge=10, le=10000)
    schedule: Literal["linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = Field(0.0015, gt=0, lt=1)
    beta_end: float = Field(0.0195, gt=0, lt=1)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    # RFlowScheduler only (MONAI's arguments of the same names; its prediction is always the velocity):
    use_discrete_timesteps: bool = True
    use_timestep_transform: bool = False
    base_img_size_numel: int = Field(32 * 32 * 32, ge=1)
    transform_scale: float = Field(1.0, gt=0)

    @field_validator("class_name")
    @classmethod
    def _allowed(cls, name: str) -> str:
        if name not in ALLOWED_SCHEDULERS:
            raise ValueError(f"scheduler {name!r} is not one of {', '.join(ALLOWED_SCHEDULERS)}")
        return name

    @property
    def rectified_flow(self) -> bool:
        return self.class_name == "RFlowScheduler"


class LatentSpec(StrictModel):
    """A latent model: the diffusion runs in an autoencoder's compressed space, and what else it is fed.

    Images enter the autoencoder in ``image_range`` (the card's normalization maps intensities to [-1, 1],
    then linearly to this range; MAISI's CT autoencoder takes [0, 1] for -1000..1000 HU). Latents are the
    encoder's mean times ``scale_factor``. ``array_layout`` is the array order the networks were trained
    in: ``zyx`` (this project's canonical LPS order), ``ras_xyz`` (MAISI, MONAI's Orientationd("RAS"): (x, y, z)
    arrays, x towards the right) or ``las_xyz`` (the brain LDM's saved affine: x towards the left). A 2-D latent
    model works slice by slice along z in the same in-plane order.
    """

    scale_factor: float = Field(gt=0)
    latent_channels: int = Field(ge=1, le=64)
    compression: int = Field(4, ge=1, le=16, description="down-sampling of the autoencoder per axis")
    image_range: tuple[float, float] = (-1.0, 1.0)
    array_layout: Literal["zyx", "ras_xyz", "las_xyz"] = "zyx"
    # Conditioning beside the label map: the voxel spacing (mm x spacing_scale, in the layout's axis order;
    # the label map is then used at its own spacing, not resampled), a modality code (class_labels), and
    # body-region one-hot indices (top and bottom region, each region a list of label indices; x 100).
    spacing_input: bool = False
    spacing_scale: float = Field(100.0, gt=0)
    modality_code: int | None = Field(None, ge=0)
    # The modality codes a user may choose by name (MAISI's modality_mapping.json, those of the model's kind), and
    # whether the model is sampled with classifier-free guidance on the modality (class label 0 = unconditional,
    # as MAISI's diff_model_infer does it).
    modalities: dict[str, int] = Field(default_factory=dict)
    modality_guidance: bool = False
    body_regions: list[list[int]] | None = None
    body_region_scale: float = Field(100.0, gt=0)
    # How the label map reaches the ControlNet: one-hot (one channel per schema index) or its bit-planes
    # (MAISI: 8 channels, bit k of the label index).
    label_encoding: Literal["one_hot", "bits"] = "one_hot"
    label_bits: int = Field(8, ge=1, le=16)
    # The body envelope label the model expects on every body voxel no organ label covers (MAISI: 200).
    body_label: int | None = Field(None, ge=1)
    # Decoding tiles (latent voxels per axis, layout order) and their overlap: bounded memory for large volumes.
    decode_tile: list[int] = Field(default_factory=lambda: [32, 32, 32])
    decode_overlap: float = Field(0.25, ge=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> LatentSpec:
        if self.image_range[1] <= self.image_range[0]:
            raise ValueError("latent image_range must be (low, high) with low < high")
        if len(self.decode_tile) not in (2, 3) or min(self.decode_tile) < 1:
            raise ValueError("latent decode_tile needs a positive size per axis")
        if self.modality_guidance and self.modality_code is None:
            raise ValueError("modality_guidance needs a modality_code")
        return self
