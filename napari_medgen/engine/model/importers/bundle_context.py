"""The context vector a bundle's UNet is conditioned on (by cross-attention, and where its input has more channels
than the latent, broadcast into them): each attribute's name and default from inference.json, its label and range
from metadata.json.

The brain LDM's inference.json builds the vector in a `$` expression, ``torch.tensor([[@gender, @age,
@ventricular_vol, @brain_vol]])``: the expression is read as text for the order of its ``@`` names (never
evaluated), and each name's literal value is the publisher's default; metadata.json's ``channel_def`` labels them
and its ``value_range`` bounds them.
"""

from __future__ import annotations

import re
from typing import Any

from ...errors import ModelCardError
from .safe_config import SafeConfig


def context_attributes(parsed: SafeConfig, metadata: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """`count` attributes for the card's `conditioning.context`, in the vector's order; refuses where the bundle
    does not say what they are."""
    labels, value_range = _metadata_channels(metadata)
    expression = parsed.data.get("conditioning")
    names: list[str] = []
    defaults: list[float] = []
    if isinstance(expression, str):
        for name in re.findall(r"@([A-Za-z_][A-Za-z0-9_]*)", expression):
            value = parsed.literal(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                names.append(name)
                defaults.append(float(value))
    if len(names) != count and len(labels) == count:
        names = [re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower() or f"attribute_{i}" for i, label in enumerate(labels)]
        defaults = [0.5 * (value_range[0] + value_range[1])] * count
    if len(names) != count:
        raise ModelCardError(
            f"{parsed.path}: the UNet takes a context of {count} values (cross_attention_dim) but the bundle names "
            f"{len(names)} (inference.json's 'conditioning' @ names, or metadata.json's channel_def): what each value "
            "means is unknown, so it cannot be offered"
        )
    low, high = value_range
    out = []
    for i, (name, default) in enumerate(zip(names, defaults, strict=True)):
        out.append({
            "name": name,
            "label": labels[i] if i < len(labels) else name,
            "minimum": min(low, default),
            "maximum": max(high, default),
            "default": default,
            "unit": "scaled to 0-1 as in training" if (low, high) == (0.0, 1.0) else "",
        })
    return out


def _metadata_channels(metadata: dict[str, Any]) -> tuple[list[str], tuple[float, float]]:
    inputs = metadata.get("network_data_format", {}).get("inputs", {}) if isinstance(metadata, dict) else {}
    for entry in inputs.values() if isinstance(inputs, dict) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("channel_def"), dict):
            continue
        if entry.get("type") not in ("tabular", "vector", None):
            continue
        channels = entry["channel_def"]
        keys = sorted((k for k in channels if str(k).isdigit()), key=int)
        span = entry.get("value_range", [0, 1])
        value_range = (float(span[0]), float(span[1])) if isinstance(span, list) and len(span) == 2 else (0.0, 1.0)
        return [str(channels[k]) for k in keys], value_range
    return [], (0.0, 1.0)
