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
decoder's [0, 1] is -1000..1000 HU (CT), and voxels labelled 0 are set to -1000 HU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ModelCardError, ModelWeightsError
from .checkpoint import load_checkpoint, scalar_in, state_dict_in
from .common import build_card, controlnet_state, cpu_safe, fitted_networks, schema_from_label_dict, write_model
from .safe_config import SafeConfig, target_of

DEFAULT_NETWORK_CONFIG = "configs/config_network_rflow.json"
DEFAULT_ENVIRONMENT = "configs/environment_rflow-ct.json"
DEFAULT_FILES = {
    "trained_autoencoder_path": "models/autoencoder_v1.pt",
    "trained_diffusion_path": "models/diff_unet_3d_rflow-ct.pt",
    "trained_controlnet_path": "models/controlnet_3d_rflow-ct.pt",
    "label_dict_json": "configs/label_dict.json",
}
# MAISI's body regions (scripts/utils.py get_body_region_index_from_mask): head and neck, thorax, abdomen,
# pelvis, each recognised by these label indices; used only by UNets trained with region inputs (ddpm-ct).
MAISI_BODY_REGIONS = [[22, 120], [28, 29, 30, 31, 32], [1, 2, 3, 4, 5, 14], [93, 94]]
BODY_LABEL = 200


def _inside(folder: Path, relative: Any, what: str) -> Path:
    """A path the folder's environment config names, relative to the folder (as MAISI's scripts run from it)."""
    if not isinstance(relative, str) or not relative:
        raise ModelCardError(f"{folder}: the {what} path must be a file name, got {relative!r}")
    return (folder / relative).resolve()


