"""Screenshots for the README, taken from the real application under a virtual X server.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/readme_screenshots.py

1. docs/demo.png: `napari-medgen demo` as a user first sees it (sample brain, labels, widgets, model loaded).
2. docs/generate.png: after painting a grey-matter blob into white matter on the current slice and
   pressing Generate (current slice), with the synthetic slice shown beside the real one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parents[1] / "docs"


def process_events(seconds: float = 0.5) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def main() -> None:
    import napari

    from napari_medgen.demo import open_demo
    from napari_medgen.widgets.session import ModelSession

    viewer = napari.Viewer(title="napari-medgen demo: paint anatomy, then generate")
    viewer.window._qt_window.resize(1500, 950)
    widgets = open_demo(viewer)
    process_events(1.0)
    if ModelSession.of(viewer).model is None:
        sys.exit("the demo model is not installed; train it first (see README)")
    DOCS.mkdir(exist_ok=True)
    viewer.screenshot(str(DOCS / "demo.png"), canvas_only=False)

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
    run = generate.start()
    while run.running:
        process_events(0.2)
    labels.visible = False
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 2)
    viewer.layers.move(viewer.layers.index(viewer.layers[-1]), 0)
    process_events(1.0)
    viewer.screenshot(str(DOCS / "generate.png"), canvas_only=False)
    viewer.close()
    print(f"wrote {DOCS / 'demo.png'} and {DOCS / 'generate.png'}")


if __name__ == "__main__":
    main()
