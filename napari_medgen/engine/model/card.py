"""The model card (`model.json`): everything needed to build, load and use a model safely.

A model is a folder holding `model.json` (this schema) and `weights.safetensors`. Networks are
named MONAI classes from an allow-list with their keyword arguments; nothing is ever unpickled.
This module holds the card itself (its sections, in `card_sections`, checked against each other, and
what is derived from them) and reading, validating and writing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import ModelCardError
from .card_sections import (
    ALLOWED_AUTOENCODERS,
    ALLOWED_CONTROLNETS,
    ALLOWED_NETWORKS,
    MAISI_NETWORKS,
    AtlasSpec,
    Conditioning,
    IntensityNormalization,
    LatentSpec,
    NetworkSpec,
    SamplingDefaults,
    SchedulerSpec,
    StrictModel,
)
from .labels import LabelSchema

CARD_FILE = "model.json"
CARD_SCHEMA_VERSION = 1
# The allow-list each network role's class is checked against.
_ALLOWED_CLASSES = {"network": ALLOWED_NETWORKS, "controlnet": ALLOWED_CONTROLNETS, "autoencoder": ALLOWED_AUTOENCODERS}


class ModelCard(StrictModel):
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
    reduced_precision: bool = Field(
        True, description="whether `--precision auto` may run the model in bf16 / fp16 (false: always fp32 unless asked)"
    )
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("network", "controlnet", "autoencoder")
    @classmethod
    def _class_allowed(cls, spec: NetworkSpec | None, info: ValidationInfo) -> NetworkSpec | None:
        allowed = _ALLOWED_CLASSES[info.field_name]
        if spec is not None and spec.class_name not in allowed:
            raise ValueError(f"{info.field_name} {spec.class_name!r} is not one of {', '.join(allowed)}")
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
        for role, spec in (("network", self.network), ("controlnet", self.controlnet), ("autoencoder", self.autoencoder)):
            if spec is not None and spec.kwargs.get("spatial_dims", n) != n:
                raise ValueError(f"{role} spatial_dims {spec.kwargs.get('spatial_dims')} differs from the card's {n}")
        if (self.autoencoder is None) != (self.latent is None):
            raise ValueError("a latent model needs both 'autoencoder' and 'latent'; a pixel model neither")
        if self.conditioning.label_map == "controlnet" and self.controlnet is None:
            raise ValueError("label_map 'controlnet' needs a controlnet network")
        if self.latent is not None:
            return self._consistent_latent()
        if self.conditioning.context:
            raise ValueError("context attributes are supported for latent models only")
        kwargs = self.network.kwargs
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
        if cond.class_index is not None and kwargs.get("num_class_embeds") != cond.class_index:
            raise ValueError("class_index conditioning needs num_class_embeds equal to class_index")
        if cond.orientations:
            if self.spatial_dims != 2 or cond.class_index is not None:
                raise ValueError("orientations are for 2-D models without class_index (both use the class embedding)")
            if kwargs.get("num_class_embeds") != len(cond.orientations) or len(set(cond.orientations)) != len(cond.orientations):
                raise ValueError("orientations need distinct planes and num_class_embeds equal to their number")
        if self.sampling is not None and self.sampling.planes == "tri" and len(cond.orientations) < 3:
            raise ValueError("tri-planar sampling (sampling.planes 'tri') needs a network trained on all three orientations")
        return self  # inpainting needs no known-image channels: RePaint's walk works with any model

    def _consistent_latent(self) -> ModelCard:
        """The checks of a latent model: channels against the latent, the ControlNet's label channels."""
        assert self.latent is not None and self.autoencoder is not None
        latent, n, cond = self.latent, self.spatial_dims, self.conditioning
        if n == 2 and (cond.label_map != "none" or self.tasks != ["generate"] or latent.array_layout == "zyx"):
            raise ValueError("a 2-D latent model generates slices from noise only (label_map 'none', tasks ['generate'], "
                             "an x-y array_layout)")
        if cond.label_map not in ("none", "controlnet") or cond.known_image or cond.slice_position:
            raise ValueError(
                "a latent model takes the label map through a ControlNet (label_map 'controlnet' or 'none'); "
                "known-image and slice-position channels are for pixel models"
            )
        if cond.condition_dropout > 0:
            raise ValueError("classifier-free guidance is not supported for latent models (condition_dropout 0)")
        kwargs = self.network.kwargs
        c = latent.latent_channels
        extra = len(cond.context) if cond.context_channels else 0
        if kwargs.get("in_channels") != c + extra or kwargs.get("out_channels", c) != c:
            raise ValueError(
                f"a latent UNet's in_channels must be latent_channels ({c}) + context channels ({extra}) and its "
                f"out_channels latent_channels"
            )
        if cond.context and (not kwargs.get("with_conditioning") or kwargs.get("cross_attention_dim") != len(cond.context)):
            raise ValueError(f"context attributes need a UNet with_conditioning and cross_attention_dim {len(cond.context)}")
        if not cond.context and (kwargs.get("with_conditioning") or cond.context_channels):
            raise ValueError("a UNet with_conditioning needs the card's conditioning.context attributes")
        if self.autoencoder.kwargs.get("latent_channels", c) != c:
            raise ValueError(f"autoencoder latent_channels {self.autoencoder.kwargs.get('latent_channels')} differs from {c}")
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
        if self.latent is not None:
            return self.latent.modality_guidance
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
        if cond.orientations:
            parts.append("slice plane (" + ", ".join(cond.orientations) + ")")
        if cond.context:
            parts.append("context " + ", ".join(a.name for a in cond.context))
        if self.latent is not None and self.latent.modality_code is not None:
            parts.append(f"modality {self.latent.modality_code}" + (" (guided)" if self.latent.modality_guidance else ""))
        return ", ".join(parts) or "none"

    @property
    def takes_label_map(self) -> bool:
        """Whether the model is conditioned on a label map (else it generates on a grid alone)."""
        return self.conditioning.label_map != "none"


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
    """Validate a card's parsed JSON; ModelCardError names the first wrong field and `source`."""
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
    """Write `folder/model.json` atomically (a temporary file replaced into place)."""
    folder = Path(folder)
    path = folder / CARD_FILE
    tmp = folder / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
