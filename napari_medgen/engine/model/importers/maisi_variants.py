"""Which NV-Generate-CTMR variant an import reads, and its files, as the publisher's configs name them.

The four variants (`rflow-ct`, `ddpm-ct`, `rflow-mr`, `rflow-mr-brain`) share one checkout: their environment
configs (``configs/environment_<variant>.json``, else ``configs/environment_maisi_diff_model_<variant>.json``)
name each variant's checkpoints, and ``configs/config_maisi_diff_model_<variant>.json`` its modality, guidance,
size and spacing. A checkpoint the environment names as null, or does not name (the MR models have no ControlNet;
MR-brain's environment gives its UNet as ``model_dir`` + ``model_filename``), is never filled in with another
variant's file: the import goes without it where the model needs none, and otherwise refuses naming the option
that gives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ModelCardError, ModelWeightsError
from .safe_config import SafeConfig

VARIANTS = ("rflow-ct", "ddpm-ct", "rflow-mr", "rflow-mr-brain")
# The command-line option that names each checkpoint where the environment does not.
WEIGHT_OPTIONS = {"autoencoder": "--autoencoder-weights", "network": "--unet-weights", "controlnet": "--controlnet-weights"}


@dataclass
class VariantFiles:
    """A variant's configs and checkpoints (absolute paths; None: the variant has none)."""

    variant: str
    network_config: str
    environment: Path
    checkpoints: dict[str, Path | None]
    label_dict: Path | None
    inference: dict[str, Any] = field(default_factory=dict)  # the diff-model config's diffusion_unet_inference
    modality_mapping: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def variant_files(folder: Path, variant: str, network_config: str | None, environment: str | None,
                  weights: dict[str, str] | None = None) -> VariantFiles:
    """The files of `variant` in `folder` as its own configs name them (`weights` given explicitly win)."""
    if variant not in VARIANTS:
        raise ModelCardError(f"unknown MAISI variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    network_config = network_config or f"configs/config_network_{'ddpm' if variant.startswith('ddpm') else 'rflow'}.json"
    env_path = _environment(folder, variant, environment)
    env = SafeConfig(env_path)
    weights = {k: v for k, v in (weights or {}).items() if v}
    named = {
        "autoencoder": env.literal("trained_autoencoder_path"),
        "network": env.literal("trained_diffusion_path"),
        "controlnet": env.literal("trained_controlnet_path"),
    }
    if named["network"] is None and isinstance(env.literal("model_filename"), str):
        named["network"] = str(Path(env.literal("model_dir", "./models") or "./models") / env.literal("model_filename"))
    checkpoints: dict[str, Path | None] = {}
    notes = []
    for role, value in named.items():
        if role in weights:
            checkpoints[role] = _inside(folder, weights[role], role)
        elif isinstance(value, str) and value:
            checkpoints[role] = _inside(folder, value, role)
        elif role == "controlnet":
            checkpoints[role] = None
            notes.append(f"no ControlNet: {env_path.name} gives trained_controlnet_path "
                         f"{'null' if env.has('trained_controlnet_path') else 'no value'} (an image-only model)")
        else:
            key = "trained_autoencoder_path" if role == "autoencoder" else "trained_diffusion_path (or model_dir + model_filename)"
            raise ModelWeightsError(
                f"{env_path}: names no {role} checkpoint ({key}); give the file with {WEIGHT_OPTIONS[role]} (another "
                "variant's file is never used in its place)"
            )
    for role, path in checkpoints.items():
        if path is not None and not path.is_file():
            present = [v for v in VARIANTS if v != variant and any(
                (folder / f"models/diff_unet_3d_{v}{suffix}.pt").is_file() for suffix in ("", "_v1"))]
            hint = f"; this folder holds the UNet of {', '.join(present)}: import it with --variant" if present else ""
            raise ModelWeightsError(
                f"{path}: the {variant} {role} checkpoint its environment ({env_path.name}) names is not there; download "
                f"it (python -m scripts.download_model_data --version {variant}) or give it with {WEIGHT_OPTIONS[role]}{hint}"
            )
    label_value = env.literal("label_dict_json")
    label_dict = _inside(folder, label_value, "label dictionary") if isinstance(label_value, str) else None
    diff_config = folder / f"configs/config_maisi_diff_model_{variant}.json"
    inference = {}
    if diff_config.is_file():
        inference = SafeConfig(diff_config).literal("diffusion_unet_inference") or {}
    mapping_value = env.literal("modality_mapping_path") or "configs/modality_mapping.json"
    mapping_path = _inside(folder, mapping_value, "modality mapping")
    mapping = {}
    if mapping_path.is_file():
        data = SafeConfig(mapping_path).data
        mapping = {str(k): int(v) for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)}
    return VariantFiles(variant, network_config, env_path, checkpoints, label_dict, inference, mapping, notes)


def _environment(folder: Path, variant: str, environment: str | None) -> Path:
    if environment:
        path = folder / environment
        if not path.is_file():
            raise ModelCardError(f"{path}: environment config not found; check --environment")
        return path
    candidates = [f"configs/environment_{variant}.json", f"configs/environment_maisi_diff_model_{variant}.json"]
    for name in candidates:
        if (folder / name).is_file():
            return folder / name
    raise ModelCardError(
        f"{folder}: no environment config for variant {variant} ({' or '.join(candidates)}); give it with --environment"
    )


def _inside(folder: Path, relative: Any, what: str) -> Path:
    """A path a config names, relative to the folder (as MAISI's scripts run from it)."""
    if not isinstance(relative, str) or not relative:
        raise ModelCardError(f"{folder}: the {what} path must be a file name, got {relative!r}")
    path = Path(relative)
    return path if path.is_absolute() else (folder / path).resolve()


def modality_choices(mapping: dict[str, int], code: int) -> dict[str, int]:
    """The modality names of the model's kind (MAISI: 1-7 CT, 8 and above MR), `unknown` (0) left out."""
    mr = code >= 8
    return {name: value for name, value in mapping.items() if value > 0 and (value >= 8) == mr}
