"""Import a MONAI generative bundle (``configs/*.json``, ``models/*.pt``) into a model folder.

Only the literal network sections are read (``autoencoder_def``; the diffusion UNet under
``diffusion_unet_def`` / ``diffusion_def`` / ``network_def``; an optional ``controlnet_def``; the scheduler
under ``noise_scheduler`` / ``scheduler``); the rest of the config (imports, device, paths, run) is code and is
never read; YAML configs (mednist_ddpm's common.yaml + infer.yaml) are read the same way. Checkpoint names are
taken from the quoted ``.pt`` / ``.pth`` name in the bundle's path settings (read as text, not evaluated), or given
explicitly. Weights saved with MONAI GenerativeModels' former key names are mapped by MONAI's
``load_old_state_dict``. A bundle without an autoencoder is a pixel-space model. A UNet conditioned on a context
vector (the brain LDM) gets its attributes from the bundle (`bundle_context`); the geometry comes from the training
configs (`bundle_geometry`). A UNet that takes extra input channels the bundle does not describe is refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import ModelCardError, ModelWeightsError
from .checkpoint import load_checkpoint, scalar_in, state_dict_in
from .common import (
    build_card,
    controlnet_state,
    cpu_safe,
    fitted_networks,
    mapped_old_state,
    monai_arguments,
    schema_from_label_dict,
    write_model,
)
from .bundle_context import context_attributes
from .bundle_geometry import bundle_geometry, image_scaling
from .safe_config import SafeConfig, target_of
from .scheduler_spec import scheduler_spec

UNET_KEYS = ("diffusion_unet_def", "diffusion_def", "network_def", "unet_def")
SCHEDULER_KEYS = ("noise_scheduler", "scheduler")
UNET_CLASSES = ("DiffusionModelUNet", "DiffusionModelUNetMaisi")
# Role -> words a bundle's path setting holds, and the file a bundle keeps by convention.
_PATH_HINTS = {
    "autoencoder": (("autoencoder",), "models/autoencoder.pt"),
    "network": (("diffusion", "unet", "model", "ckpt"), "models/model.pt"),
    "controlnet": (("controlnet",), "models/controlnet.pt"),
}
_QUOTED_PT = re.compile(r"""['"]/?([\w.\-/]+\.pth?)['"]""")


