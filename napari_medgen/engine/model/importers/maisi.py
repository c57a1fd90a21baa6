"""Import MAISI (NV-Generate-CTMR) into a model folder: card + safetensors, nothing executed.

The folder is laid out as NV-Generate-CTMR keeps it: ``configs/config_network_rflow.json`` (the network
definitions: ``autoencoder_def``, ``diffusion_unet_def``, ``controlnet_def``, ``noise_scheduler``; its
mask-generation models are skipped, since the user paints the label map), ``configs/environment_rflow-ct.json``
(the checkpoint paths), ``configs/label_dict.json`` (name -> index), and under ``models/``:
``autoencoder_v1.pt`` (a plain state dict), ``diff_unet_3d_rflow-ct.pt`` (``unet_state_dict``,
``scale_factor``, ``num_train_timesteps``, ...) and ``controlnet_3d_rflow-ct.pt`` (``controlnet_state_dict``).

How MAISI runs these (its scripts/utils_infer.py), kept in the card: arrays in RAS (x, y, z) order; the
UNet is given the voxel spacing x 100 and the modality code (CT 1) as its class label; the ControlNet the
label map's 8 bit-planes at image resolution; latents are the encoder's output x ``scale_factor``; the
decoder's [0, 1] is -1000..1000 HU (CT), and voxels labelled 0 are set to -1000 HU. The image-only variants
(rflow-mr, rflow-mr-brain; `maisi_variants` reads which files each has) have no ControlNet and take the modality
(MR 0..1000) with classifier-free guidance on it, class label 0 the unconditional, as scripts/diff_model_infer.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ModelCardError, ModelWeightsError
from .checkpoint import load_checkpoint, scalar_in, state_dict_in
from .common import build_card, controlnet_state, cpu_safe, fitted_networks, schema_from_label_dict, write_model
from .maisi_variants import VariantFiles, modality_choices, variant_files
from .safe_config import SafeConfig, target_of
from .scheduler_spec import scheduler_spec

DEFAULT_NETWORK_CONFIG = "configs/config_network_rflow.json"
# MAISI's body regions (scripts/utils.py get_body_region_index_from_mask): head and neck, thorax, abdomen,
# pelvis, each recognised by these label indices; used only by UNets trained with region inputs (ddpm-ct).
MAISI_BODY_REGIONS = [[22, 120], [28, 29, 30, 31, 32], [1, 2, 3, 4, 5, 14], [93, 94]]
BODY_LABEL = 200


def import_maisi(
    folder: str | Path,
    out_folder: str | Path,
    name: str | None = None,
    network_config: str | None = None,
    environment: str | None = None,
    modality_code: int | None = None,
    variant: str = "rflow-ct",
    modality: str | None = None,
    weights: dict[str, str] | None = None,
) -> Path:
    """Read a NV-Generate-CTMR folder's `variant` and write a model folder at `out_folder`; returns it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelCardError(f"{folder}: not a folder; give the NV-Generate-CTMR folder (with configs/ and models/)")
    files = variant_files(folder, variant, network_config, environment, weights)
    config = SafeConfig(folder / files.network_config)
    changes: list[str] = []
    ae_class, ae_kwargs = target_of(config.section("autoencoder_def"), "autoencoder_def")
    unet_class, unet_kwargs = target_of(config.section("diffusion_unet_def"), "diffusion_unet_def")
    cn_class, cn_kwargs = None, None
    if files.checkpoints["controlnet"] is not None:
        cn_class, cn_kwargs = target_of(config.section("controlnet_def"), "controlnet_def")
    sched_class, sched_kwargs = target_of(config.section("noise_scheduler"), "noise_scheduler")
    ae_kwargs = cpu_safe(ae_kwargs, "autoencoder", changes)
    unet_kwargs = cpu_safe(unet_kwargs, "network", changes)
    cn_kwargs = cpu_safe(cn_kwargs, "controlnet", changes) if cn_kwargs is not None else None

    # Weights, read as tensors only.
    ae_path, unet_path, cn_path = (files.checkpoints[k] for k in ("autoencoder", "network", "controlnet"))
    ae_state = state_dict_in(load_checkpoint(ae_path), ae_path, ("unet_state_dict", "autoencoder_state_dict"))
    unet_checkpoint = load_checkpoint(unet_path)
    unet_state = state_dict_in(unet_checkpoint, unet_path, ("unet_state_dict",))
    scale_factor = scalar_in(unet_checkpoint, "scale_factor")
    if scale_factor is None or not scale_factor > 0:
        raise ModelWeightsError(f"{unet_path}: no positive 'scale_factor' in the checkpoint; it is not a MAISI UNet checkpoint")
    trained_steps = scalar_in(unet_checkpoint, "num_train_timesteps")
    cn_state = None
    if cn_path is not None:
        cn_state = state_dict_in(load_checkpoint(cn_path), cn_path, ("controlnet_state_dict",))

    # Labels (a ControlNet's): the folder's own dictionary (names and indices), colours generated.
    if cn_kwargs is not None:
        if files.label_dict is None:
            raise ModelCardError(f"{files.environment}: names no label_dict_json, which the ControlNet needs")
        schema = schema_from_label_dict(SafeConfig(files.label_dict).data, str(files.label_dict))
    else:
        schema = schema_from_label_dict({"field of view": 1}, "image-only model")

    scheduler = scheduler_spec(sched_class, sched_kwargs, trained_steps)
    code = _modality_code(folder, files, modality, modality_code, controlnet=cn_kwargs is not None)
    ct = code <= 7  # MAISI's rule: codes 1-7 are CT (-1000..1000 HU), the rest MR (0..1000)
    lo, hi = (-1000.0, 1000.0) if ct else (0.0, 1000.0)
    spacing, tile = _inference_geometry(files.inference)
    cfg = files.inference.get("cfg_guidance_scale", 0)
    guided = isinstance(cfg, (int, float)) and cfg > 0 and bool(unet_kwargs.get("num_class_embeds"))
    kind = "CT" if ct else "MR"
    what = (f"from a label map ({len(schema.classes) - 1} classes) through a ControlNet" if cn_kwargs is not None
            else f"image only (modality {code}{f', guidance {cfg:g}' if guided else ''})")
    latent_channels = int(unet_kwargs.get("in_channels", ae_kwargs.get("latent_channels", 4)))
    compression = 2 ** (len(ae_kwargs.get("num_channels", [0, 0, 0])) - 1)
    body_label = BODY_LABEL if BODY_LABEL in schema.indices else None
    raw: dict[str, Any] = {
        "name": name or f"maisi-{variant}",
        "version": "1.0.0",
        "description": (
            f"MAISI latent diffusion (NV-Generate-CTMR {variant}) imported with napari-medgen import-maisi: {kind} {what}"
        ),
        "license": _license(folder),
        "network": {"class_name": unet_class, "kwargs": unet_kwargs},
        "controlnet": {"class_name": cn_class, "kwargs": cn_kwargs} if cn_kwargs is not None else None,
        "autoencoder": {"class_name": ae_class, "kwargs": ae_kwargs},
        "latent": {
            "scale_factor": scale_factor,
            "latent_channels": latent_channels,
            "compression": compression,
            "image_range": [0.0, 1.0],
            "array_layout": "ras_xyz",
            "spacing_input": bool(unet_kwargs.get("include_spacing_input", False)),
            "modality_code": code if unet_kwargs.get("num_class_embeds") else None,
            "modalities": modality_choices(files.modality_mapping, code) if unet_kwargs.get("num_class_embeds") else {},
            "modality_guidance": guided,
            "body_regions": MAISI_BODY_REGIONS if unet_kwargs.get("include_top_region_index_input") else None,
            "label_encoding": "bits",
            "label_bits": int(cn_kwargs.get("conditioning_embedding_in_channels", 8)) if cn_kwargs else 8,
            "body_label": body_label if cn_kwargs is not None else None,
            "decode_tile": [24, 24, 24],
            "decode_overlap": 0.25,
        },
        "spatial_dims": 3,
        "tile_size": tile,
        "spacing_mm": spacing,
        "modality": "CT" if ct else "MR",
        "normalization": {
            "kind": "ct_window",
            "window_min": lo,
            "window_max": hi,
            "background": lo,
            "background_label": 0 if cn_kwargs is not None else None,  # image-only: no label says where the body is
        },
        "label_schema": schema.model_dump(),
        "conditioning": {"label_map": "controlnet" if cn_kwargs is not None else "none",
                         "default_guidance": float(cfg) if guided else 1.0},
        "scheduler": scheduler,
        "tasks": ["generate", "inpaint"],
        "provenance": {
            "imported_from": str(folder.resolve()),
            "importer": "import-maisi",
            "variant": variant,
            "network_config": files.network_config,
            "environment": files.environment.name,
            "checkpoints": {k: _relative(v, folder) for k, v in files.checkpoints.items()},
            "notes": files.notes,
            "cpu_safe_changes": changes,
            "modality_code": code,
        },
    }
    card = build_card(raw, str(folder))
    states: dict[str, dict[str, Any]] = {"network": unet_state, "autoencoder": ae_state}
    dropped: dict[str, list[str]] = {}
    if cn_state is not None:
        states["controlnet"] = controlnet_state(card, unet_state, cn_state)
    # MAISI loads its UNet and ControlNet with strict=False; keys the network does not have are dropped here
    # and named in the card (missing keys are still refused: a network half-loaded is not the model).
    states, dropped = _without_extra_keys(card, states)
    if dropped:
        card.provenance["dropped_checkpoint_keys"] = {k: v[:10] + ([f"... {len(v)} in all"] if len(v) > 10 else []) for k, v in dropped.items()}
    networks = fitted_networks(card, states, str(folder))
    return write_model(card, networks, out_folder)


