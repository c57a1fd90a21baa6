"""The Model panel: pick a model from the registry, a device and a precision; load and release it.

The loaded model is shared with the other widgets through `current_model()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from magicgui.widgets import ComboBox, Container, Label, PushButton, TextEdit

from ..engine.errors import MedgenError
from ..engine.model.loading import LoadedModel, load_model, release_model
from ..engine.model.registry import list_models

if TYPE_CHECKING:
    import napari

_CURRENT: dict[str, LoadedModel | None] = {"model": None}


_LISTENERS: list = []


def current_model() -> LoadedModel | None:
    """The model loaded in the Model panel (None if none is loaded)."""
    return _CURRENT["model"]


def on_model_change(callback) -> None:  # noqa: ANN001 - a no-argument callable
    """Call `callback()` whenever the Model panel loads or releases a model."""
    _LISTENERS.append(callback)


def _set_current(model: LoadedModel | None) -> None:
    _CURRENT["model"] = model
    for callback in list(_LISTENERS):
        try:
            callback()
        except RuntimeError:  # a widget that has been closed
            _LISTENERS.remove(callback)


def available_devices() -> list[str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


class ModelPanel(Container):
    """Registry listing, device and precision choice, load / release, memory in use."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._entries = {}
        self._problems: list[str] = []
        # Choices as a callable: napari resets widget choices on layer events, and a callable keeps
        # the registry's listing instead of the (empty) choices the widget was built with.
        self._model_choice = ComboBox(label="model", choices=self._model_names)
        self._device = ComboBox(label="device", choices=available_devices(), value="auto")
        self._precision = ComboBox(label="precision", choices=["fp32", "fp16", "bf16"], value="fp32")
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
        self.refresh()

    def _model_names(self, _widget: object = None) -> list[str]:
        entries, self._problems = list_models()
        self._entries = {e.card.name: e for e in entries}
        return list(self._entries)

    def refresh(self) -> None:
        """Re-read the model folders (after installing or training a model)."""
        self._model_choice.reset_choices()
        for problem in self._problems:
            self._notify(f"skipped a model folder: {problem}")
        self._show_card()

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
        name = self._model_choice.value
        if name is None:
            self._notify("no model to load: install one or set NAPARI_MEDGEN_MODELS")
            return None
        try:
            model = load_model(self._entries[name].folder, device=self._device.value, precision=self._precision.value)
        except MedgenError as error:
            self._notify(str(error))
            return None
        _set_current(model)
        self._update_status()
        return model

    def release(self) -> None:
        model = _CURRENT["model"]
        if model is not None:
            release_model(model)
        _set_current(None)
        self._update_status()

    def _update_status(self) -> None:
        model = _CURRENT["model"]
        if model is None:
            self._status.value = "no model loaded"
            return
        memory = f"weights {model.parameter_bytes() / 2**20:.1f} MiB"
        if model.device.type == "cuda":
            memory += f", GPU memory in use {torch.cuda.memory_allocated(model.device) / 2**20:.0f} MiB"
        self._status.value = f"loaded {model.name} on {model.device} ({str(model.dtype).replace('torch.', '')}); {memory}"

    def _notify(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        show_warning(message)