def import_maisi(
    folder: str | Path,
    out_folder: str | Path,
    name: str = "maisi-ct-rflow",
    network_config: str = DEFAULT_NETWORK_CONFIG,
    environment: str | None = DEFAULT_ENVIRONMENT,
    modality_code: int | None = None,
) -> Path:
    """Read a NV-Generate-CTMR folder and write a model folder at `out_folder`; returns it."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelCardError(f"{folder}: not a folder; give the NV-Generate-CTMR folder (with configs/ and models/)")
    config = SafeConfig(folder / network_config)
    files = dict(DEFAULT_FILES)
    env_path = folder / environment if environment else None
    if env_path is not None and env_path.is_file():
        env = SafeConfig(env_path)
        for key in files:
            value = env.literal(key)
            if isinstance(value, str):
                files[key] = value
    changes: list[str] = []
    ae_class, ae_kwargs = target_of(config.section("autoencoder_def"), "autoencoder_def")
    unet_class, unet_kwargs = target_of(config.section("diffusion_unet_def"), "diffusion_unet_def")
    control = config.section("controlnet_def") if config.has("controlnet_def") else None
    cn_class, cn_kwargs = target_of(control, "controlnet_def") if control is not None else (None, None)
    sched_class, sched_kwargs = target_of(config.section("noise_scheduler"), "noise_scheduler")
    ae_kwargs = cpu_safe(ae_kwargs, "autoencoder", changes)
    unet_kwargs = cpu_safe(unet_kwargs, "network", changes)
    cn_kwargs = cpu_safe(cn_kwargs, "controlnet", changes) if cn_kwargs is not None else None

    # Weights, read as tensors only.
    ae_path = _inside(folder, files["trained_autoencoder_path"], "autoencoder")
    unet_path = _inside(folder, files["trained_diffusion_path"], "diffusion UNet")
    ae_state = state_dict_in(load_checkpoint(ae_path), ae_path, ("unet_state_dict", "autoencoder_state_dict"))
    unet_checkpoint = load_checkpoint(unet_path)
    unet_state = state_dict_in(unet_checkpoint, unet_path, ("unet_state_dict",))
    scale_factor = scalar_in(unet_checkpoint, "scale_factor")
    if scale_factor is None or not scale_factor > 0:
        raise ModelWeightsError(f"{unet_path}: no positive 'scale_factor' in the checkpoint; it is not a MAISI UNet checkpoint")
    trained_steps = scalar_in(unet_checkpoint, "num_train_timesteps")
    cn_state = None
    if cn_kwargs is not None:
        cn_path = _inside(folder, files["trained_controlnet_path"], "ControlNet")
        cn_state = state_dict_in(load_checkpoint(cn_path), cn_path, ("controlnet_state_dict",))

    # Labels: the folder's own dictionary (names and indices), colours generated.
    label_path = _inside(folder, files["label_dict_json"], "label dictionary")
    label_config = SafeConfig(label_path)
    schema = schema_from_label_dict(label_config.data, str(label_path))

    scheduler = _scheduler(sched_class, sched_kwargs, trained_steps)
    code = modality_code if modality_code is not None else _modality(folder)
    ct = code <= 7  # MAISI's rule: codes 1-7 are CT (-1000..1000 HU), the rest MR (0..1000)
    lo, hi = (-1000.0, 1000.0) if ct else (0.0, 1000.0)
    spacing, tile = _inference_geometry(folder)
    latent_channels = int(unet_kwargs.get("in_channels", ae_kwargs.get("latent_channels", 4)))
    compression = 2 ** (len(ae_kwargs.get("num_channels", [0, 0, 0])) - 1)
    body_label = BODY_LABEL if BODY_LABEL in schema.indices else None
    raw: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "description": (
            "MAISI latent diffusion (NV-Generate-CTMR) imported with napari-medgen import-maisi: "
            f"{'CT' if ct else 'MR'} from a label map ({len(schema.classes) - 1} classes) through a ControlNet"
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
            "body_regions": MAISI_BODY_REGIONS if unet_kwargs.get("include_top_region_index_input") else None,
            "label_encoding": "bits",
            "label_bits": int(cn_kwargs.get("conditioning_embedding_in_channels", 8)) if cn_kwargs else 8,
            "body_label": body_label,
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
            "background_label": 0,
        },
        "label_schema": schema.model_dump(),
        "conditioning": {"label_map": "controlnet" if cn_kwargs is not None else "none"},
        "scheduler": scheduler,
        "tasks": ["generate", "inpaint"],
        "provenance": {
            "imported_from": str(folder.resolve()),
            "importer": "import-maisi",
            "network_config": network_config,
            "checkpoints": {k: v for k, v in files.items() if k != "label_dict_json"},
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


def _scheduler(class_name: str, kwargs: dict[str, Any], trained_steps: float | None) -> dict[str, Any]:
    steps = int(kwargs.get("num_train_timesteps", trained_steps or 1000))
    if trained_steps is not None and int(trained_steps) != steps:
        steps = int(trained_steps)  # the checkpoint's own training is the truth
    if class_name == "RFlowScheduler":
        return {
            "class_name": "RFlowScheduler",
            "num_train_timesteps": steps,
            "prediction_type": "v_prediction",
            "use_discrete_timesteps": bool(kwargs.get("use_discrete_timesteps", True)),
            "use_timestep_transform": bool(kwargs.get("use_timestep_transform", False)),
            "base_img_size_numel": int(kwargs.get("base_img_size_numel", 32 * 32 * 32)),
            "transform_scale": float(kwargs.get("transform_scale", 1.0)),
        }
    spec = {"class_name": class_name, "num_train_timesteps": steps}
    for key in ("schedule", "beta_start", "beta_end", "prediction_type"):
        if key in kwargs:
            spec[key] = kwargs[key]
    return spec


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


def _modality(folder: Path) -> int:
    for name in ("configs/config_infer.json", "configs/config_maisi_diff_model_rflow-ct.json"):
        path = folder / name
        if path.is_file():
            config = SafeConfig(path)
            value = config.literal("modality")
            if value is None and config.has("diffusion_unet_inference"):
                value = (config.literal("diffusion_unet_inference") or {}).get("modality")
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return 1


def _inference_geometry(folder: Path) -> tuple[list[float], list[int]]:
    """Typical spacing and output size, (x, y, z), from the folder's inference configs (MAISI's defaults else)."""
    spacing, size = [1.5, 1.5, 2.0], [256, 256, 128]
    path = folder / "configs/config_maisi_diff_model_rflow-ct.json"
    if path.is_file():
        section = SafeConfig(path).literal("diffusion_unet_inference") or {}
        if _numbers(section.get("spacing"), 3):
            spacing = [float(v) for v in section["spacing"]]
        if _numbers(section.get("dim"), 3) and all(int(v) % 32 == 0 for v in section["dim"]):
            size = [int(v) for v in section["dim"]]
    return spacing, size


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
