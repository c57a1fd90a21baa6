"""The Model panel: pick a model from the registry, a device and a precision; load and release it.

The loaded model belongs to the viewer's `ModelSession`, where the other widgets find it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from magicgui.widgets import ComboBox, Container, Label, PushButton, TextEdit

from ..engine.errors import MedgenError
from ..engine.model.device import PRECISION_NAMES, available_devices
from ..engine.model.loading import LoadedModel
from ..engine.model.registry import list_models
from . import messages
from .session import ModelSession

if TYPE_CHECKING:
    import napari


class ModelPanel(Container):
    """Registry listing, device and precision choice, load / release, memory in use."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.session = ModelSession.of(viewer)
        self._entries = {}
        self._problems: list[str] = []
        # Choices as a callable: napari resets widget choices on layer events, and a callable keeps
        # the registry's listing instead of the (empty) choices the widget was built with.
        self._model_choice = ComboBox(label="model", choices=self._model_names)
        self._device = ComboBox(label="device", choices=available_devices(), value="auto")
        self._precision = ComboBox(label="precision", choices=list(PRECISION_NAMES), value=PRECISION_NAMES[0])
        self._details = TextEdit(label="card", value="")
        self._details.read_only = True
        self._load = PushButton(text="Load")
        self._release = PushButton(text="Release")
        self._status = Label(value="no model loaded")
        super().__init__(
            widgets=[self._model_choice, self._details, self._device, self._precision, self._load, self._release, self._status]
        )
        self._model_choice.changed.connect(self._show_card)
        self._load.changed.connect(self.load)
        self._release.changed.connect(self.release)
        self.session.changed.connect(self._update_status)  # held weakly: a closed panel is not kept alive
        self.refresh()
        self._update_status()

    def _model_names(self, _widget: object = None) -> list[str]:
        entries, self._problems = list_models()
        self._entries = {e.card.name: e for e in entries}
        return list(self._entries)

    def refresh(self) -> None:
        """Re-read the model folders (after installing or training a model)."""
        self._model_choice.reset_choices()
        for problem in self._problems:
            messages.notify("warning", f"skipped a model folder: {problem}")
        self._show_card()

    def select(self, name: str) -> bool:
        """Choose the model called `name` in the list; False (and nothing changes) if it is not installed."""
        if name not in self._model_choice.choices:
            return False
        self._model_choice.value = name
        return True

    def _show_card(self) -> None:
        entry = self._entries.get(self._model_choice.value)
        if entry is None:
            self._details.value = "no models found (see `napari-medgen models`)"
            return
        card = entry.card
        lines = [
            f"{card.name} {card.version} ({card.spatial_dims}-D, {card.modality})",
            card.description,
            f"tasks: {', '.join(card.tasks)}",
            f"conditions on: {card.conditioning_summary()}",
            f"labels: {', '.join(c.name for c in card.label_schema.classes)}",
            f"licence: {card.license}",
            f"from: {entry.source} ({entry.folder})",
        ]
        if entry.shadows:
            lines.append("shadows: " + "; ".join(entry.shadows))
        self._details.value = "\n".join(line for line in lines if line)

    def load(self) -> LoadedModel | None:
        """Load the chosen model on the chosen device and precision into the viewer's session.

        On an error the user is told why and the model loaded before stays loaded.
        """
        name = self._model_choice.value
        if name is None:
            messages.notify("warning", "no model to load: install one or set NAPARI_MEDGEN_MODELS")
            return None
        try:
            return self.session.load(self._entries[name].folder, device=self._device.value, precision=self._precision.value)
        except MedgenError as error:
            messages.notify("warning", str(error))
            return None

    def release(self) -> None:
        """Free the loaded model; the widgets then have none."""
        self.session.release()

    def _update_status(self, *_: object) -> None:
        model = self.session.model
        if model is None:
            status = "no model loaded"
        else:
            memory = f"weights {model.parameter_bytes() / 2**20:.1f} MiB"
            if model.device.type == "cuda":
                memory += f", GPU memory in use {torch.cuda.memory_allocated(model.device) / 2**20:.0f} MiB"
            precision = str(model.dtype).replace("torch.", "")
            why = model.extra.get("precision", {}).get("why", "")
            status = f"loaded {model.name} on {model.device} ({precision}{': ' + why if why != 'asked for' and why else ''}); {memory}"
        try:
            self._status.value = status
        except RuntimeError:  # the panel was closed and its Qt half deleted: stop listening
            self.session.changed.disconnect(self._update_status)
