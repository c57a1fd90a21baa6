"""Pieces the generate and inpaint widgets share: sampling controls, layer choices, result layers."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_warning

from ..engine.diffusion.samplers import DEFAULT_SAMPLER, SAMPLERS
from ..engine.synthesis import SamplingOptions
from ..engine.volume import Volume
from ..layer_geometry import volume_to_layer_data
from ..napari_io import image_display_kwargs
from .model_panel import current_model, on_model_change

PREVIEW_NAME = "preview (running)"


def layer_choices(viewer: Any, *types: type) -> Any:
    """A callable for magicgui choices: the viewer's layers of `types`, kept current by napari."""

    def choices(_widget: Any = None) -> list:
        return [layer for layer in viewer.layers if isinstance(layer, types)]

    return choices


def optional_layer_choices(viewer: Any, *types: type) -> Any:
    base = layer_choices(viewer, *types)
    return lambda _widget=None: [("(none)", None)] + [(layer.name, layer) for layer in base()]


def default_guidance() -> float:
    """The loaded model's recommended guidance (1 = none when no model or no guidance training)."""
    model = current_model()
    if model is None or not model.card.supports_guidance:
        return 1.0
    return model.card.conditioning.default_guidance


class SamplingControls(Container):
    """Steps, sampler, seed (with a dice for a fresh one), guidance and variants."""

    def __init__(self, variants: bool = True) -> None:
        self.steps = SpinBox(label="steps", value=20, min=1, max=1000)
        self.sampler = ComboBox(label="sampler", choices=list(SAMPLERS), value=DEFAULT_SAMPLER)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.dice = PushButton(text="new seed")
        self.guidance = FloatSpinBox(label="guidance", value=default_guidance(), min=0.0, max=20.0, step=0.5)
        self.variants = SpinBox(label="variants", value=1, min=1, max=16, visible=variants)
        super().__init__(widgets=[self.steps, self.sampler, self.seed, self.dice, self.guidance, self.variants], labels=True)
        self.dice.changed.connect(self.roll)
        on_model_change(lambda: setattr(self.guidance, "value", default_guidance()))

    def roll(self) -> int:
        self.seed.value = random.randrange(2**31 - 1)
        return self.seed.value

    def options(self) -> SamplingOptions:
        return SamplingOptions(
            sampler=self.sampler.value,
            steps=self.steps.value,
            seed=self.seed.value,
            guidance=self.guidance.value,
            variants=self.variants.value,
        )


def add_result_layer(viewer: Any, volume: Volume, name: str) -> Image:
    """A result volume as an Image layer in physical space, provenance in its metadata."""
    data, kwargs, _ = volume_to_layer_data(volume, "image", name)
    kwargs.update(image_display_kwargs(volume))
    return viewer.add_image(data, **kwargs)


class PreviewLayer:
    """The live preview: one Image layer updated in place, removed when the run ends."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.layer: Image | None = None

    def prepare(self, template: Volume, contrast_limits: list[float]) -> None:
        """Add the (empty) preview layer before the run starts: adding a layer mid-run stalls the GUI."""
        self.remove()
        data, kwargs, _ = volume_to_layer_data(template, "image", PREVIEW_NAME)
        kwargs["contrast_limits"] = contrast_limits
        self.layer = self.viewer.add_image(np.array(data), opacity=0.8, **kwargs)

    def show(self, volume: Volume) -> None:
        data, kwargs, _ = volume_to_layer_data(volume, "image", PREVIEW_NAME)
        if self.layer is None or self.layer not in self.viewer.layers or self.layer.data.shape != data.shape:
            self.remove()
            kwargs.update(image_display_kwargs(volume))
            self.layer = self.viewer.add_image(np.array(data), **kwargs)
        else:
            self.layer.data = np.array(data)

    def remove(self) -> None:
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer = None


class RunButtons:
    """Run / Cancel buttons, a status line and the live preview of one widget's engine runs.

    A mixin for the generate and inpaint widgets: `launch` starts an engine generator with a
    preview layer made up front, and the buttons come back whatever the outcome.
    """

    def _init_run_buttons(self, viewer: Any, run_text: str) -> None:
        from magicgui.widgets import Label

        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self._preview = PreviewLayer(viewer)
        self.current_run = None
        self.cancel_button.changed.connect(self.cancel)

    def launch(self, run: Any, description: str, on_result: Any, template: Volume, contrast_limits: list[float]) -> Any:
        from .runner import EngineRun

        if self.current_run is not None and self.current_run.running:
            # One run at a time per widget (the button is disabled, but start() can be called directly).
            run.close()
            warn(f"{description}: another run is still going; wait for it or press Cancel")
            return None
        viewer = self._preview.viewer

        def finish(value: Any) -> None:
            self._preview.remove()
            before = list(viewer.layers)
            try:
                on_result(value)
            except Exception:
                # All results or none: a failure half-way takes back the layers already added.
                for layer in [layer for layer in viewer.layers if layer not in before]:
                    viewer.layers.remove(layer)
                raise

        self._preview.prepare(template, contrast_limits)
        self.current_run = EngineRun(run, description, finish, self._ended, self._preview.show)
        self._busy(True)
        self.status.value = f"{description}: running..."
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


def current_slice(viewer: Any, layer: Any) -> int:
    """The layer's data index along axis 0 at the viewer's current position."""
    index = layer.world_to_data(viewer.dims.point)
    return int(np.clip(np.round(index[0]), 0, layer.data.shape[0] - 1))


def warn(message: str) -> None:
    show_warning(message)


__all__ = ["Image", "Labels", "Shapes"]
