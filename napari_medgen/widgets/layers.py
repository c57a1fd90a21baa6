"""The widgets' view of the viewer's layers: layer choices, the current slice, and result layers."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image

from ..engine.volume import Volume
from ..napari_io import volume_to_layer


def layer_choices(viewer: Any, *types: type) -> Any:
    """A callable for magicgui choices: the viewer's layers of `types`, kept current by napari."""

    def choices(_widget: Any = None) -> list:
        return [layer for layer in viewer.layers if isinstance(layer, types)]

    return choices


def optional_layer_choices(viewer: Any, *types: type, none_text: str = "(none)") -> Any:
    """As `layer_choices`, with `none_text` (no layer) first."""
    base = layer_choices(viewer, *types)
    return lambda _widget=None: [(none_text, None)] + [(layer.name, layer) for layer in base()]


def current_slice(viewer: Any, layer: Any) -> int:
    """The layer's data index along axis 0 at the viewer's current position."""
    index = layer.world_to_data(viewer.dims.point)
    return int(np.clip(np.round(index[0]), 0, layer.data.shape[0] - 1))


def add_result_layer(viewer: Any, volume: Volume, name: str, contrast_limits: list[float] | None = None) -> Image:
    """A result volume as an Image layer in physical space, provenance in its metadata; `contrast_limits`: the
    source scan's (an inpainted scan shown as the scan is, so the fill is judged at the same window)."""
    data, kwargs, _ = volume_to_layer(volume, "image", name)
    if contrast_limits is not None:
        kwargs["contrast_limits"] = list(contrast_limits)
    return viewer.add_image(data, **kwargs)
