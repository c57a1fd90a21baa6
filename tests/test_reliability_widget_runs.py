"""The napari side of reliability, during a run: cancelling at any point, an exception in the network, running
out of GPU memory, closing a layer mid-run or pressing Run twice leave the viewer's layers as they were (or add
just the result), and a new run works afterwards."""

from __future__ import annotations

import numpy as np
from reliability_helpers import (
    FaultyNetwork,
    assert_layers_unchanged,
    cuda_out_of_memory,
    layer_state,
    on_fake_accelerator,
)
from widget_fixtures import (  # noqa: F401 - fixtures by name
    GEOMETRY,
    PLUGIN,
    kwargs_like,
    notices,
    one_thread,
    scan,
    tiny_model,
    wait_for_run,
)

from napari_medgen.engine.synthesis import run as synthesis_run


# -- faults during a run -------------------------------------------------------------------------------
def test_cancel_at_any_point_leaves_the_layers_and_a_new_run_works(scan, tiny_model, qtbot, notices, monkeypatch):
    viewer, _, labels_layer = scan
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    widget.label_layer.value = labels_layer
    widget.scope.value = "whole volume"
    monkeypatch.setattr(synthesis_run, "auto_slice_batch", lambda *args, **kwargs: 4)  # 4 slices: one call a step
    before = layer_state(viewer)
    for when in ("straight after the click", "after the first step", "during the last step"):
        steps = 3 if when == "during the last step" else 200
        widget.sampling.steps.value = steps
        calls = []

        def on_call(module, args, when=when, steps=steps, calls=calls):
            calls.append(1)
            if when == "during the last step" and len(calls) == steps:
                widget.current_run.cancel()  # from the worker thread, inside the last network call

        handle = tiny_model.networks["network"].register_forward_pre_hook(on_call)
        try:
            run = widget.start()
            if when == "straight after the click":
                widget.cancel()
            elif when == "after the first step":
                qtbot.waitUntil(lambda run=run: run._progress is not None and run._progress.n >= 1, timeout=30000)
                widget.cancel()
            wait_for_run(qtbot, widget)
        finally:
            handle.remove()
        assert run._outcome == "cancelled", (when, run._outcome)
        assert len(calls) < steps or when == "during the last step"
        assert_layers_unchanged(viewer, before)
        assert widget.run_button.enabled and not widget.cancel_button.enabled
        assert "preview (running)" not in [layer.name for layer in viewer.layers]
    widget.sampling.steps.value = 2
    widget.start()
    wait_for_run(qtbot, widget)
    assert widget.current_run._outcome == "done"
    assert len(viewer.layers) == len(before) + 1


def test_exception_inside_the_network_fails_the_run_and_the_next_works(scan, tiny_model, qtbot, notices):
    """A ValueError, and a RuntimeError (what torch raises; superqt's worker used to swallow those and never
    end, leaving the widget busy for good): the run fails, nothing changed, the next run works."""
    viewer, image_layer, _ = scan
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Inpaint")
    region = np.zeros(image_layer.data.shape, np.uint8)
    region[1:3, 8:14, 6:12] = 1
    region_layer = viewer.add_labels(region, name="region", **kwargs_like(image_layer))
    widget.image.value, widget.region.value = image_layer, region_layer
    widget.in_place.value = True
    widget.sampling.steps.value = 4
    before = layer_state(viewer)
    for error in (lambda: ValueError("a bug in the network"), lambda: RuntimeError("CUDA error: a bug in the network")):
        with FaultyNetwork(tiny_model, error=error, fail_calls={3}):
            run = widget.start()
            wait_for_run(qtbot, widget)
        assert run._outcome == "failed"
        assert notices[-1][0] == "error" and "a bug in the network" in notices[-1][1]
        assert_layers_unchanged(viewer, before)  # in place, and still nothing changed
        assert not widget.undo_button.enabled and widget.run_button.enabled
    widget.start()
    wait_for_run(qtbot, widget)
    assert widget.current_run._outcome == "done" and widget.undo_button.enabled
    widget.undo()
    assert_layers_unchanged(viewer, before)


def test_out_of_gpu_memory_falls_back_to_the_cpu_and_says_so(scan, tiny_model, qtbot, notices, monkeypatch):
    from napari_medgen.widgets.session import ModelSession

    viewer, _, labels_layer = scan
    gpu = on_fake_accelerator(tiny_model)
    ModelSession.of(viewer).set_model(gpu)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    widget.label_layer.value = labels_layer
    widget.scope.value = "whole volume"
    widget.sampling.steps.value = 2
    before = layer_state(viewer)
    with FaultyNetwork(gpu, error=cuda_out_of_memory):  # every call on the 'GPU' runs out of memory
        widget.start()
        wait_for_run(qtbot, widget)
        assert widget.current_run._outcome == "done"
        assert any(kind == "warning" and "fell back to the CPU" in message for kind, message in notices)
        assert len(viewer.layers) == len(before) + 1
        result = viewer.layers[-1]
        assert result.metadata["provenance"]["device"] == "cpu" and result.metadata["synthetic"] is True
        widget.start()  # the next run works (and falls back again: the GPU is still full)
        wait_for_run(qtbot, widget)
        assert widget.current_run._outcome == "done"
        assert len(viewer.layers) == len(before) + 2


def test_closing_the_image_during_an_in_place_run(scan, tiny_model, qtbot, notices):
    viewer, image_layer, _ = scan
    region = np.zeros(image_layer.data.shape, np.uint8)
    region[1:3, 8:14, 6:12] = 1
    region_layer = viewer.add_labels(region, name="region", **kwargs_like(image_layer))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Inpaint")
    widget.image.value, widget.region.value = image_layer, region_layer
    widget.in_place.value = True
    widget.sampling.steps.value = 60
    original = np.array(image_layer.data, copy=True)
    run = widget.start()
    qtbot.waitUntil(lambda: run._progress is not None and run._progress.n >= 1, timeout=30000)
    viewer.layers.remove(image_layer)
    wait_for_run(qtbot, widget)
    assert run._outcome == "done"
    assert viewer.layers[-1].name.startswith("scan inpainted")  # a new layer, not written into a closed one
    assert any("closed or changed" in message for _, message in notices)
    np.testing.assert_array_equal(image_layer.data, original)


def test_run_pressed_twice_and_a_result_that_cannot_be_shown(scan, tiny_model, qtbot, notices, monkeypatch):
    from napari_medgen.widgets import generate_widget

    viewer, _, labels_layer = scan
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    widget.label_layer.value = labels_layer
    widget.scope.value = "whole volume"
    widget.sampling.steps.value = 30
    before = layer_state(viewer)
    first = widget.start()
    assert widget.start() is None and "still going" in notices[-1][1]  # one run at a time
    widget.cancel()
    wait_for_run(qtbot, widget)
    assert first._outcome == "cancelled"
    assert_layers_unchanged(viewer, before)
    # Two variants; showing the second fails: the first is taken back, nothing is left half-done.
    real = generate_widget.add_result_layer
    shown = []

    def fail_second(viewer_, volume, name):
        if shown:
            raise ValueError("the display failed")
        shown.append(name)
        return real(viewer_, volume, name)

    monkeypatch.setattr(generate_widget, "add_result_layer", fail_second)
    widget.sampling.steps.value = 2
    widget.sampling.variants.value = 2
    widget.start()
    wait_for_run(qtbot, widget)
    assert widget.current_run._outcome == "failed" and shown
    assert_layers_unchanged(viewer, before)
