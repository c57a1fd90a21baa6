"""The live preview of a run: one Image layer, made before the run, updated in place, removed at its end."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image

from ..engine.volume import Volume
from ..napari_io import volume_to_layer

PREVIEW_NAME = "preview (running)"


class PreviewLayer:
    """The preview layer of one widget's runs."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.layer: Image | None = None

    def prepare(self, template: Volume, contrast_limits: list[float]) -> None:
        """Add the (empty) preview layer before the run starts: adding a layer mid-run stalls the GUI."""
        self.remove()
        data, kwargs, _ = volume_to_layer(template, "image", PREVIEW_NAME, contrast_limits=contrast_limits)
        self.layer = self.viewer.add_image(np.array(data), opacity=0.8, **kwargs)

    def show(self, volume: Volume) -> None:
        """Show a preview: in place when the layer is there and fits (keeping its contrast), else as a new layer."""
        present = self.layer is not None and self.layer in self.viewer.layers
        limits = self.layer.contrast_limits if present else None
        data, kwargs, _ = volume_to_layer(volume, "image", PREVIEW_NAME, contrast_limits=limits)
        if present and self.layer.data.shape == data.shape:
            self.layer.data = np.array(data)
            return
        self.remove()
        self.layer = self.viewer.add_image(np.array(data), **kwargs)

    def remove(self) -> None:
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer = None
