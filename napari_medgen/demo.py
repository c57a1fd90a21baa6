"""`napari-medgen demo`: napari with the sample brain, its tissue labels and the plugin's widgets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .engine.model.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-medgen"
SAMPLE_KEY = "brain_t1_tissue"
DOCKED_WIDGETS = ("Model", "Anatomy painter", "Generate", "Inpaint")


def open_demo(viewer: napari.Viewer) -> dict:
    """Load the sample brain, dock the plugin's widgets into `viewer`, load the demo model.

    Returns the docked widgets by name.
    """
    viewer.open_sample(PLUGIN, SAMPLE_KEY)
    widgets = {}
    for i, name in enumerate(DOCKED_WIDGETS):
        # Generate and Inpaint share a tabbed dock: the window stays usable on a laptop screen.
        _, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=i >= 3)
    panel = widgets["Model"]
    if panel.select(DEFAULT_MODEL):  # False when the shipped demo model is missing (a stripped install)
        panel.load()
    labels = viewer.layers["tissue labels"]
    viewer.layers.selection.active = labels
    viewer.dims.set_point(0, float(viewer.dims.range[0].start + viewer.dims.range[0].stop) / 2)
    return widgets


def run_demo(screenshot: Path | None = None) -> None:
    import napari

    viewer = napari.Viewer(title="napari-medgen demo: paint anatomy, then generate")
    open_demo(viewer)
    if screenshot is not None:
        from qtpy.QtWidgets import QApplication

        viewer.window._qt_window.resize(1400, 900)
        for _ in range(20):
            QApplication.processEvents()
        viewer.screenshot(str(screenshot), canvas_only=False)
        viewer.close()
        return
    napari.run()
