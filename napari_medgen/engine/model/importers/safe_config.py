"""Reading MONAI bundle / MAISI configs (JSON, or YAML as mednist_ddpm keeps them) as data, never as code.

MONAI's ConfigParser `eval`s every string that starts with ``$`` and instantiates any ``_target_``. Here a
config is plain JSON: only the sections a model needs are read, ``@name`` references are replaced by the
literal they name (``@a::b`` / ``@a#b`` reach inside), a ``_target_`` must be on the allow-list below, and a
``$`` expression (or a ``%`` macro naming another file) inside a needed section is refused with the place it
sits. Sections that are code (``imports``, ``device``, ``run``, loaders...) are simply never read. YAML is
parsed with ``yaml.safe_load`` (plain data: no tags that build objects); several files given together are one
config, later keys over earlier ones, as MONAI merges ``--config_file "['common.yaml', 'infer.yaml']"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ModelCardError

# `_target_` spellings MONAI configs use for the classes a card may name -> the card's class name.
ALLOWED_TARGETS: dict[str, str] = {}
for _module, _names in {
    "monai.apps.generation.maisi.networks.autoencoderkl_maisi": ("AutoencoderKlMaisi",),
    "monai.apps.generation.maisi.networks.diffusion_model_unet_maisi": ("DiffusionModelUNetMaisi",),
    "monai.apps.generation.maisi.networks.controlnet_maisi": ("ControlNetMaisi",),
    "monai.networks.nets": ("AutoencoderKL", "DiffusionModelUNet", "ControlNet"),
    "monai.networks.nets.autoencoderkl": ("AutoencoderKL",),
    "monai.networks.nets.diffusion_model_unet": ("DiffusionModelUNet",),
    "monai.networks.nets.controlnet": ("ControlNet",),
    "monai.networks.schedulers": ("DDPMScheduler", "DDIMScheduler", "RFlowScheduler"),
    "monai.networks.schedulers.ddpm": ("DDPMScheduler",),
    "monai.networks.schedulers.ddim": ("DDIMScheduler",),
    "monai.networks.schedulers.rectified_flow": ("RFlowScheduler",),
    # Older bundles name MONAI GenerativeModels' package; its classes became MONAI's own.
    "generative.networks.nets": ("AutoencoderKL", "DiffusionModelUNet", "ControlNet"),
    "generative.networks.schedulers": ("DDPMScheduler", "DDIMScheduler"),
}.items():
    for _name in _names:
        ALLOWED_TARGETS[f"{_module}.{_name}"] = _name
# Classes a bundle keeps in its own scripts/ that stand for MONAI's class of that name (their arguments checked
# against MONAI's: `scheduler_spec.check_local_scheduler`); nothing of the bundle's code is imported.
LOCAL_TARGETS = {"scripts.rectified_flow.RFlowScheduler": "RFlowScheduler"}
# Keys of a `_target_` section that describe the section rather than the constructor's arguments.
_IGNORED_KEYS = {"_requires_", "_desc_"}
_MAX_DEPTH = 64


class SafeConfig:
    """A JSON config file read as data; `section(key)` gives a needed section with references resolved."""

    def __init__(self, path: str | Path | list[Path]) -> None:
        paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
        self.path = paths[-1] if len(paths) == 1 else Path(" + ".join(str(p) for p in paths))
        self.data: dict[str, Any] = {}
        for one in paths:
            self.data.update(_read(one))

    def has(self, key: str) -> bool:
        return key in self.data

    def section(self, key: str) -> Any:
        """The literal value of `key` with every `@` reference inside it resolved; refuses code."""
        if key not in self.data:
            raise ModelCardError(f"{self.path}: no '{key}' section; this does not look like the expected config")
        return self._resolve(self.data[key], key, ())

    def literal(self, key: str, default: Any = None) -> Any:
        """`key`'s literal value, or `default` where it is missing or is a `$` expression (an optional setting)."""
        if key not in self.data:
            return default
        try:
            return self.section(key)
        except ModelCardError:
            return default

    def _lookup(self, reference: str, where: str) -> Any:
        parts = reference.replace("#", "::").split("::")
        value: Any = self.data
        for part in parts:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                raise ModelCardError(f"{self.path}: '{where}' refers to @{reference}, which the config does not define")
        return value

    def _resolve(self, value: Any, where: str, chain: tuple[str, ...]) -> Any:
        if len(chain) > _MAX_DEPTH:
            raise ModelCardError(f"{self.path}: '{where}': references nested too deeply")
        if isinstance(value, str):
            if value.startswith("$"):
                raise ModelCardError(
                    f"{self.path}: '{where}' is a Python expression ({value[:80]!r}); napari-medgen never evaluates "
                    "config code: write the literal value there (a number, list or string) and import again"
                )
            if value.startswith("%"):
                raise ModelCardError(
                    f"{self.path}: '{where}' refers to another file ({value[:80]!r}); copy the value in literally"
                )
            if value.startswith("@"):
                reference = value[1:]
                if reference in chain:
                    raise ModelCardError(f"{self.path}: '{where}': the reference @{reference} refers to itself")
                return self._resolve(self._lookup(reference, where), f"{where} -> @{reference}", chain + (reference,))
            return value
        if isinstance(value, list):
            return [self._resolve(item, f"{where}[{i}]", chain) for i, item in enumerate(value)]
        if isinstance(value, dict):
            if "_target_" in value:
                target = value["_target_"]
                if not isinstance(target, str) or (target not in ALLOWED_TARGETS and target not in LOCAL_TARGETS):
                    raise ModelCardError(
                        f"{self.path}: '{where}' names _target_ {target!r}, which is not on napari-medgen's allow-list "
                        f"of MONAI classes ({', '.join(sorted(set(ALLOWED_TARGETS.values())))}); nothing else is built"
                    )
                if value.get("_disabled_") not in (None, False):
                    raise ModelCardError(f"{self.path}: '{where}' is disabled (_disabled_) in the config")
                if value.get("_mode_") not in (None, "default"):
                    raise ModelCardError(f"{self.path}: '{where}' has _mode_ {value.get('_mode_')!r}; only plain construction is read")
            out = {}
            for key, item in value.items():
                if key in _IGNORED_KEYS or key in ("_disabled_", "_mode_"):
                    continue
                out[key] = self._resolve(item, f"{where}.{key}", chain)
            return out
        if value is None or isinstance(value, (bool, int, float)):
            return value
        raise ModelCardError(f"{self.path}: '{where}' holds an unsupported value")