def import_bundle(
    folder: str | Path,
    out_folder: str | Path,
    name: str | None = None,
    config: str | list[str] | None = None,
    scale_factor: float | None = None,
    label_dict: str | Path | None = None,
    ct_window: tuple[float, float] | None = None,
    weights: dict[str, str] | None = None,
    layout: str | None = None,
    spacing: list[float] | None = None,
) -> Path:
    """Read a bundle folder and write a model folder at `out_folder`; returns it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelCardError(f"{folder}: not a folder; give the bundle's folder (with configs/ and models/)")
    config_names = _config_files(folder, config)
    parsed = SafeConfig([folder / c for c in config_names])
    metadata = SafeConfig(folder / "configs/metadata.json").data if (folder / "configs/metadata.json").is_file() else {}
    changes: list[str] = []
    latent_model = parsed.has("autoencoder_def")
    ae_class, ae_kwargs = target_of(parsed.section("autoencoder_def"), "autoencoder_def") if latent_model else (None, {})
    unet_key, (unet_class, unet_kwargs) = _unet(parsed)
    n = int(unet_kwargs.get("spatial_dims", 3))
    cn_class = cn_kwargs = None
    if parsed.has("controlnet_def"):
        cn_class, cn_kwargs = target_of(parsed.section("controlnet_def"), "controlnet_def")
    sched_key = next((k for k in SCHEDULER_KEYS if parsed.has(k)), None)
    if sched_key is None:
        raise ModelCardError(f"{parsed.path}: no noise scheduler section ({' or '.join(SCHEDULER_KEYS)})")
    sched_class, sched_kwargs = target_of(parsed.section(sched_key), sched_key)
    latent_channels = int(ae_kwargs.get("latent_channels", 3)) if latent_model else 1
    context = []
    if unet_kwargs.get("with_conditioning") or unet_kwargs.get("cross_attention_dim"):
        context = context_attributes(parsed, metadata, int(unet_kwargs.get("cross_attention_dim") or 0))
    extra = int(unet_kwargs.get("in_channels", 0)) - latent_channels
    if extra not in (0, len(context)):
        raise ModelCardError(
            f"{parsed.path}: the bundle's UNet ({unet_key}) takes {unet_kwargs.get('in_channels')} input channels but the "
            f"{'latent' if latent_model else 'image'} has {latent_channels}: it is conditioned on extra channels the "
            "bundle does not describe, which napari-medgen cannot provide"
        )
    ae_kwargs = monai_arguments(ae_class or "", cpu_safe(ae_kwargs, "autoencoder", changes), "autoencoder", changes)
    unet_kwargs = monai_arguments(unet_class, cpu_safe(unet_kwargs, "network", changes), "network", changes)
    if cn_kwargs is not None:
        cn_kwargs = monai_arguments(cn_class, cpu_safe(cn_kwargs, "controlnet", changes), "controlnet", changes)

    roles = (("autoencoder",) if latent_model else ()) + ("network",) + (("controlnet",) if cn_kwargs is not None else ())
    paths = {role: _checkpoint_path(folder, parsed, role, (weights or {}).get(role)) for role in roles}
    checkpoints = {role: load_checkpoint(path) for role, path in paths.items()}
    keys = {"autoencoder": ("autoencoder_state_dict",), "network": ("unet_state_dict", "diffusion_state_dict"),
            "controlnet": ("controlnet_state_dict",)}
    states = {role: state_dict_in(checkpoints[role], paths[role], keys[role]) for role in roles}

    scale = scale_factor
    if scale is None:
        literal = parsed.literal("scale_factor")
        scale = float(literal) if isinstance(literal, (int, float)) and not isinstance(literal, bool) else None
    if scale is None:
        scale = scalar_in(checkpoints["network"], "scale_factor")
    if latent_model and (scale is None or not scale > 0):
        raise ModelWeightsError(
            f"{folder}: the latent scale factor is neither a literal 'scale_factor' in {', '.join(config_names)} nor "
            "stored in the UNet checkpoint; give it with --scale-factor (the value the bundle's sampler divides latents "
            "by: 1.0 where it divides by none)"
        )

    if label_dict is not None:
        label_path = Path(label_dict)
        schema = schema_from_label_dict(SafeConfig(label_path).data, str(label_path))
    elif (folder / "configs/label_dict.json").is_file():
        schema = schema_from_label_dict(SafeConfig(folder / "configs/label_dict.json").data, "configs/label_dict.json")
    elif cn_kwargs is not None:
        raise ModelCardError(f"{folder}: the ControlNet needs the label names: give --label-dict (a JSON name -> index)")
    else:
        schema = schema_from_label_dict({"field of view": 1}, "bundle")
    compression = 2 ** (len(ae_kwargs.get("channels", ae_kwargs.get("num_channels", [0]))) - 1) if latent_model else None
    levels = unet_kwargs.get("channels", unet_kwargs.get("num_channels", [0]))
    divisor = (compression or 1) * 2 ** (len(levels) - 1)
    array_layout, spacing_mm, size, notes = bundle_geometry(folder, parsed, metadata, n, compression, layout, spacing)
    if size is None or any(v % divisor for v in size):
        size = [max(divisor, 64 - 64 % divisor or divisor)] * n
    if ct_window is not None:
        normalization = {"kind": "ct_window", "window_min": ct_window[0], "window_max": ct_window[1], "background": ct_window[0]}
    elif latent_model:
        normalization = {"kind": "mri_percentile", "output_min": 0.0, "output_max": 1000.0}
    else:
        normalization = _pixel_normalization(parsed, notes)
    cond_channels = cn_kwargs.get("conditioning_embedding_in_channels", 1) if cn_kwargs else None
    conditioning: dict[str, Any] = {"label_map": "controlnet" if cn_kwargs is not None else "none"}
    if context:
        conditioning.update(context=context, context_channels=extra > 0)
    raw: dict[str, Any] = {
        "name": name or re.sub(r"[^A-Za-z0-9_.\-]", "-", folder.resolve().name)[:64] or "bundle",
        "version": "1.0.0",
        "description": f"MONAI generative bundle {folder.resolve().name} imported with napari-medgen import-bundle",
        "license": "the licence the bundle came with (see its LICENSE and configs/metadata.json)",
        "network": {"class_name": unet_class, "kwargs": unet_kwargs},
        "controlnet": {"class_name": cn_class, "kwargs": cn_kwargs} if cn_kwargs is not None else None,
        "autoencoder": {"class_name": ae_class, "kwargs": ae_kwargs} if latent_model else None,
        "latent": {
            "scale_factor": scale,
            "latent_channels": latent_channels,
            "compression": compression,
            "image_range": [0.0, 1.0],
            "array_layout": array_layout,
            "label_encoding": "bits" if cond_channels is not None and cond_channels != schema.max_index + 1 else "one_hot",
            "label_bits": int(cond_channels or 8) if cond_channels and cond_channels != schema.max_index + 1 else 8,
            "decode_tile": [32] * n,
        } if latent_model else None,
        "spatial_dims": n,
        "tile_size": size,
        "spacing_mm": spacing_mm,
        "modality": "CT" if ct_window is not None else "MR" if latent_model else "other",
        "normalization": normalization,
        "label_schema": schema.model_dump(),
        "conditioning": conditioning,
        "scheduler": scheduler_spec(sched_class, sched_kwargs),
        "tasks": ["generate"] if latent_model and n == 2 else ["generate", "inpaint"],
        "provenance": {
            "imported_from": str(folder.resolve()),
            "importer": "import-bundle",
            "config": config_names,
            "checkpoints": {role: str(path.relative_to(folder.resolve())) if path.is_relative_to(folder.resolve()) else str(path) for role, path in paths.items()},
            "geometry": notes,
            "cpu_safe_changes": changes,
        },
    }
    if unet_class == "DiffusionModelUNetMaisi":
        _maisi_conventions(raw, unet_kwargs, cn_kwargs, schema, ct_window)
    card = build_card(raw, str(folder))
    from ..networks import build_networks

    fresh = build_networks(card)
    states = {role: mapped_old_state(fresh[role], state) for role, state in states.items()}
    if unet_class == "DiffusionModelUNetMaisi" and "controlnet" in states:
        states["controlnet"] = controlnet_state(card, states["network"], states["controlnet"])
    networks = fitted_networks(card, states, str(folder))
    return write_model(card, networks, out_folder)


def _config_files(folder: Path, config: str | list[str] | None) -> list[str]:
    """The config files read together: given; else inference.json, inference.yaml, or common.yaml + infer.yaml."""
    if config:
        return [config] if isinstance(config, str) else list(config)
    for names in (["configs/inference.json"], ["configs/inference.yaml"], ["configs/common.yaml", "configs/infer.yaml"]):
        if all((folder / n).is_file() for n in names):
            return names
    raise ModelCardError(f"{folder}: no configs/inference.json (nor inference.yaml, nor common.yaml + infer.yaml); give --config")


def _pixel_normalization(parsed: SafeConfig, notes: list[str]) -> dict[str, Any]:
    """A pixel model's intensities: the network's range back to the bundle's own (its ScaleIntensityRanged), as the
    card's [-1, 1] -> output_min..output_max line."""
    scaling = image_scaling(parsed)
    a_min, a_max, b_min, b_max = scaling or (0.0, 1.0, 0.0, 1.0)
    notes.append(f"intensities {a_min:g}..{a_max:g} are the network's {b_min:g}..{b_max:g}"
                 + ("" if scaling else " (assumed: no ScaleIntensityRanged in the config)"))

    def intensity(b: float) -> float:
        return a_min + (b - b_min) / (b_max - b_min) * (a_max - a_min)

    return {"kind": "mri_percentile", "output_min": intensity(-1.0), "output_max": intensity(1.0), "background": a_min}


