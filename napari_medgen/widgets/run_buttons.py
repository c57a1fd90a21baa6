"""Run / Cancel buttons, a status line and the live preview of one widget's engine runs."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Label, PushButton

from ..engine.volume import Volume
from . import messages
from .preview_layer import PreviewLayer
from .runner import EngineRun


class RunButtons:
    """A mixin for the generate and inpaint widgets: `launch` starts an engine generator with a preview
    layer made up front, one run at a time, and the buttons come back whatever the outcome."""

    def _init_run_buttons(self, viewer: Any, run_text: str) -> None:
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self._preview = PreviewLayer(viewer)
        self.current_run: EngineRun | None = None
        self.cancel_button.changed.connect(self.cancel)

    def launch(self, run: Any, description: str, on_result: Any, template: Volume, contrast_limits: list[float]) -> Any:
        """Start `run` (an engine generator); `on_result(value)` turns its value into layers on the GUI thread."""
        if self.current_run is not None and self.current_run.running:
            # One run at a time per widget (the button is disabled, but start() can be called directly).
            run.close()
            messages.notify("warning", f"{description}: another run is still going; wait for it or press Cancel")
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
        """Stop the run after the network call under way; no layer changes."""
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
