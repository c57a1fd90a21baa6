"""Anatomy painter: a Labels layer on an image's exact grid, with the model's anatomy classes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton
from napari.layers import Image, Labels

from ..engine.errors import MedgenError
from ..engine.label_tools import interpolate_between_slices, parse_mapping, remap_labels
from ..engine.model.labels import TISSUE_SCHEMA, LabelSchema
from ..engine.model.loading import LoadedModel
from ..layer_geometry import layer_data_for_volume, layer_kwargs_like, napari_layer_to_volume
from . import messages
from .layers import layer_choices
from .runner import EngineRun
from .session import ModelSession

if TYPE_CHECKING:
    import napari

SCHEMA_KEY = "label_schema"


def schema_in_use(model: LoadedModel | None) -> LabelSchema:
    """The loaded model's label schema, or the sample brain's tissues when none is loaded."""
    return model.card.label_schema if model is not None else TISSUE_SCHEMA


def schema_of(layer: Any, model: LoadedModel | None) -> LabelSchema:
    """The schema a layer was made with (in its metadata), else the one in use."""
    raw = layer.metadata.get(SCHEMA_KEY)
    return LabelSchema(classes=raw) if raw else schema_in_use(model)


class AnatomyPainter(Container):
    """Create an anatomy Labels layer for an image, pick classes by name, import, fill gaps."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.session = ModelSession.of(viewer)
        self.image = ComboBox(label="image", choices=layer_choices(viewer, Image))
        self.create_button = PushButton(text="Create anatomy layer")
        self.from_scan_button = PushButton(text="Labels from scan")
        self.from_scan_cancel = PushButton(text="Cancel", enabled=False)
        self.scan_run: EngineRun | None = None
        self.anatomy = ComboBox(label="anatomy layer", choices=layer_choices(viewer, Labels))
        self.anatomy_class = ComboBox(label="paint class", choices=self._class_names)
        self.under_cursor = Label(value="")
        self.source = ComboBox(label="import from", choices=layer_choices(viewer, Labels))
        self.mapping = LineEdit(label="mapping (src:dst)", value="1:1, 2:2, 3:3")
        self.import_button = PushButton(text="Import segmentation")
        self.fill_button = PushButton(text="Fill gaps between painted slices")
        super().__init__(
            widgets=[self.image, self.create_button, self.from_scan_button, self.from_scan_cancel, self.anatomy, self.anatomy_class, self.under_cursor,
                     self.source, self.mapping, self.import_button, self.fill_button]
        )
        self.create_button.changed.connect(self.create_layer)
        self.from_scan_button.changed.connect(self.labels_from_scan)
        self.from_scan_cancel.changed.connect(self.cancel_labels_from_scan)
        self.anatomy_class.changed.connect(self._pick_class)
        self.anatomy.changed.connect(lambda *_: self.anatomy_class.reset_choices())
        self.import_button.changed.connect(self.import_segmentation)
        self.fill_button.changed.connect(self.fill_gaps)
        viewer.cursor.events.position.connect(self._show_class_under_cursor)
        self._default_class()

    def _default_class(self) -> None:
        """Start with the first anatomy class, not background."""
        choices = [v for v in self.anatomy_class.choices if v]
        if choices:
            self.anatomy_class.value = choices[0]

    def _class_names(self, _widget: Any = None) -> list[tuple[str, int]]:
        layer = getattr(self, "anatomy", None)
        model = self.session.model
        schema = schema_of(layer.value, model) if layer is not None and layer.value is not None else schema_in_use(model)
        return [(f"{c.index}: {c.name}", c.index) for c in schema.classes]

    def create_layer(self) -> Labels | None:
        """A Labels layer with the image's shape, scale, translate, affine and reference geometry."""
        image = self.image.value
        if image is None:
            messages.notify("warning", "Anatomy painter: open an image first")
            return None
        if getattr(image, "rgb", False) or getattr(image, "multiscale", False) or image.data.ndim not in (2, 3):
            messages.notify(
                "warning",
                f"Anatomy painter: {image.name} is not a single-channel 2-D or 3-D scan (an RGB picture, a pyramid "
                "or a time series); open the scan itself",
            )
            return None
        schema = schema_in_use(self.session.model)
        kwargs = layer_kwargs_like(image)
        metadata = dict(kwargs.pop("metadata", {}))
        metadata[SCHEMA_KEY] = schema.to_json()
        dtype = schema.label_dtype
        layer = self._viewer.add_labels(
            np.zeros(image.data.shape, dtype), name=f"{image.name} anatomy", metadata=metadata,
            colormap=schema.napari_colormap(), **kwargs,
        )
        self.anatomy.reset_choices()
        self.anatomy.value = layer
        self.anatomy_class.reset_choices()
        self._default_class()
        self._pick_class()
        return layer

    def labels_from_scan(self) -> EngineRun | None:
        """Start making a label map of the image (the model's atlas registered to it, refined by a mixture
        model) in a worker; it lands as a new anatomy layer on the image's grid, to edit. A cancel or an
        error adds nothing."""
        from ..engine.anatomy import labels_from_scan

        image = self.image.value
        if image is None:
            messages.notify("warning", "Labels from scan: open a scan first")
            return None
        if self.scan_run is not None and self.scan_run.running:
            messages.notify("warning", "Labels from scan: a run is still going; wait for it or press Cancel")
            return None
        model = self.session.model
        schema = schema_in_use(model)
        try:
            run = labels_from_scan(napari_layer_to_volume(image), model)
        except MedgenError as error:
            messages.notify("warning", f"Labels from scan: {error}")
            return None

        def add_layer(label_map: Any) -> None:
            kwargs = layer_kwargs_like(image)
            metadata = dict(kwargs.pop("metadata", {}))
            metadata[SCHEMA_KEY] = schema.to_json()
            metadata["labels_from_scan"] = dict(label_map.metadata)
            layer = self._viewer.add_labels(
                layer_data_for_volume(label_map, image).astype(schema.label_dtype),
                name=f"{image.name} anatomy (from scan)", metadata=metadata, colormap=schema.napari_colormap(),
                **kwargs,
            )
            self.anatomy.reset_choices()
            self.anatomy.value = layer
            self.anatomy_class.reset_choices()
            self._default_class()
            self._pick_class()

        def ended(outcome: str) -> None:
            self.from_scan_button.enabled = True
            self.from_scan_cancel.enabled = False

        self.scan_run = EngineRun(run, "Labels from scan", add_layer, ended)
        self.from_scan_button.enabled = False
        self.from_scan_cancel.enabled = True
        self.scan_run.start()
        return self.scan_run

    def cancel_labels_from_scan(self) -> None:
        if self.scan_run is not None:
            self.scan_run.cancel()

    def _pick_class(self, *_: Any) -> None:
        layer = self.anatomy.value
        if layer is not None and self.anatomy_class.value is not None:
            layer.selected_label = int(self.anatomy_class.value)

    def _show_class_under_cursor(self, *_: Any) -> None:
        layer = self.anatomy.value
        if layer is None or layer not in self._viewer.layers:
            return
        value = layer.get_value(self._viewer.cursor.position, world=True)
        if value is None:
            self.under_cursor.value = ""
            return
        name = schema_of(layer, self.session.model).name_of(int(value))
        self.under_cursor.value = f"under cursor: {name or f'unknown label {int(value)}'}"

    def import_segmentation(self) -> Labels | None:
        """A new anatomy layer with the source's labels remapped onto the schema (others to 0)."""
        source = self.source.value
        if source is None:
            messages.notify("warning", "Anatomy painter: open a segmentation (File > Open) to import")
            return None
        schema = schema_in_use(self.session.model)
        try:
            remapped = remap_labels(np.asarray(source.data), parse_mapping(self.mapping.value), schema)
        except MedgenError as error:
            messages.notify("warning", f"Anatomy painter: {error}")
            return None
        metadata = {k: v for k, v in source.metadata.items()}
        metadata[SCHEMA_KEY] = schema.to_json()
        layer = self._viewer.add_labels(
            remapped, name=f"{source.name} (remapped)", scale=source.scale, translate=source.translate,
            affine=source.affine.affine_matrix, metadata=metadata, colormap=schema.napari_colormap(),
        )
        self.anatomy.reset_choices()
        self.anatomy.value = layer
        return layer

    def fill_gaps(self) -> int:
        """Interpolate the selected class between the slices it is painted on (one undoable step)."""
        layer = self.anatomy.value
        if layer is None or layer.data.ndim != 3:
            messages.notify("warning", "Anatomy painter: fill needs a 3-D anatomy layer")
            return 0
        label = int(layer.selected_label)
        fill = interpolate_between_slices(np.asarray(layer.data), label, tuple(float(s) for s in layer.scale[1:]))
        count = int(fill.sum())
        if count == 0:
            messages.notify(
                "warning", f"Anatomy painter: paint class {label} on at least two slices with a gap between them first"
            )
            return 0
        # data_setitem records the change in napari's undo history, as a brush stroke does.
        layer.data_setitem(np.nonzero(fill), label)
        return count
