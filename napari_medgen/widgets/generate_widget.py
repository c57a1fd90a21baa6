"""Generate: a synthetic image from a Labels layer, the current slice or the whole volume; for a model that takes no
label map, on the grid of an open Image layer or the model's own, with its context attributes and modality."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, RadioButtons
from napari.layers import Image, Labels

from ..engine.errors import MedgenError
from ..engine.synthesis import generate, generation_grid, output_template
from ..layer_geometry import napari_layer_to_volume
from . import messages
from .condition_controls import ConditionControls
from .layers import add_result_layer, current_slice, layer_choices, optional_layer_choices
from .run_buttons import RunButtons
from .sampling_controls import SamplingControls
from .session import ModelSession

if TYPE_CHECKING:
    import napari

    from .runner import EngineRun

OWN_GRID = "(the model's own size and spacing)"


class GenerateWidget(RunButtons, Container):
    """Labels layer in, new Image layer(s) out, in the label layer's geometry; for a model that takes no label
    map, an Image layer's grid (or the model's own) in, the result in that geometry."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.session = ModelSession.of(viewer)
        self.label_layer = ComboBox(label="label map", choices=layer_choices(viewer, Labels))
        self.grid = ComboBox(label="grid", choices=optional_layer_choices(viewer, Image, none_text=OWN_GRID))
        self.grid.tooltip = "a model without a label map generates on this image's grid, or on its own size and spacing"
        self.scope = RadioButtons(label="extent", choices=["current slice", "whole volume"], value="current slice")
        self.conditions = ConditionControls(self.session)
        self.sampling = SamplingControls(self.session)
        self._init_run_buttons(viewer, "Generate")
        Container.__init__(
            self,
            widgets=[self.label_layer, self.grid, self.scope, self.conditions, self.sampling, self.run_button,
                     self.cancel_button, self.status],
        )
        self.run_button.changed.connect(self.start)
        self.session.changed.connect(self._suit_model)
        self._suit_model(self.session.model)

    def _suit_model(self, model) -> None:
        """A 3-D model makes the whole volume at once (one slice would be only padding around it); a model
        without a label map asks for a grid instead of a Labels layer."""
        if model is not None and model.card.spatial_dims == 3:
            self.scope.value = "whole volume"
        label_free = model is not None and not model.card.takes_label_map
        self.label_layer.visible, self.grid.visible = not label_free, label_free
        self.conditions.visible = self.conditions.in_use

    def start(self) -> EngineRun | None:
        """Start generating from the chosen label map; a wrong input is a notification and changes nothing."""
        model = self.session.model
        if model is None:
            messages.notify("warning", "Generate: no model loaded; choose one in the Model panel and press Load")
            return None
        layer = self.label_layer.value if model.card.takes_label_map else self.grid.value
        if layer is None and model.card.takes_label_map:
            messages.notify(
                "warning", "Generate: no label map; paint one in a Labels layer (the Anatomy painter makes one)"
            )
            return None
        try:
            if model.card.takes_label_map:
                label_map = napari_layer_to_volume(layer)
                label_map = label_map.with_array(label_map.array.copy())  # painting may go on during the run
            else:  # the grid the CLI's --like gives (or its own), through the same engine function
                label_map = generation_grid(model.card, napari_layer_to_volume(layer) if layer is not None else None)
            slice_range = None
            if (self.scope.value == "current slice" and layer is not None and label_map.ndim == 3
                    and model.card.spatial_dims == 2):
                k = current_slice(self._viewer, layer)
                slice_range = (k, k + 1)
            options = self.sampling.options(**self.conditions.values())
            run = generate(model, label_map, options, slice_range=slice_range)
        except MedgenError as error:
            messages.notify("warning", f"Generate: {error}")
            return None
        source, seed = layer.name if layer is not None else "own grid", options.seed

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
