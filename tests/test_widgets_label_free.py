"""The Generate panel with models that take no label map: the zoo's brain LDM (context attributes as sliders with
the card's defaults, on an open image's grid or its own) and NV-Generate-MR (a modality by name); a label-map model
still needs its Labels layer. Tiny random-weight models from the importer tests' builders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_importers_maisi_mr import checkout  # noqa: E402, F401 - fixtures by name
from test_importers_zoo import brain_ldm  # noqa: E402, F401
from widget_fixtures import PLUGIN, notices, scan, tiny_model, wait_for_run  # noqa: E402, F401

from napari_medgen.engine.model.loading import load_model, release_model  # noqa: E402


@pytest.fixture
def ldm(scan, brain_ldm, tmp_path):
    """The brain LDM imported and loaded in the scan viewer's session."""
    from napari_medgen.engine.model.importers import import_bundle
    from napari_medgen.widgets.session import ModelSession

    model = load_model(import_bundle(brain_ldm[0], tmp_path / "ldm", scale_factor=1.0), device="cpu")
    ModelSession.of(scan[0]).set_model(model)
    yield model
    release_model(model)


def _shown(widget) -> bool:
    """Whether the panel shows `widget` (the viewer itself is not shown in the tests)."""
    return not widget.native.isHidden()


def _generate(qtbot, widget, viewer):
    assert widget.start() is not None
    wait_for_run(qtbot, widget, timeout=120000)
    assert widget.status.value == "done"
    return viewer.layers[-1]


def test_attribute_model_shows_a_slider_per_attribute_and_generates_on_an_image_grid(scan, ldm, qtbot):
    viewer, image_layer, _ = scan
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    sliders = widget.conditions.sliders
    assert list(sliders) == ["gender", "age", "ventricular_vol", "brain_vol"]
    assert [s.value for s in sliders.values()] == [0.0, 0.1, 0.2, 0.4]  # the card's defaults
    age = ldm.card.conditioning.context[1]
    assert sliders["age"].label == f"Age ({age.unit})" and (sliders["age"].min, sliders["age"].max) == (0.0, 1.0)
    assert _shown(widget.grid) and not _shown(widget.label_layer) and widget.conditions.modality is None

    widget.grid.value = image_layer
    widget.sampling.steps.value, widget.sampling.seed.value = 2, 3
    sliders["age"].value = 0.7
    first = _generate(qtbot, widget, viewer)
    assert first.data.shape == image_layer.data.shape
    for index in ([0, 0, 0], [3, 23, 19], [1, 5, 7]):
        np.testing.assert_allclose(first.data_to_world(index), image_layer.data_to_world(index), atol=1e-6)
    record = first.metadata["provenance"]
    assert first.metadata["synthetic"] is True and record["attributes"]["age"] == pytest.approx(0.7)
    assert first.name == f"scan | {ldm.name} | seed 3"

    again = _generate(qtbot, widget, viewer)  # same seed and attributes, same image
    np.testing.assert_array_equal(again.data, first.data)
    sliders["age"].value = 0.2
    other = _generate(qtbot, widget, viewer)
    assert not np.array_equal(other.data, first.data)


def test_attribute_model_generates_on_its_own_grid(scan, ldm, qtbot):
    viewer = scan[0]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    widget.grid.value = None  # the model's own size and spacing
    widget.sampling.steps.value = 1
    result = _generate(qtbot, widget, viewer)
    assert result.data.shape == (16, 32, 32)
    np.testing.assert_allclose(np.abs(np.diag(result.affine.affine_matrix)[:3] * result.scale), 1.0)


def test_modality_choice_by_name(scan, checkout, tmp_path, qtbot):
    from napari_medgen.engine.model.importers import import_maisi
    from napari_medgen.widgets.session import ModelSession

    viewer = scan[0]
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    model = load_model(import_maisi(checkout[0], tmp_path / "mr", variant="rflow-mr"), device="cpu")
    try:
        ModelSession.of(viewer).set_model(model)
        assert widget.conditions.modality.value == "mri_t1" and "mri_flair" in widget.conditions.modality.choices
        assert not widget.conditions.sliders and widget.sampling.guidance.value == 15.0
        widget.conditions.modality.value = "mri_flair"
        assert widget.conditions.values() == {"attributes": None, "modality": "mri_flair"}
    finally:
        ModelSession.of(viewer).set_model(None)
        release_model(model)
    assert not widget.conditions.in_use and _shown(widget.label_layer) and not _shown(widget.grid)


def test_label_map_model_still_needs_its_labels_layer(scan, tiny_model, notices):
    viewer, _, labels_layer = scan
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    assert _shown(widget.label_layer) and not _shown(widget.grid) and not widget.conditions.in_use
    viewer.layers.remove(labels_layer)
    assert widget.label_layer.value is None
    names = [layer.name for layer in viewer.layers]
    assert widget.start() is None and "no label map" in notices[-1][1]
    assert [layer.name for layer in viewer.layers] == names
