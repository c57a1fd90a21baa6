"""`napari-medgen demo`: napari with the sample brain, its tissue labels and the plugin's widgets."""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-medgen"
SAMPLE_KEY = "brain_t1_tissue"
DOCKED_WIDGETS = ("Model",)


def open_demo(viewer) -> None:  # noqa: ANN001 - a napari.Viewer
    """Load the sample brain and dock the plugin's widgets into `viewer`."""
    viewer.open_sample(PLUGIN, SAMPLE_KEY)
    for name in DOCKED_WIDGETS:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    labels = viewer.layers["tissue labels"]
    viewer.layers.selection.active = labels
    viewer.dims.set_point(0, float(viewer.dims.range[0].start + viewer.dims.range[0].stop) / 2)


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
