"""Inpaint: regenerate a region of an Image layer, as a new layer or in place (undoable)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, PushButton

from ..engine.errors import MedgenError, RegionError
from ..engine.synthesis import inpaint
from ..layer_geometry import napari_layer_to_volume, shapes_to_region, volume_like_layer, volume_to_layer_data
from .common import (
    Image,
    Labels,
    PreviewLayer,
    SamplingControls,
    Shapes,
    add_result_layer,
    current_slice,
    layer_choices,
    optional_layer_choices,
    warn,
)
from .model_panel import current_model
from .runner import EngineRun

if TYPE_CHECKING:
    import napari


class InpaintWidget(Container):
    """Image + region (Labels or Shapes on the current slice) + optional anatomy -> inpainted image."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.image = ComboBox(label="image", choices=layer_choices(viewer, Image))
        self.region = ComboBox(label="region", choices=layer_choices(viewer, Labels, Shapes))
        self.anatomy = ComboBox(label="anatomy (optional)", choices=optional_layer_choices(viewer, Labels))
        self.context_mm = FloatSpinBox(label="context (mm)", value=16.0, min=0.0, max=200.0)
        self.feather_mm = FloatSpinBox(label="seam feather (mm)", value=2.0, min=0.0, max=50.0)
        self.in_place = CheckBox(text="replace the image in place (undoable)", value=False)
        self.sampling = SamplingControls(variants=False)
        self.run_button = PushButton(text="Inpaint")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.undo_button = PushButton(text="Undo in-place inpaint", enabled=False)
        self.status = Label(value="")
        super().__init__(
            widgets=[self.image, self.region, self.anatomy, self.context_mm, self.feather_mm, self.in_place, self.sampling,
                     self.run_button, self.cancel_button, self.undo_button, self.status]
        )
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.undo_button.changed.connect(self.undo)
        self._preview = PreviewLayer(viewer)
        self._undo: list[tuple[Image, np.ndarray, dict]] = []
        self.current_run: EngineRun | None = None

    def _inputs(self):
        image_layer, region_layer, anatomy_layer = self.image.value, self.region.value, self.anatomy.value
        if image_layer is None or region_layer is None:
            raise RegionError("choose an image and a region layer (a Labels layer, or Shapes drawn on the current slice)")
        image = napari_layer_to_volume(image_layer)
        image = image.with_array(image.array.copy())
        if isinstance(region_layer, Shapes):
            mask = shapes_to_region(region_layer, image_layer, current_slice(self._viewer, image_layer))
            region = volume_like_layer(mask.astype(np.uint8), image_layer)
        else:
            region = volume_like_layer(region_layer.data, image_layer)
        labels = volume_like_layer(anatomy_layer.data, image_layer) if anatomy_layer is not None else None
        return image_layer, image, region, labels

    def start(self) -> EngineRun | None:
        model = current_model()
        if model is None:
            warn("Inpaint: no model loaded; choose one in the Model panel and press Load")
            return None
        try:
            image_layer, image, region, labels = self._inputs()
            options = self.sampling.options()
            run = inpaint(model, image, region, labels, options, context_mm=self.context_mm.value, feather_mm=self.feather_mm.value)
        except MedgenError as error:
            warn(f"Inpaint: {error}")
            return None
        in_place = self.in_place.value

        def on_result(volumes: list) -> None:
            self._preview.remove()
            volume = volumes[0]
            if in_place:
                data, kwargs, _ = volume_to_layer_data(volume, "image")
                self._undo.append((image_layer, np.array(image_layer.data, copy=True), dict(image_layer.metadata)))
                image_layer.data = np.array(data)
                image_layer.metadata = kwargs["metadata"]
                self.undo_button.enabled = True
            else:
                name = f"{image_layer.name} inpainted | {model.name} | seed {options.seed}"
                add_result_layer(self._viewer, volume, name)

        self._preview.prepare(image.with_array(image.array.astype(np.float32)), list(image_layer.contrast_limits))
        self.current_run = EngineRun(run, f"Inpaint ({model.name}, seed {options.seed})", on_result, self._ended, self._preview.show)
        self._busy(True)
        self.status.value = "inpainting..."
        self.current_run.start()
        return self.current_run

    def cancel(self) -> None:
        if self.current_run is not None:
            self.status.value = "cancelling after this step..."
            self.current_run.cancel()

    def undo(self) -> None:
        """Put back the image as it was before the last in-place inpaint."""
        if not self._undo:
            return
        layer, data, metadata = self._undo.pop()
        if layer in self._viewer.layers:
            layer.data = data
            layer.metadata = metadata
        self.undo_button.enabled = bool(self._undo)

    def _ended(self, outcome: str) -> None:
        self._preview.remove()
        self._busy(False)
        self.status.value = {"done": "done", "cancelled": "cancelled; no layer changed", "failed": "failed; no layer changed"}[outcome]

    def _busy(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy
