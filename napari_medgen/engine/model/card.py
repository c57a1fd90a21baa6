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

# MONAI network classes a card may name (monai.networks.nets). Anything else is refused.
ALLOWED_NETWORKS = ("DiffusionModelUNet", "SPADEDiffusionModelUNet")
ALLOWED_CONTROLNETS = ("ControlNet",)
# MONAI schedulers whose noise schedule (betas) we take; the sampling loops are ours.
ALLOWED_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
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


class SchedulerSpec(_Strict):
    class_name: str = "DDPMScheduler"
    num_train_timesteps: int = Field(1000, ge=10, le=10000)
    schedule: Literal["linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = Field(0.0015, gt=0, lt=1)
    beta_end: float = Field(0.0195, gt=0, lt=1)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"

    @field_validator("class_name")
    @classmethod
    def _allowed(cls, name: str) -> str:
        if name not in ALLOWED_SCHEDULERS:
            raise ValueError(f"scheduler {name!r} is not one of {', '.join(ALLOWED_SCHEDULERS)}")
        return name


class ModelCard(_Strict):
    """The validated contents of a model folder's model.json."""

    schema_version: int = CARD_SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    version: str = Field(min_length=1)
    description: str = ""
    license: str = Field(min_length=1)
    network: NetworkSpec
    controlnet: NetworkSpec | None = None
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
        """What every spatial size the UNet sees must be a multiple of: 2 per level below the first."""
        levels = self.network.kwargs.get("channels")
        return 2 ** (len(levels) - 1) if isinstance(levels, (list, tuple)) and levels else 1

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
