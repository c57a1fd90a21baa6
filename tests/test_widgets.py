"""The napari front: widgets open through the manifest and use the engine's registry."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model  # noqa: E402


def test_model_panel_lists_loads_and_releases(make_napari_viewer, tmp_path, monkeypatch):
    make_tiny_model(tmp_path / "models" / "tiny", name="tiny-2d")
    monkeypatch.setenv("NAPARI_MEDGEN_MODELS", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    _, panel = viewer.window.add_plugin_dock_widget("napari-medgen", "Model")
    from napari_medgen.widgets.model_panel import current_model

    assert "tiny-2d" in panel._model_choice.choices
    panel._model_choice.value = "tiny-2d"
    assert "label map" in panel._details.value and "environment" in panel._details.value
    panel._device.value = "cpu"
    model = panel.load()
    assert model is not None and current_model() is model
    assert "loaded tiny-2d on cpu" in panel._status.value
    panel.release()
    assert current_model() is None


def test_demo_opens_sample_brain_with_widgets(make_napari_viewer):
    from napari_medgen.demo import open_demo

    viewer = make_napari_viewer()
    open_demo(viewer)
    image, labels = viewer.layers["brain T1 (MNI152, 2 mm)"], viewer.layers["tissue labels"]
    assert image.data.shape == labels.data.shape
    assert (image.scale == labels.scale).all() and (image.translate == labels.translate).all()
    assert viewer.layers.selection.active is labels
