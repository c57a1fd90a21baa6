"""Screenshots for the README, taken from the real application under a virtual X server.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/readme_screenshots.py [--only labels_from_scan inpaint]

1. docs/demo.png: `napari-medgen demo` as a user first sees it (sample brain, labels, widgets, model loaded).
2. docs/generate.png: after painting a grey-matter blob into white matter on the current slice and
   pressing Generate (current slice), with the synthetic slice shown beside the real one.
3. docs/labels_from_scan.png: the Anatomy painter's "Labels from scan" on the sample T1 (its shipped tissue
   labels hidden), the label map it made laid over the scan.
4. docs/inpaint_region.png and docs/inpaint.png: the Inpaint panel's "New region layer", a 30 mm ball drawn in
   it over the lateral ventricles, the anatomy edited inside it (CSF painted as white matter), then Inpaint with
   the shipped demo model at its card's defaults: the result beside the real T1.

Each picture is taken in a fresh viewer, as `napari-medgen demo` opens it; the demo model must be there.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs"
T1 = "brain T1 (MNI152, 2 mm)"


def process_events(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait_for(run) -> None:
    """Keep the event loop going until a widget's run has ended."""
    while run.running:
        process_events(0.2)
    process_events(0.5)


def open_viewer():
    """A viewer as `napari-medgen demo` opens it, and its docked widgets by name."""
    import napari

    from napari_medgen.demo import open_demo
    from napari_medgen.widgets.session import ModelSession

    viewer = napari.Viewer(title="napari-medgen demo: paint anatomy, then generate")
    viewer.window._qt_window.resize(1500, 950)
    widgets = open_demo(viewer)
    process_events(1.0)
    if ModelSession.of(viewer).model is None:
        sys.exit("the demo model is not installed; train it first (scripts/train_demo_model.py)")
    return viewer, widgets


def save(viewer, name: str) -> None:
    path = DOCS / name
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path} ({path.stat().st_size // 1024} kB)", flush=True)


def show_dock(widget) -> None:
    """Bring a tabbed dock widget (Generate / Inpaint share one) to the front."""
    dock = widget.native.parent()
    while dock is not None and not hasattr(dock, "raise_"):
        dock = dock.parent()
    if dock is not None:
        dock.raise_()


def demo_and_generate() -> None:
    viewer, widgets = open_viewer()
    save(viewer, "demo.png")
    labels = viewer.layers["tissue labels"]
    k = int(round(labels.world_to_data(viewer.dims.point)[0]))
    yy, xx = np.mgrid[: labels.data.shape[1], : labels.data.shape[2]]
    centre = np.argwhere(labels.data[k] == 3).mean(0)
    blob = ((yy - centre[0] + 12) ** 2 + (xx - centre[1] - 14) ** 2 <= 25) & (labels.data[k] == 3)
    ys, xs = np.nonzero(blob)
    labels.data_setitem((np.full(ys.shape, k), ys, xs), 2)  # as a brush stroke would
    generate = widgets["Generate"]
    generate.label_layer.value = labels
    generate.scope.value = "current slice"
    wait_for(generate.start())
    labels.visible = False
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 2)
    viewer.layers.move(viewer.layers.index(viewer.layers[-1]), 0)
    process_events(1.0)
    save(viewer, "generate.png")
    viewer.close()


def labels_from_scan() -> None:
    viewer, widgets = open_viewer()
    viewer.layers["tissue labels"].visible = False
    painter = widgets["Anatomy painter"]
    painter.image.value = viewer.layers[T1]
    begin = time.perf_counter()
    wait_for(painter.labels_from_scan())
    print(f"labels from scan: {time.perf_counter() - begin:.0f} s", flush=True)
    made = viewer.layers[-1]
    made.opacity = 0.45
    viewer.layers.selection.active = made
    process_events(1.0)
    save(viewer, "labels_from_scan.png")
    viewer.close()


def inpaint() -> None:
    from napari_medgen.layer_geometry import layer_kwargs_like

    viewer, widgets = open_viewer()
    image, labels = viewer.layers[T1], viewer.layers["tissue labels"]
    k = int(round(image.world_to_data(viewer.dims.point)[0]))
    # The region: a 30 mm ball over the CSF (a lateral ventricle) nearest the middle of the current slice.
    csf = np.argwhere(labels.data[k] == 1)
    middle = np.argwhere(labels.data[k] > 0).mean(0)
    cy, cx = csf[np.argmin(((csf - middle) ** 2).sum(1))]
    zz, yy, xx = np.indices(image.data.shape)
    ball = ((zz - k) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2) * 4.0 <= 15.0**2  # 2 mm voxels
    panel = widgets["Inpaint"]
    show_dock(panel)
    panel.image.value = image
    region = panel.new_region_layer()  # an empty Labels layer on the image's grid, the brush ready
    region.data = ball.astype(np.uint8)  # as brush strokes on each slice would
    # The anatomy to put there: the tissue labels with the ventricle inside the region painted as white matter.
    edited = np.array(labels.data, copy=True)
    edited[ball & (edited == 1)] = 3
    anatomy = viewer.add_labels(edited, name="anatomy (ventricle removed)", **layer_kwargs_like(labels))
    anatomy.visible = labels.visible = False
    panel.reset_choices()
    panel.anatomy.value = anatomy
    region.opacity = 0.5
    viewer.layers.selection.active = region
    process_events(1.0)
    save(viewer, "inpaint_region.png")
    begin = time.perf_counter()
    wait_for(panel.start())
    print(f"inpaint: {time.perf_counter() - begin:.0f} s", flush=True)
    result = viewer.layers[-1]
    region.visible = False
    for layer in list(viewer.layers):
        if layer not in (image, result):
            viewer.layers.remove(layer)
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 2)
    viewer.layers.move(viewer.layers.index(result), 0)
    viewer.reset_view()
    viewer.camera.zoom *= 1.3
    process_events(1.0)
    save(viewer, "inpaint.png")
    viewer.close()


PICTURES: dict[str, Callable[[], None]] = {
    "demo_and_generate": demo_and_generate,
    "labels_from_scan": labels_from_scan,
    "inpaint": inpaint,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(PICTURES), default=list(PICTURES))
    args = parser.parse_args(argv)
    DOCS.mkdir(exist_ok=True)
    for name in args.only:
        PICTURES[name]()


if __name__ == "__main__":
    main()