def _without_extra_keys(card: Any, states: dict[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    from ..networks import build_networks

    shapes = {role: module.state_dict() for role, module in build_networks(card, device="meta").items()}
    dropped = {}
    out = {}
    for role, state in states.items():
        expected = shapes[role]
        extra = [k for k in state if k not in expected]
        if extra and role in ("network", "controlnet"):
            dropped[role] = extra
            state = {k: v for k, v in state.items() if k in expected}
        out[role] = state
    return out, dropped


def _modality_code(folder: Path, files: VariantFiles, name: str | None, code: int | None, controlnet: bool) -> int:
    """The modality code: given by name (the mapping file's) or number; else the variant's own config's (for the
    CT ControlNet also config_infer.json's, the paired inference's); else MAISI's CT (1)."""
    if name is not None:
        if name not in files.modality_mapping:
            offered = ", ".join(files.modality_mapping) or "none (no configs/modality_mapping.json)"
            raise ModelCardError(f"{folder}: no modality {name!r} in the modality mapping; it has: {offered}")
        return files.modality_mapping[name]
    if code is not None:
        return code
    value = files.inference.get("modality")
    if value is None and controlnet and (folder / "configs/config_infer.json").is_file():
        value = SafeConfig(folder / "configs/config_infer.json").literal("modality")
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _inference_geometry(inference: dict[str, Any]) -> tuple[list[float], list[int]]:
    """Typical spacing and output size, (x, y, z), from the variant's inference config (MAISI's defaults else)."""
    spacing, size = [1.5, 1.5, 2.0], [256, 256, 128]
    if _numbers(inference.get("spacing"), 3):
        spacing = [float(v) for v in inference["spacing"]]
    if _numbers(inference.get("dim"), 3) and all(int(v) % 32 == 0 for v in inference["dim"]):
        size = [int(v) for v in inference["dim"]]
    return spacing, size


def _relative(path: Path | None, folder: Path) -> str | None:
    if path is None:
        return None
    root = folder.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _numbers(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)


def _license(folder: Path) -> str:
    path = folder / "LICENSE.weights"
    if path.is_file():
        try:
            first = next((line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()), "")
        except OSError:
            first = ""
        if first:
            return f"{first[:120]} (the imported weights' licence: LICENSE.weights of the source folder)"
    return "the licence the imported weights came with (see the source folder)"