def _unet(parsed: SafeConfig) -> tuple[str, tuple[str, dict[str, Any]]]:
    for key in UNET_KEYS:
        if parsed.has(key):
            try:
                class_name, kwargs = target_of(parsed.section(key), key)
            except ModelCardError:
                if key == "network_def":  # often a reference to something else, or code; try the next
                    continue
                raise
            if class_name in UNET_CLASSES:
                return key, (class_name, kwargs)
    raise ModelCardError(f"{parsed.path}: no diffusion UNet definition ({', '.join(UNET_KEYS)}) naming {' or '.join(UNET_CLASSES)}")


def _checkpoint_path(folder: Path, parsed: SafeConfig, role: str, given: str | None) -> Path:
    """The role's checkpoint: given; else the quoted `.pt` name in a path setting mentioning the role (the
    `$` expression is read as text, never run); else the bundle's conventional file name."""
    if given:
        path = Path(given)
        return path if path.is_absolute() else folder / path
    words, default = _PATH_HINTS[role]
    for key, value in parsed.data.items():
        lowered = key.lower()
        if not isinstance(value, str) or "path" not in lowered or "mask" in lowered:
            continue
        if role != "controlnet" and "controlnet" in lowered:
            continue
        if role == "network" and "autoencoder" in lowered:
            continue
        if any(word in lowered for word in words):
            match = _QUOTED_PT.search(value) or (re.fullmatch(r"[\w.\-/]+\.pth?", value) and re.match(r"(.*)", value))
            if match:
                name = match.group(1)
                candidate = folder / name if "/" in name else folder / "models" / name
                if candidate.is_file():
                    return candidate
    return folder / default


def _maisi_conventions(raw: dict[str, Any], unet: dict[str, Any], control: dict[str, Any] | None, schema: Any,
                       ct_window: tuple[float, float] | None) -> None:
    """A MAISI bundle (the model zoo's maisi_ct_generative) runs as MAISI's scripts run it: see importers.maisi."""
    from .maisi import BODY_LABEL, MAISI_BODY_REGIONS

    latent = raw["latent"]
    latent.update(
        array_layout="ras_xyz",
        spacing_input=bool(unet.get("include_spacing_input", False)),
        modality_code=1 if unet.get("num_class_embeds") else None,
        body_regions=MAISI_BODY_REGIONS if unet.get("include_top_region_index_input") else None,
        label_encoding="bits",
        label_bits=int(control.get("conditioning_embedding_in_channels", 8)) if control else 8,
        body_label=BODY_LABEL if BODY_LABEL in schema.indices else None,
        decode_tile=[24, 24, 24],
    )
    low, high = ct_window if ct_window is not None else (-1000.0, 1000.0)  # MAISI's CT range for [0, 1]
    raw["modality"] = "CT"
    raw["normalization"] = {"kind": "ct_window", "window_min": low, "window_max": high, "background": low, "background_label": 0}
    raw["tile_size"] = [256, 256, 128]
