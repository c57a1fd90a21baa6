"""Fixtures the widget tests share: a viewer with a small oblique-free scan and its tissue labels on one
grid, a tiny random-weight model loaded in that viewer's session, and waiting for a widget's run to end.

Test modules import the fixtures by name (`from widget_fixtures import scan, tiny_model`)."""

from __future__ import annotations

import numpy as np
import pytest
from engine_fixtures import one_thread  # noqa: F401 - autouse where imported: torch on one thread
from tiny_models import make_tiny_model

from napari_medgen.engine.model.loading import load_model, release_model
from napari_medgen.engine.volume import Volume
from napari_medgen.layer_geometry import volume_to_layer_data

PLUGIN = "napari-medgen"
FLIP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # RAS-stored, like the sample brain
GEOMETRY = {"spacing": (4.0, 4.0, 6.0), "origin": (30.0, -12.0, 7.0), "direction": FLIP}


@pytest.fixture
def scan(make_napari_viewer):
    """A viewer with a small scan (Image) and tissue labels (Labels) on its grid."""
    rng = np.random.default_rng(0)
    labels = np.zeros((4, 24, 20), np.uint8)
    labels[:, 4:20, 4:16] = 3
    labels[:, 8:14, 7:12] = 2
    labels[:, 10:12, 9:10] = 1
    image = (labels.astype(np.float32) * 300 + rng.normal(0, 20, labels.shape)).clip(0).astype(np.int16)
    viewer = make_napari_viewer()
    data, kwargs, _ = volume_to_layer_data(Volume(image, **GEOMETRY), "image", "scan")
    image_layer = viewer.add_image(data, **kwargs)
    data, kwargs, _ = volume_to_layer_data(Volume(labels, **GEOMETRY, metadata={"label_map": True}), "labels", "tissue")
    labels_layer = viewer.add_labels(np.array(data), **kwargs)
    return viewer, image_layer, labels_layer


@pytest.fixture
def tiny_model(scan, tmp_path, monkeypatch):
    """A tiny random-weight model, loaded in the scan viewer's session as if chosen in the Model panel."""
    from napari_medgen.widgets.session import ModelSession

    make_tiny_model(tmp_path / "models" / "tiny", name="tiny-2d")
    monkeypatch.setenv("NAPARI_MEDGEN_MODELS", str(tmp_path / "models"))
    model = load_model(tmp_path / "models" / "tiny", device="cpu")
    ModelSession.of(scan[0]).set_model(model)
    yield model
    release_model(model)


def wait_for_run(qtbot, widget, timeout: int = 60000) -> None:
    """Until the widget's current run has ended (done, cancelled or failed)."""
    qtbot.waitUntil(lambda: widget.current_run is not None and not widget.current_run.running, timeout=timeout)


@pytest.fixture
def notices(monkeypatch):
    """Every notification the plugin shows: (kind, message)."""
    shown: list[tuple[str, str]] = []
    from napari_medgen.widgets import messages

    monkeypatch.setattr(messages, "notify", lambda level, message: shown.append((level, message)))
    return shown


def kwargs_like(image_layer, **changes) -> dict:
    """A new layer's scale, translate and metadata taken from `image_layer`, with `changes`."""
    kwargs = {"scale": image_layer.scale, "translate": image_layer.translate, "metadata": dict(image_layer.metadata)}
    kwargs.update(changes)
    return kwargs
