"""Generate: a synthetic image from a Labels layer, the current slice or the whole volume."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, RadioButtons
from napari.layers import Labels

from ..engine.errors import MedgenError
from ..engine.synthesis import generate, output_template
from ..layer_geometry import napari_layer_to_volume
from . import messages
from .layers import add_result_layer, current_slice, layer_choices
from .run_buttons import RunButtons
from .sampling_controls import SamplingControls
from .session import ModelSession

if TYPE_CHECKING:
    import napari

    from .runner import EngineRun


class GenerateWidget(RunButtons, Container):
    """Labels layer in, new Image layer(s) out, in the label layer's geometry."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.session = ModelSession.of(viewer)
        self.label_layer = ComboBox(label="label map", choices=layer_choices(viewer, Labels))
        self.scope = RadioButtons(label="extent", choices=["current slice", "whole volume"], value="current slice")
        self.sampling = SamplingControls(self.session)
        self._init_run_buttons(viewer, "Generate")
        Container.__init__(
            self,
            widgets=[self.label_layer, self.scope, self.sampling, self.run_button, self.cancel_button, self.status],
        )
        self.run_button.changed.connect(self.start)
        self.session.changed.connect(self._suit_model)
        self._suit_model(self.session.model)

    def _suit_model(self, model) -> None:
        """A 3-D model makes the whole volume at once (one slice would be only padding around it)."""
        if model is not None and model.card.spatial_dims == 3:
            self.scope.value = "whole volume"

    def start(self) -> EngineRun | None:
        """Start generating from the chosen label map; a wrong input is a notification and changes nothing."""
        model = self.session.model
        layer = self.label_layer.value
        if model is None:
            messages.notify("warning", "Generate: no model loaded; choose one in the Model panel and press Load")
            return None
        if layer is None:
            messages.notify(
                "warning", "Generate: no label map; paint one in a Labels layer (the Anatomy painter makes one)"
            )
            return None
        try:
            label_map = napari_layer_to_volume(layer)
            label_map = label_map.with_array(label_map.array.copy())  # painting may go on during the run
            slice_range = None
            if self.scope.value == "current slice" and label_map.ndim == 3 and model.card.spatial_dims == 2:
                k = current_slice(self._viewer, layer)
                slice_range = (k, k + 1)
            options = self.sampling.options()
            run = generate(model, label_map, options, slice_range=slice_range)
        except MedgenError as error:
            messages.notify("warning", f"Generate: {error}")
            return None
        source, seed = layer.name, options.seed

        def on_result(volumes: list) -> None:
            for volume in volumes:
                name = f"{source} | {model.name} | seed {volume.metadata['provenance']['seed']}"
                add_result_layer(self._viewer, volume, name)

        return self.launch(
            run, f"Generate ({model.name}, seed {seed})", on_result,
            output_template(label_map, slice_range), preview_contrast(model.card),
        )


def preview_contrast(card) -> list[float]:
    """The preview's contrast: a CT model's display window in HU, else the card's output range."""
    norm = card.normalization
    if card.modality == "CT" and norm.kind == "ct_window":
        from ..engine.synthesis.latent import CT_DISPLAY_WINDOW

        return [float(v) for v in CT_DISPLAY_WINDOW]
    return [norm.output_min, norm.output_max]
