"""The model session: one per viewer, so two viewers never share a current model; the widgets of a viewer
follow its session's signal; a model can be chosen and loaded by name; messages reach napari."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
from tiny_models import make_tiny_model

from napari_medgen.engine.errors import ModelNotFoundError
from napari_medgen.engine.model.loading import release_model
from napari_medgen.widgets.session import ModelSession

PLUGIN = "napari-medgen"


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A registry folder with a tiny model whose card recommends guidance 3 (so the widgets show it)."""
    folder = make_tiny_model(tmp_path / "models" / "tiny", name="tiny-2d")
    card = json.loads((folder / "model.json").read_text())
    card["conditioning"]["default_guidance"] = 3.0
    (folder / "model.json").write_text(json.dumps(card))
    monkeypatch.setenv("NAPARI_MEDGEN_MODELS", str(tmp_path / "models"))
    yield folder
    release_model()


def test_one_session_per_owner_that_goes_with_it():
    class Owner:  # any object a session can belong to; a napari viewer in the plugin
        pass

    first, second = Owner(), Owner()
    session = ModelSession.of(first)
    assert ModelSession.of(first) is session and ModelSession.of(second) is not session
    gone = weakref.ref(session)
    del first, session
    gc.collect()
    assert gone() is None  # the session does not outlive its viewer


def test_session_loads_by_name_and_signals_each_change(models):
    session = ModelSession()
    seen = []
    session.changed.connect(seen.append)
    model = session.load("tiny-2d", device="cpu")
    assert session.model is model and seen == [model]
    session.set_model(model)  # no change, no signal
    assert seen == [model]
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        session.load("no-such-model", device="cpu")
    assert session.model is model  # a failed load keeps the model that was loaded
    session.release()
    assert session.model is None and seen == [model, None]


def test_two_viewers_do_not_share_a_model(make_napari_viewer, models, monkeypatch):
    from napari_medgen.widgets import messages

    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(messages, "notify", lambda level, message: shown.append((level, message)))
    viewers = [make_napari_viewer(), make_napari_viewer()]
    panels, generates = [], []
    for viewer in viewers:
        panels.append(viewer.window.add_plugin_dock_widget(PLUGIN, "Model")[1])
        generates.append(viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")[1])
    first, second = panels
    assert first.session is not second.session
    chosen = first._model_choice.value
    assert not first.select("no-such-model") and first._model_choice.value == chosen
    assert first.select("tiny-2d") and first._model_choice.value == "tiny-2d"
    first._device.value = "cpu"
    model = first.load()
    assert model is not None and first.session.model is model
    # The first viewer's widgets follow its model; the second viewer still has none.
    assert generates[0].sampling.guidance.value == 3.0 and generates[0].session is first.session
    assert second.session.model is None and second._status.value == "no model loaded"
    assert generates[1].sampling.guidance.value == 1.0
    assert generates[1].start() is None and "no model loaded" in shown[-1][1]
    # Loading in the second viewer and releasing in the first: each keeps to its own.
    assert second.select("tiny-2d")
    second._device.value = "cpu"
    assert second.load() is not None
    first.release()
    assert first.session.model is None and second.session.model is not None
    assert "loaded tiny-2d" in second._status.value and first._status.value == "no model loaded"
    assert generates[0].sampling.guidance.value == 1.0 and generates[1].sampling.guidance.value == 3.0


def test_guidance_is_switched_off_with_its_reason_for_a_model_that_cannot_apply_it(make_napari_viewer, models, tmp_path):
    viewer = make_napari_viewer()
    generate = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")[1]
    assert not generate.sampling.guidance.enabled  # no model yet
    session = ModelSession.of(viewer)
    session.load("tiny-2d", device="cpu")  # trained with condition dropout: guidance on, the card's 3
    assert generate.sampling.guidance.enabled and generate.sampling.guidance.value == 3.0
    unguided = make_tiny_model(tmp_path / "elsewhere" / "unguided", name="tiny-unguided", condition_dropout=0.0)
    session.load(str(unguided), device="cpu")
    assert not generate.sampling.guidance.enabled and generate.sampling.guidance.value == 1.0
    assert "cannot apply classifier-free guidance" in generate.sampling.guidance.tooltip
    assert generate.sampling.options().guidance == 1.0  # what a run of it records


def test_notify_shows_napari_notifications_of_each_level():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    from napari_medgen.widgets import messages

    start = len(notification_manager.records)
    for level in messages.LEVELS:
        messages.notify(level, f"a test {level}")
    shown = [(n.severity, n.message) for n in notification_manager.records[start:]]
    assert shown == [
        (NotificationSeverity.INFO, "a test info"),
        (NotificationSeverity.WARNING, "a test warning"),
        (NotificationSeverity.ERROR, "a test error"),
    ]
    with pytest.raises(ValueError, match="unknown notification level"):
        messages.notify("loud", "not a level")