def _read(path: Path) -> dict[str, Any]:
    """One config file's data: JSON, or YAML by its suffix (safe_load: data only)."""
    if not path.is_file():
        raise ModelCardError(f"{path}: config file not found; check the folder layout")
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    try:
        text = path.read_text(encoding="utf-8")
        if yaml_file:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # noqa: BLE001 - a bad file is the user's file's fault; one line says so
        kind = "YAML" if yaml_file else "JSON"
        raise ModelCardError(f"{path}: not a readable {kind} config ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ModelCardError(f"{path}: a config must be a mapping of keys to values")
    return data


def target_of(section: Any, where: str) -> tuple[str, dict[str, Any]]:
    """(card class name, constructor keyword arguments) of a resolved `_target_` section."""
    from .scheduler_spec import check_local_scheduler

    if not isinstance(section, dict) or "_target_" not in section:
        raise ModelCardError(f"'{where}' is not a network or scheduler definition (no _target_)")
    kwargs = {k: v for k, v in section.items() if k != "_target_"}
    target = section["_target_"]
    if target in LOCAL_TARGETS:
        check_local_scheduler(target, LOCAL_TARGETS[target], kwargs, where)
        return LOCAL_TARGETS[target], kwargs
    return ALLOWED_TARGETS[target], kwargs
