"""What both importers share: CPU-safe network arguments, a label schema from a label dictionary, MAISI's
ControlNet state, and writing the model folder (the networks built from the card, the imported tensors loaded
strictly)."""

from __future__ import annotations

import colorsys
import contextlib
import io
from pathlib import Path
from typing import Any

from ...errors import ModelCardError, ModelWeightsError
from ..card import ModelCard, parse_card
from ..labels import LabelClass, LabelSchema

# Settings that only make sense on a GPU (or that trade speed for GPU memory) -> values a CPU can run.
# norm_float16 makes MAISI's group norm emit float16, which CPU convolutions reject; the attention flag is
# set again at load time where the device allows (see diffusion.denoiser.prepare_for_inference);
# num_splits cuts convolutions into pieces to save GPU memory; checkpointing is for training.
CPU_SAFE = {"norm_float16": False, "use_flash_attention": False, "num_splits": 1, "use_checkpointing": False}


def cpu_safe(kwargs: dict[str, Any], role: str, changes: list[str]) -> dict[str, Any]:
    """`kwargs` with GPU-only settings replaced (recorded in `changes` for the card's provenance)."""
    out = dict(kwargs)
    for key, value in CPU_SAFE.items():
        if key in out and out[key] != value:
            changes.append(f"{role}.{key}: {out[key]!r} -> {value!r}")
            out[key] = value
    return out


# MONAI GenerativeModels' argument names (older bundles: the brain LDM, mednist_ddpm) -> MONAI's own.
_RENAMED_ARGUMENTS = {"num_channels": "channels"}


def monai_arguments(class_name: str, kwargs: dict[str, Any], role: str, changes: list[str]) -> dict[str, Any]:
    """`kwargs` with GenerativeModels' former argument names renamed to MONAI's (MAISI's classes keep theirs)."""
    if class_name.endswith("Maisi"):
        return kwargs
    out = dict(kwargs)
    for old, new in _RENAMED_ARGUMENTS.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
            changes.append(f"{role}.{old} -> {new} (MONAI's name for GenerativeModels' argument)")
    return out


def label_color(index: int) -> str:
    """A deterministic, well-spread colour per label index (golden-ratio hues; background black)."""
    if index == 0:
        return "#000000"
    hue = (index * 0.618033988749895) % 1.0
    saturation = 0.55 + 0.35 * ((index * 7) % 3) / 2
    value = 0.95 - 0.25 * ((index * 5) % 2)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def schema_from_label_dict(names_to_index: dict[str, Any], where: str) -> LabelSchema:
    """A label schema from a name -> index dictionary (MAISI's label_dict.json), background added as 0."""
    if not isinstance(names_to_index, dict) or not names_to_index:
        raise ModelCardError(f"{where}: a label dictionary must map names to integer indices")
    classes: dict[int, str] = {}
    for name, index in names_to_index.items():
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= 65535:
            raise ModelCardError(f"{where}: label {name!r} has index {index!r}; indices must be integers 0..65535")
        if index in classes:
            raise ModelCardError(f"{where}: labels {classes[index]!r} and {name!r} share index {index}")
        classes[index] = str(name).strip() or f"label {index}"
    classes.setdefault(0, "background")
    seen: set[str] = set()
    out = []
    for index in sorted(classes):
        name = classes[index]
        if name.lower() in seen:  # the schema needs unique names: keep both, told apart by index
            name = f"{name} ({index})"
        seen.add(name.lower())
        out.append(LabelClass(index=index, name=name, color=label_color(index)))
    return LabelSchema(classes=out)


def build_card(raw: dict[str, Any], source: str) -> ModelCard:
    """The card of an import (validated like any card)."""
    return parse_card(raw, source=f"card made from {source}")


def fitted_networks(card: ModelCard, states: dict[str, dict[str, Any]], source: str) -> dict[str, Any]:
    """The card's MONAI networks with the imported state dicts loaded strictly (every key, every shape)."""
    from ..networks import build_networks

    networks = build_networks(card)
    for role, module in networks.items():
        state = states.get(role)
        if state is None:
            raise ModelWeightsError(f"{source}: no weights for the {role}")
        expected = module.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or wrong:
            details = "; ".join(
                f"{what} {', '.join(keys[:3])}" for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys
            )
            raise ModelWeightsError(
                f"{source}: the {role} weights do not fit the network its config describes ({details}); the config and "
                "the checkpoint come from different models"
            )
        module.load_state_dict(state, strict=True)
    return networks


def mapped_old_state(module: Any, state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with MONAI GenerativeModels' former key names mapped by MONAI's own `load_old_state_dict`
    (where the network has it and the names differ); otherwise `state` unchanged."""
    expected = module.state_dict()
    if all(k in expected for k in state) or not hasattr(module, "load_old_state_dict"):
        return state
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its diagnostics
        module.load_old_state_dict(state)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def write_model(card: ModelCard, networks: dict[str, Any], out_folder: str | Path) -> Path:
    """Write card + safetensors (the project's one writer)."""
    from ..weights import save_model

    return save_model(card, networks, out_folder)


def controlnet_state(card: Any, unet_state: dict[str, Any], control_state: dict[str, Any]) -> dict[str, Any]:
    """MAISI's ControlNet load: the UNet's weights copied wherever names and shapes match (MONAI's
    copy_model_state), then the ControlNet checkpoint over them. Both importers load a MAISI ControlNet so."""
    from ..networks import build_networks

    expected = build_networks(card, device="meta")["controlnet"].state_dict()
    state = {k: v for k, v in unet_state.items() if k in expected and tuple(v.shape) == tuple(expected[k].shape)}
    state.update(control_state)
    return state
