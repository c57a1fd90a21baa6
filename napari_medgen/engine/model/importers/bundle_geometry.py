"""A MONAI bundle's geometry as its publisher trained it: array orientation, voxel spacing and the size it samples.

inference.json rarely says: the training configs do (brats_mri_generative_diffusion's ``train_autoencoder.json``:
``Orientationd(axcodes="RAS")`` and ``spacing: [1.1, 1.1, 1.1]``), else ``metadata.json`` (``image_classes``:
"... with 1x1x1 mm voxel size"; the output's ``spatial_shape``), else the bundle's saver script's literal affine
(the brain LDM's NiftiSaver: x towards the left), read as a Python literal (``ast.literal_eval``), never run. The
size sampled is the config's ``latent_shape`` x the autoencoder's compression (pixel models: ``image_size``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from ...errors import ModelCardError
from .safe_config import SafeConfig

LAYOUTS = {"RAS": "ras_xyz", "LAS": "las_xyz"}
_SPACING_TEXT = re.compile(r"(\d+(?:\.\d+)?)((?:\s*x\s*\d+(?:\.\d+)?)+)\s*mm")


def bundle_geometry(
    folder: Path, parsed: SafeConfig, metadata: dict[str, Any], n: int, compression: int | None,
    layout: str | None = None, spacing: list[float] | None = None,
) -> tuple[str, list[float], list[int] | None, list[str]]:
    """(array layout, spacing (x, y[, z]) mm, size sampled (x, y[, z]) or None, notes on where each came from)."""
    notes: list[str] = []
    train = _training_configs(folder)
    if layout is None:
        layout, where = _layout(folder, train)
        notes.append(f"array orientation {layout} ({where}; --layout overrides)")
    if spacing is None:
        spacing, where = _spacing(parsed, train, metadata, n)
        notes.append(f"spacing {spacing} mm ({where}; --spacing overrides)")
    elif len(spacing) != n:
        raise ModelCardError(f"the bundle's model is {n}-D: --spacing needs {n} values")
    return layout, [float(s) for s in spacing], _size(parsed, metadata, n, compression), notes


def _training_configs(folder: Path) -> list[SafeConfig]:
    out = []
    for path in sorted((folder / "configs").glob("train*.json")) + sorted((folder / "configs").glob("train*.yaml")):
        try:
            out.append(SafeConfig(path))
        except ModelCardError:
            continue  # an unreadable training config says nothing about geometry
    return out


def _layout(folder: Path, train: list[SafeConfig]) -> tuple[str, str]:
    for config in train:
        for section in _target_sections(config.data):
            if str(section.get("_target_", "")).split(".")[-1] in ("Orientationd", "Orientation"):
                codes = section.get("axcodes")
                if isinstance(codes, str) and codes.upper() in LAYOUTS:
                    return LAYOUTS[codes.upper()], f"{config.path.name}: Orientationd axcodes {codes}"
    for script in sorted((folder / "scripts").glob("*.py")):
        signs = _affine_signs(script)
        if signs is not None:
            codes = ("R" if signs[0] > 0 else "L") + ("A" if signs[1] > 0 else "P") + "S"
            if codes in LAYOUTS:
                return LAYOUTS[codes], f"the affine of {script.name}"
    return "ras_xyz", "assumed: MONAI's RAS, no training config or saver states it"


def _target_sections(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        found = [value] if "_target_" in value else []
        return found + [s for item in value.values() for s in _target_sections(item)]
    if isinstance(value, list):
        return [s for item in value for s in _target_sections(item)]
    return []


def _affine_signs(script: Path) -> tuple[float, float, float] | None:
    """The diagonal signs of a literal `affine = np.array([[...]])` in a script, parsed (never run)."""
    try:
        tree = ast.parse(script.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError, OSError):
        return None
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call) or not node.value.args:
            continue
        target = node.targets[0]
        named = getattr(target, "attr", getattr(target, "id", ""))
        if named != "affine":
            continue
        try:
            matrix = ast.literal_eval(node.value.args[0])
            return tuple(float(matrix[i][i]) for i in range(3))  # type: ignore[return-value]
        except (ValueError, TypeError, IndexError, SyntaxError):
            continue
    return None


def _spacing(parsed: SafeConfig, train: list[SafeConfig], metadata: dict[str, Any], n: int) -> tuple[list[float], str]:
    for config in [parsed, *train]:
        for key in ("spacing", "pixdim", "target_spacing"):
            value = config.literal(key)
            if _numbers(value, n):
                return [float(v) for v in value], f"{config.path.name}: {key}"
    text = str(metadata.get("image_classes", ""))
    match = _SPACING_TEXT.search(text)
    if match:
        values = [float(match.group(1))] + [float(v) for v in re.findall(r"\d+(?:\.\d+)?", match.group(2))]
        if len(values) == n:
            return values, "metadata.json: image_classes"
    return [1.0] * n, "assumed: 1 mm, no config states it"


def _size(parsed: SafeConfig, metadata: dict[str, Any], n: int, compression: int | None) -> list[int] | None:
    if compression is not None:
        shape = parsed.literal("latent_shape")
        if isinstance(shape, list) and len(shape) == n + 1 and _numbers(shape[1:], n):
            return [int(v) * compression for v in shape[1:]]
        outputs = metadata.get("network_data_format", {}).get("outputs", {}) if isinstance(metadata, dict) else {}
        for output in outputs.values() if isinstance(outputs, dict) else []:
            shape = output.get("spatial_shape") if isinstance(output, dict) else None
            if isinstance(shape, list) and len(shape) == n and all(str(v).isdigit() for v in shape):
                return [int(v) for v in shape]
        return None
    shape = parsed.literal("image_size")
    if isinstance(shape, list) and len(shape) == n + 1 and _numbers(shape[1:], n):
        return [int(v) for v in shape[1:]]
    return None


def _numbers(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value)


def image_scaling(parsed: SafeConfig) -> tuple[float, float, float, float] | None:
    """(a_min, a_max, b_min, b_max) of the bundle's ScaleIntensityRanged: intensities a -> the network's b."""
    for section in _target_sections(parsed.data):
        if str(section.get("_target_", "")).split(".")[-1] in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            values = [section.get(k) for k in ("a_min", "a_max", "b_min", "b_max")]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and values[0] < values[1] and values[2] < values[3]:
                return tuple(float(v) for v in values)  # type: ignore[return-value]
    return None
