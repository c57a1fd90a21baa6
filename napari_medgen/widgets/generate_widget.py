"""Generate: a synthetic image from a Labels layer, the current slice or the whole volume."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, Label, PushButton, RadioButtons

from ..engine.errors import MedgenError
from ..engine.synthesis import generate, output_template
from ..layer_geometry import napari_layer_to_volume
from .common import Labels, PreviewLayer, SamplingControls, add_result_layer, current_slice, layer_choices, warn
from .model_panel import current_model
from .runner import EngineRun

if TYPE_CHECKING:
    import napari


class GenerateWidget(Container):
    """Labels layer in, new Image layer(s) out, in the label layer's geometry."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.label_layer = ComboBox(label="label map", choices=layer_choices(viewer, Labels))
        self.scope = RadioButtons(label="extent", choices=["current slice", "whole volume"], value="current slice")
        self.sampling = SamplingControls()
        self.run_button = PushButton(text="Generate")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        super().__init__(widgets=[self.label_layer, self.scope, self.sampling, self.run_button, self.cancel_button, self.status])
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self._preview = PreviewLayer(viewer)
        self.current_run: EngineRun | None = None

    def start(self) -> EngineRun | None:
        model = current_model()
        layer = self.label_layer.value
        if model is None:
            warn("Generate: no model loaded; choose one in the Model panel and press Load")
            return None
        if layer is None:
            warn("Generate: no label map; paint one in a Labels layer (the Anatomy painter makes one)")
            return None
        try:
            label_map = napari_layer_to_volume(layer)
            label_map = label_map.with_array(label_map.array.copy())  # painting may go on during the run
            slice_range = None
            if self.scope.value == "current slice" and label_map.ndim == 3:
                k = current_slice(self._viewer, layer)
                slice_range = (k, k + 1)
            options = self.sampling.options()
            run = generate(model, label_map, options, slice_range=slice_range)
        except MedgenError as error:
            warn(f"Generate: {error}")
            return None
        source, seed = layer.name, options.seed

        def on_result(volumes: list) -> None:
            self._preview.remove()
            for volume in volumes:
                name = f"{source} | {model.name} | seed {volume.metadata['provenance']['seed']}"
                add_result_layer(self._viewer, volume, name)

        norm = model.card.normalization
        self._preview.prepare(output_template(label_map, slice_range), [norm.output_min, norm.output_max])
        self.current_run = EngineRun(run, f"Generate ({model.name}, seed {seed})", on_result, self._ended, self._preview.show)
        self._busy(True)
        self.status.value = "generating..."
        self.current_run.start()
        return self.current_run

    def cancel(self) -> None:
        if self.current_run is not None:
            self.status.value = "cancelling after this step..."
            self.current_run.cancel()

    def _ended(self, outcome: str) -> None:
        self._preview.remove()
        self._busy(False)
        self.status.value = {"done": "done", "cancelled": "cancelled; no layer changed", "failed": "failed; no layer changed"}[outcome]

    def _busy(self, busy: bool) -> None:
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy
