"""Inpaint: regenerate a region of an Image layer, as a new layer or in place (undoable).

The region is drawn first: no region is chosen until the user makes one ("New region layer": an empty
Labels layer on the image's grid with the brush ready) or picks a Labels / Shapes layer. A region that
covers more than LARGE_REGION_SHARE of the anatomy is not run on the first press: the button asks again
("Inpaint anyway"), since regenerating most of a scan is usually a wrong layer picked, not a wish."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton
from napari.layers import Image, Labels, Shapes

from ..engine.errors import MedgenError, RegionError
from ..engine.synthesis import inpaint
from ..engine.synthesis.options import SamplingOptions
from ..engine.synthesis.region_share import region_share
from ..layer_geometry import (
    layer_data_for_volume,
    layer_kwargs_like,
    napari_layer_to_volume,
    shapes_to_region,
    volume_for_image_layer,
    volume_like_layer,
)
from . import messages
from .layers import add_result_layer, current_slice, layer_choices, optional_layer_choices
from .run_buttons import RunButtons
from .sampling_controls import SamplingControls
from .session import ModelSession

# The fill choice, explained where it is chosen (issue 33).
FILL_TOOLTIP = (
    "sample: one draw from the model: a texture of its own, for inserting or removing a structure; differs from "
    "run to run.\n"
    "mean: the average of several draws, blended with the surrounding tissue at the border: the closest to the "
    "hidden truth on average, for repairs; at the model's 2 mm alone it is smooth.\n"
    "Either way, on a scan finer than the model the fill is brought to the scan's resolution: with an anatomy "
    "layer its tissue edges where the anatomy puts them and each tissue at the scan's level nearby, and the "
    "scan's own grain (learnt around the region) added. On a 1 mm T1 that made the mean as textured as the scan "
    "and closer to it than a draw.\n"
    "auto: the card's choice by the region's thickness (see the README's inpainting table)."
)
LARGE_REGION_SHARE = 0.25  # of the anatomy (the anatomy layer's labels, else the scan's foreground)
REGION_LABEL = 1

if TYPE_CHECKING:
    import napari

    from .runner import EngineRun


class InpaintWidget(RunButtons, Container):
    """Image + region (Labels or Shapes on the current slice) + optional anatomy -> inpainted image."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.session = ModelSession.of(viewer)
        defaults = SamplingOptions()
        self.image = ComboBox(label="image", choices=layer_choices(viewer, Image))
        self.region = ComboBox(label="region", choices=optional_layer_choices(viewer, Labels, Shapes,
                                                                              none_text="(none: draw one)"))
        self.new_region_button = PushButton(text="New region layer")
        self.new_region_button.tooltip = "an empty Labels layer on the image's grid, with the brush ready to paint the region"
        self.anatomy = ComboBox(label="anatomy (optional)", choices=optional_layer_choices(viewer, Labels))
        self.context_mm = FloatSpinBox(label="context (mm)", value=defaults.context_mm, min=0.0, max=200.0)
        self.feather_mm = FloatSpinBox(label="seam feather (mm)", value=defaults.feather_mm, min=0.0, max=50.0)
        # What fills the region: a draw (a scan's texture), the posterior mean (faithful, smooth), or auto.
        self.estimate = ComboBox(label="fill", value=defaults.inpaint_estimate,
                                 choices=[("auto (mean if thin)", "auto"), ("sample (texture)", "sample"),
                                          ("mean (most faithful)", "mean")])
        self.estimate.tooltip = FILL_TOOLTIP
        self.in_place = CheckBox(text="replace the image in place (undoable)", value=False)
        self.sampling = SamplingControls(self.session, variants=False)
        self._init_run_buttons(viewer, "Inpaint")
        self.undo_button = PushButton(text="Undo in-place inpaint", enabled=False)
        Container.__init__(
            self,
            widgets=[self.image, self.region, self.new_region_button, self.anatomy, self.context_mm, self.feather_mm, self.estimate, self.in_place,
                     self.sampling,
                     self.run_button, self.cancel_button, self.undo_button, self.status]
        )
        self.run_button.changed.connect(self.start)
        self.undo_button.changed.connect(self.undo)
        self.new_region_button.changed.connect(self.new_region_layer)
        for choice in (self.image, self.region, self.anatomy):
            choice.changed.connect(self._forget_large_region)
        self._undo: list[tuple[Image, np.ndarray, dict]] = []
        self._large_region_asked: tuple | None = None  # (region layer, share) the user was asked about

    def new_region_layer(self) -> Labels | None:
        """An empty Labels layer on the chosen image's grid (scale, translate, affine, reference geometry),
        chosen as the region, selected, in paint mode with label 1."""
        image_layer = self.image.value
        if image_layer is None:
            messages.notify("warning", "Inpaint: open or choose an image first, then make its region layer")
            return None
        layer = self._viewer.add_labels(np.zeros(image_layer.data.shape, np.uint8),
                                        name=f"{image_layer.name} inpaint region", **layer_kwargs_like(image_layer))
        self.region.reset_choices()
        self.region.value = layer
        self._viewer.layers.selection.active = layer
        layer.selected_label = REGION_LABEL
        layer.mode = "paint"
        self.status.value = "paint the region to regenerate, then press Inpaint"
        return layer

    def _forget_large_region(self, *_: object) -> None:
        self._large_region_asked = None
        self.run_button.text = "Inpaint"

    def _asks_before_large_region(self, region_layer: object, share: float) -> bool:
        """True (and the button asks again) the first time a region covers more than LARGE_REGION_SHARE."""
        key = (id(region_layer), round(share, 3))
        if share <= LARGE_REGION_SHARE or self._large_region_asked == key:
            self._forget_large_region()
            return False
        self._large_region_asked = key
        self.run_button.text = "Inpaint anyway"
        self.status.value = (f"the region covers {share:.0%} of the anatomy: press 'Inpaint anyway' to regenerate it, "
                             "or draw a smaller region ('New region layer')")
        messages.notify("info", f"Inpaint: the region covers {share:.0%} of the anatomy; press 'Inpaint anyway' to go on")
        return True

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
            # A region drawn on another grid is resampled onto the image; anatomy must be on its grid.
            region = volume_for_image_layer(region_layer, image_layer, resample_allowed=True)
        labels = None
        if anatomy_layer is not None:
            labels = volume_for_image_layer(anatomy_layer, image_layer, resample_allowed=False)
        return image_layer, image, region, labels

    def start(self) -> EngineRun | None:
        """Start inpainting the chosen region; a wrong input is a notification and changes nothing."""
        model = self.session.model
        if model is None:
            messages.notify("warning", "Inpaint: no model loaded; choose one in the Model panel and press Load")
            return None
        try:
            image_layer, image, region, labels = self._inputs()
            options = self.sampling.options(context_mm=self.context_mm.value, feather_mm=self.feather_mm.value,
                                            inpaint_estimate=self.estimate.value)
            run = inpaint(model, image, region, labels, options)
        except MedgenError as error:
            messages.notify("warning", f"Inpaint: {error}")
            return None
        if self._asks_before_large_region(self.region.value, region_share(image, region, labels)):
            run.close()
            return None
        in_place = self.in_place.value
        limits = list(image_layer.contrast_limits)  # the result shown at the scan's window

        shape_at_start = tuple(image_layer.data.shape)

        def on_result(volumes: list) -> None:
            volume = volumes[0]
            # In place only into the very image the run started from: if the layer was closed or its data
            # replaced meanwhile, the result becomes a new layer rather than overwrite something else.
            if in_place and image_layer in self._viewer.layers and tuple(image_layer.data.shape) == shape_at_start:
                data = layer_data_for_volume(volume, image_layer)  # the layer's own array order and transforms
                metadata = {**image_layer.metadata, **volume.metadata}  # the provenance marks it synthetic
                self._undo.append((image_layer, np.array(image_layer.data, copy=True), dict(image_layer.metadata)))
                image_layer.data = np.array(data)
                image_layer.metadata = metadata
                self.undo_button.enabled = True
            else:
                if in_place:
                    messages.notify(
                        "warning",
                        f"Inpaint: {image_layer.name} was closed or changed during the run; the result is a new layer",
                    )
                name = f"{image_layer.name} inpainted | {model.name} | seed {options.seed}"
                add_result_layer(self._viewer, volume, name, contrast_limits=limits)

        return self.launch(
            run, f"Inpaint ({model.name}, seed {options.seed})", on_result,
            image.with_array(image.array.astype(np.float32)), list(image_layer.contrast_limits),
        )

    def undo(self) -> None:
        """Put back the image as it was before the last in-place inpaint."""
        if not self._undo:
            return
        layer, data, metadata = self._undo.pop()
        if layer in self._viewer.layers:
            layer.data = data
            layer.metadata = metadata
        self.undo_button.enabled = bool(self._undo)
