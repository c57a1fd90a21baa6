"""The model card (`model.json`): everything needed to build, load and use a model safely.

A model is a folder holding `model.json` (this schema) and `weights.safetensors`. Networks are
named MONAI classes from an allow-list with their keyword arguments; nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ModelCardError
from .labels import LabelSchema

CARD_FILE = "model.json"
CARD_SCHEMA_VERSION = 1

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


class _Strict(BaseModel):
    # No NaN or infinity in any number of a card: they would pass every range check (NaN <= 0 is False).
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class NetworkSpec(_Strict):
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


class IntensityNormalization(_Strict):
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


class Conditioning(_Strict):
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

    @field_validator("slice_noise_correlation_by_label")
    @classmethod
    def _correlations(cls, by_label: dict[str, float]) -> dict[str, float]:
        for key, value in by_label.items():
            if not key.isdigit() or not 0.0 <= value <= 1.0:
                raise ValueError(f"slice_noise_correlation_by_label needs label indices and values in 0..1, got {key!r}: {value}")
        return by_label


class AtlasSpec(_Strict):
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


class SamplingDefaults(_Strict):
    """How the model is meant to be sampled when the user asks for nothing else: a distilled few-step model
    was trained for its own step count and sampler (other settings would leave its training); a teacher's
    sampler is chosen by measurement. `reason` says why, for the user reading the card."""

    steps: int = Field(ge=1, le=10000)
    sampler: str = Field(min_length=1)
    reason: str = ""

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, name: str) -> str:
        from ..diffusion.methods import SAMPLERS

        if name not in SAMPLERS:
            raise ValueError(f"sampler {name!r} is not one of {', '.join(SAMPLERS)}")
        return name


class SchedulerSpec(_Strict):
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


class LatentSpec(_Strict):
    """A latent model: the diffusion runs in an autoencoder's compressed space, and what else it is fed.

    Images enter the autoencoder in ``image_range`` (the card's normalization maps intensities to [-1, 1],
    then linearly to this range; MAISI's CT autoencoder takes [0, 1] for -1000..1000 HU). Latents are the
    encoder's mean times ``scale_factor``. ``array_layout`` is the array order the networks were trained
    in: ``zyx`` (this project's canonical LPS order) or ``ras_xyz`` (MAISI: (x, y, z) arrays oriented RAS).
    """

    scale_factor: float = Field(gt=0)
    latent_channels: int = Field(ge=1, le=64)
    compression: int = Field(4, ge=1, le=16, description="down-sampling of the autoencoder per axis")
    image_range: tuple[float, float] = (-1.0, 1.0)
    array_layout: Literal["zyx", "ras_xyz"] = "zyx"
    # Conditioning beside the label map: the voxel spacing (mm x spacing_scale, in the layout's axis order;
    # the label map is then used at its own spacing, not resampled), a modality code (class_labels), and
    # body-region one-hot indices (top and bottom region, each region a list of label indices; x 100).
    spacing_input: bool = False
    spacing_scale: float = Field(100.0, gt=0)
    modality_code: int | None = Field(None, ge=0)
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
        if len(self.decode_tile) != 3 or min(self.decode_tile) < 1:
            raise ValueError("latent decode_tile needs 3 positive sizes")
        return self


class ModelCard(_Strict):
    """The validated contents of a model folder's model.json."""

    schema_version: int = CARD_SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    version: str = Field(min_length=1)
    description: str = ""
    license: str = Field(min_length=1)
    network: NetworkSpec
    controlnet: NetworkSpec | None = None
    autoencoder: NetworkSpec | None = None  # latent models only, with `latent`
    latent: LatentSpec | None = None
    spatial_dims: Literal[2, 3]
    tile_size: list[int] = Field(description="2-D slice or 3-D tile size the model was trained on, (x, y[, z])")
    spacing_mm: list[float] = Field(description="voxel spacing the model works at, (x, y[, z]) in mm")
    modality: Literal["MR", "CT", "other"] = "MR"
    normalization: IntensityNormalization
    label_schema: LabelSchema
    conditioning: Conditioning
    scheduler: SchedulerSpec
    tasks: list[Literal["generate", "inpaint"]] = Field(min_length=1)
    weights: str = "weights.safetensors"
    atlas: AtlasSpec | None = None
    sampling: SamplingDefaults | None = None  # default steps and sampler; None: SamplingOptions' own
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("network")
    @classmethod
    def _network_allowed(cls, spec: NetworkSpec) -> NetworkSpec:
        if spec.class_name not in ALLOWED_NETWORKS:
            raise ValueError(f"network {spec.class_name!r} is not one of {', '.join(ALLOWED_NETWORKS)}")
        return spec

    @field_validator("controlnet")
    @classmethod
    def _controlnet_allowed(cls, spec: NetworkSpec | None) -> NetworkSpec | None:
        if spec is not None and spec.class_name not in ALLOWED_CONTROLNETS:
            raise ValueError(f"controlnet {spec.class_name!r} is not one of {', '.join(ALLOWED_CONTROLNETS)}")
        return spec

    @field_validator("autoencoder")
    @classmethod
    def _autoencoder_allowed(cls, spec: NetworkSpec | None) -> NetworkSpec | None:
        if spec is not None and spec.class_name not in ALLOWED_AUTOENCODERS:
            raise ValueError(f"autoencoder {spec.class_name!r} is not one of {', '.join(ALLOWED_AUTOENCODERS)}")
        return spec

    @field_validator("weights")
    @classmethod
    def _weights_inside(cls, name: str) -> str:
        path = Path(name)
        if path.is_absolute() or ".." in path.parts or path.suffix != ".safetensors":
            raise ValueError(f"weights must be a .safetensors file inside the model folder, got {name!r}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        n = self.spatial_dims
        if len(self.tile_size) != n or len(self.spacing_mm) != n:
            raise ValueError(f"tile_size and spacing_mm need {n} entries for a {n}-D model")
        if min(self.spacing_mm) <= 0 or min(self.tile_size) < 8:
            raise ValueError("spacing_mm must be positive and tile_size at least 8")
        kwargs = self.network.kwargs
        if kwargs.get("spatial_dims", n) != n:
            raise ValueError(f"network spatial_dims {kwargs.get('spatial_dims')} differs from the card's {n}")
        if (self.autoencoder is None) != (self.latent is None):
            raise ValueError("a latent model needs both 'autoencoder' and 'latent'; a pixel model neither")
        if self.latent is not None:
            return self._consistent_latent()
        if self.network.class_name in MAISI_NETWORKS or (
            self.controlnet is not None and self.controlnet.class_name in MAISI_NETWORKS
        ):
            raise ValueError("MAISI's networks work in an autoencoder's latent space: the card needs 'latent'")
        if self.scheduler.rectified_flow:
            raise ValueError("rectified flow (RFlowScheduler) is supported for latent models only")
        cond = self.conditioning
        # Every mode feeds the UNet a fixed channel stack (SPADE and ControlNet take the labels
        # elsewhere), so in_channels must always match it, not only when labels are channels.
        expected = self.input_channels
        if kwargs.get("in_channels") != expected:
            raise ValueError(
                f"network in_channels is {kwargs.get('in_channels')} but the conditioning needs {expected}"
            )
        if kwargs.get("out_channels", 1) != 1:
            raise ValueError(
                f"network out_channels is {kwargs.get('out_channels')}; the samplers need one output channel "
                "(the noise, v or image prediction)"
            )
        divisor = self.downsampling_factor
        if any(size % divisor for size in self.tile_size):
            raise ValueError(
                f"tile_size {self.tile_size} must be a multiple of {divisor} (the network down-samples "
                f"{divisor.bit_length() - 1} times)"
            )
        if self.controlnet is not None:
            control = self.controlnet.kwargs
            if control.get("spatial_dims", n) != n:
                raise ValueError(f"controlnet spatial_dims {control.get('spatial_dims')} differs from the card's {n}")
            if control.get("in_channels") != expected:
                raise ValueError(f"controlnet in_channels is {control.get('in_channels')} but needs {expected}")
            if cond.label_map == "controlnet" and control.get("conditioning_embedding_in_channels", 1) != self.num_label_channels:
                raise ValueError(
                    "controlnet conditioning_embedding_in_channels must equal the number of schema classes "
                    f"({self.num_label_channels})"
                )
        if cond.label_map == "spade" and self.network.class_name != "SPADEDiffusionModelUNet":
            raise ValueError("label_map 'spade' needs network SPADEDiffusionModelUNet")
        if cond.label_map == "spade" and kwargs.get("label_nc") != self.num_label_channels:
            raise ValueError(f"SPADE label_nc must equal the number of schema classes ({self.num_label_channels})")
        if cond.label_map == "controlnet" and self.controlnet is None:
            raise ValueError("label_map 'controlnet' needs a controlnet network")
        if cond.class_index is not None and kwargs.get("num_class_embeds") != cond.class_index:
            raise ValueError("class_index conditioning needs num_class_embeds equal to class_index")
        if "inpaint" in self.tasks and self.spatial_dims not in (2, 3):
            raise ValueError("inpainting needs a 2-D or 3-D model")
        if self.tasks == ["inpaint"] and not cond.known_image:
            pass  # RePaint-style inpainting works with any model
        return self

    def _consistent_latent(self) -> ModelCard:
        """The checks of a latent model: channels against the latent, the ControlNet's label channels."""
        assert self.latent is not None and self.autoencoder is not None
        latent, n, cond = self.latent, self.spatial_dims, self.conditioning
        if n != 3:
            raise ValueError("latent models are 3-D (spatial_dims 3)")
        if cond.label_map not in ("none", "controlnet") or cond.known_image or cond.slice_position:
            raise ValueError(
                "a latent model takes the label map through a ControlNet (label_map 'controlnet' or 'none'); "
                "known-image and slice-position channels are for pixel models"
            )
        if cond.condition_dropout > 0:
            raise ValueError("classifier-free guidance is not supported for latent models (condition_dropout 0)")
        for role, spec in (("network", self.network), ("controlnet", self.controlnet), ("autoencoder", self.autoencoder)):
            if spec is not None and spec.kwargs.get("spatial_dims", n) != n:
                raise ValueError(f"{role} spatial_dims {spec.kwargs.get('spatial_dims')} differs from the card's {n}")
        kwargs = self.network.kwargs
        c = latent.latent_channels
        if kwargs.get("in_channels") != c or kwargs.get("out_channels", c) != c:
            raise ValueError(f"a latent UNet's in_channels and out_channels must equal latent_channels ({c})")
        if self.autoencoder.kwargs.get("latent_channels", c) != c:
            raise ValueError(f"autoencoder latent_channels {self.autoencoder.kwargs.get('latent_channels')} differs from {c}")
        if cond.label_map == "controlnet" and self.controlnet is None:
            raise ValueError("label_map 'controlnet' needs a controlnet network")
        if self.controlnet is not None:
            control = self.controlnet.kwargs
            if control.get("in_channels") != c:
                raise ValueError(f"controlnet in_channels is {control.get('in_channels')} but needs {c}")
            wanted = latent.label_bits if latent.label_encoding == "bits" else self.num_label_channels
            if control.get("conditioning_embedding_in_channels", 1) != wanted:
                raise ValueError(
                    f"controlnet conditioning_embedding_in_channels must be {wanted} "
                    f"({'label bit-planes' if latent.label_encoding == 'bits' else 'one per schema class'})"
                )
            if latent.label_encoding == "bits" and self.label_schema.max_index >= 2**latent.label_bits:
                raise ValueError(f"label index {self.label_schema.max_index} does not fit in {latent.label_bits} bits")
        if latent.modality_code is not None and kwargs.get("num_class_embeds") is None:
            raise ValueError("a modality_code needs a network with num_class_embeds")
        if latent.spacing_input and self.network.class_name != "DiffusionModelUNetMaisi":
            raise ValueError("spacing_input needs network DiffusionModelUNetMaisi (include_spacing_input)")
        if latent.body_regions is not None and not kwargs.get("include_top_region_index_input"):
            raise ValueError("body_regions needs a network with include_top_region_index_input")
        if latent.body_label is not None and latent.body_label not in self.label_schema.indices:
            raise ValueError(f"body_label {latent.body_label} is not in the label schema")
        if self.scheduler.rectified_flow and self.scheduler.prediction_type != "v_prediction":
            raise ValueError("rectified flow predicts the velocity: prediction_type must be 'v_prediction'")
        divisor = self.downsampling_factor
        if any(size % divisor for size in self.tile_size):
            raise ValueError(f"tile_size {self.tile_size} must be a multiple of {divisor} (compression x UNet levels)")
        return self

    # -- derived ------------------------------------------------------------------------------
    @property
    def num_label_channels(self) -> int:
        """One-hot channels: one per schema index 0..max (gaps stay as empty channels)."""
        return self.label_schema.max_index + 1

    @property
    def position_channels(self) -> int:
        return 2 * self.conditioning.position_frequencies if self.conditioning.slice_position else 0

    @property
    def input_channels(self) -> int:
        cond = self.conditioning
        return (
            1
            + (self.num_label_channels if cond.label_map == "channels" else 0)
            + (2 if cond.known_image else 0)
            + self.position_channels
        )

    @property
    def downsampling_factor(self) -> int:
        """What every spatial size of an image must be a multiple of: 2 per UNet level below the first
        (MAISI's UNet names its levels `num_channels`), times the autoencoder's compression for latent models."""
        levels = self.network.kwargs.get("channels", self.network.kwargs.get("num_channels"))
        factor = 2 ** (len(levels) - 1) if isinstance(levels, (list, tuple)) and levels else 1
        return factor * (self.latent.compression if self.latent is not None else 1)

    @property
    def is_latent(self) -> bool:
        return self.latent is not None

    @property
    def supports_guidance(self) -> bool:
        return self.conditioning.condition_dropout > 0 and self.conditioning.label_map != "none"

    def conditioning_summary(self) -> str:
        cond = self.conditioning
        parts = []
        if cond.label_map != "none":
            parts.append(f"label map ({cond.label_map})")
        if cond.known_image:
            parts.append("known image + mask")
        if cond.slice_position:
            parts.append("slice position")
        if cond.class_index:
            parts.append(f"class index ({cond.class_index})")
        return ", ".join(parts) or "none"


def load_card(folder: str | Path) -> ModelCard:
    """Read and validate `folder/model.json`; ModelCardError says which field is wrong."""
    folder = Path(folder)
    path = folder / CARD_FILE
    if not path.is_file():
        raise ModelCardError(f"{folder}: no {CARD_FILE}; a model folder needs a card and weights.safetensors")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ModelCardError(f"{path}: cannot be read ({error.strerror or error}); check its permissions") from None
    except UnicodeDecodeError as error:
        raise ModelCardError(f"{path}: not valid JSON ({error}); fix the card or re-export the model") from None
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ModelCardError(
            f"{path}: not valid JSON ({str(error)[:200] or 'nested too deeply'}); fix the card or re-export the model"
        ) from None
    return parse_card(raw, source=str(path))


def parse_card(raw: Any, source: str = "model card") -> ModelCard:
    if not isinstance(raw, dict):
        raise ModelCardError(f"{source}: the card must be a JSON object; fix the card or re-export the model")
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        # Checks across fields (in_channels against the conditioning, ...) have no location; their
        # message names the fields.
        what = f"field '{where}': {first['msg']}" if where else first["msg"]
        raise ModelCardError(
            f"{source}: {what} ({error.error_count()} problem(s) in all); fix the card or re-export the model"
        ) from None


def save_card(card: ModelCard, folder: str | Path) -> Path:
    folder = Path(folder)
    path = folder / CARD_FILE
    tmp = folder / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
