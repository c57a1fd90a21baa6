"""The napari side of reliability: bad files, bad layers and broken models give a notification and change
no layer; cancelling at any point, an exception in the network, running out of GPU memory, closing a
layer mid-run or pressing Run twice leave the viewer's layers as they were (or add just the result), and
a new run works afterwards."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from reliability_helpers import (
    FaultyNetwork,
    assert_layers_unchanged,
    cuda_out_of_memory,
    hidden_leftovers,
    layer_state,
    listing,
    on_fake_accelerator,
)
from tiny_models import make_tiny_model

from napari_medgen.engine import memory
from napari_medgen.engine.errors import MedgenError
from napari_medgen.engine.io import write_volume
from napari_medgen.engine.model.loading import load_model, release_model
from napari_medgen.engine.synthesis import run as synthesis_run
from napari_medgen.engine.volume import Volume
from napari_medgen.layer_geometry import volume_to_layer_data
from napari_medgen.napari_io import napari_get_reader

PLUGIN = "napari-medgen"
FLIP = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
GEOMETRY = {"spacing": (4.0, 4.0, 6.0), "origin": (30.0, -12.0, 7.0), "direction": FLIP}


def exception_chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model(scan, tmp_path, monkeypatch):
    from napari_medgen.widgets.session import ModelSession

    make_tiny_model(tmp_path / "models" / "tiny", name="tiny-2d")
    monkeypatch.setenv("NAPARI_MEDGEN_MODELS", str(tmp_path / "models"))
    model = load_model(tmp_path / "models" / "tiny", device="cpu")
    ModelSession.of(scan[0]).set_model(model)
    yield model
    release_model(model)


@pytest.fixture
def scan(make_napari_viewer):
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
def notices(monkeypatch):
    """Every notification the plugin shows: (kind, message)."""
    shown: list[tuple[str, str]] = []
    from napari_medgen.widgets import messages

    monkeypatch.setattr(messages, "notify", lambda level, message: shown.append((level, message)))
    return shown


def _wait(qtbot, widget, timeout=60000) -> None:
    qtbot.waitUntil(lambda: widget.current_run is not None and not widget.current_run.running, timeout=timeout)


def _like(image_layer, **changes) -> dict:
    kwargs = {"scale": image_layer.scale, "translate": image_layer.translate, "metadata": dict(image_layer.metadata)}
    kwargs.update(changes)
    return kwargs


# -- bad files through napari's reader ---------------------------------------------------------------
def _bad_files(folder: Path) -> dict[str, Path]:
    good = write_volume(Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), **GEOMETRY), folder / "good.nii.gz")
    files = {"missing": folder / "missing.nii.gz", "empty": folder / "empty.nii.gz", "corrupt": folder / "corrupt.nrrd"}
    files["empty"].write_bytes(b"")
    files["corrupt"].write_bytes(np.random.default_rng(0).bytes(2000))
    files["truncated"] = folder / "truncated.nii.gz"
    files["truncated"].write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    files["four_d"] = folder / "four_d.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.float32), isVector=False), str(files["four_d"]))
    files["rgb"] = folder / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True), str(files["rgb"]))
    files["complex"] = folder / "complex.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.complex64)), str(files["complex"]))
    files["nan"] = folder / "nan.mha"
    array = np.ones((3, 4, 5), np.float32)
    array[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(files["nan"]))
    files["zero_spacing"] = folder / "zero_spacing.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(files["zero_spacing"]), False)
    header = files["zero_spacing"].read_bytes()
    files["zero_spacing"].write_bytes(header.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1"))
    return files


def test_reader_refuses_bad_files_and_adds_no_layer(scan, tmp_path):
    viewer = scan[0]
    before = layer_state(viewer)
    for name, path in _bad_files(tmp_path).items():
        with pytest.raises(Exception) as raised:  # napari wraps the plugin's error in its own
            viewer.open(str(path), plugin=PLUGIN)
        ours = [e for e in exception_chain(raised.value) if isinstance(e, MedgenError)]
        if name == "missing":  # napari itself says so before asking any reader
            assert path.name in str(raised.value)
        else:
            assert ours and path.name in str(ours[0]), name
        assert_layers_unchanged(viewer, before)
    with pytest.raises(MedgenError, match="missing.nii.gz"):  # our reader, asked directly, says so too
        napari_get_reader(str(tmp_path / "missing.nii.gz"))(str(tmp_path / "missing.nii.gz"))
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    assert napari_get_reader(str(png)) is None  # not ours: napari asks another plugin


# -- bad layers in the widgets -----------------------------------------------------------------------
def test_generate_and_painter_refuse_bad_layers_and_change_nothing(scan, tiny_model, notices, monkeypatch):
    viewer, image_layer, labels_layer = scan
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate")
    widget.scope.value = "whole volume"
    outside = np.array(labels_layer.data, copy=True)
    outside[1, 2, 2] = 9
    bad = {
        "outside the schema": (viewer.add_labels(outside, name="labels 9", **_like(image_layer)), "9"),
        "4-D": (viewer.add_labels(np.zeros((2, 4, 24, 20), np.uint8), name="four-d"), "2-D or 3-D"),
    }
    before = layer_state(viewer)
    for name, (layer, expected) in bad.items():
        widget.label_layer.value = layer
        assert widget.start() is None, name
        assert notices[-1][0] == "warning" and expected in notices[-1][1], (name, notices[-1])
        assert_layers_unchanged(viewer, before)
    monkeypatch.setattr(memory, "MAX_WORK_VOXELS", 50)  # a volume too large for the memory budget
    widget.label_layer.value = labels_layer
    assert widget.start() is None and "memory budget" in notices[-1][1]
    assert_layers_unchanged(viewer, before)
    # The anatomy painter asked to make a label layer for an RGB picture.
    photo = viewer.add_image(np.zeros((24, 20, 3), np.uint8), name="photo", rgb=True)
    _, painter = viewer.window.add_plugin_dock_widget(PLUGIN, "Anatomy painter")
    before = layer_state(viewer)
    painter.image.value = photo
    assert painter.create_layer() is None and "RGB" in notices[-1][1]
    assert_layers_unchanged(viewer, before)


def test_inpaint_refuses_bad_layers_and_changes_nothing(scan, tiny_model, notices):
    viewer, image_layer, labels_layer = scan
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Inpaint")
    region = np.zeros(image_layer.data.shape, np.uint8)
    region[1:3, 8:14, 6:12] = 1
    region_layer = viewer.add_labels(region, name="region", **_like(image_layer))
    nan = np.array(image_layer.data, np.float32)
    nan[2, 3, 3] = np.nan
    inf = np.array(image_layer.data, np.float32)
    inf[2, 3, 3] = np.inf
    far = 5000.0 + np.asarray(image_layer.translate)
    moved = 40.0 + np.asarray(image_layer.translate)
    outside = np.array(labels_layer.data, copy=True)
    outside[0, 0, 0] = 9
    layers = {
        "nan": viewer.add_image(nan, name="nan scan", **_like(image_layer)),
        "inf": viewer.add_image(inf, name="inf scan", **_like(image_layer)),
        "rgb": viewer.add_image(np.zeros((24, 20, 3), np.uint8), name="photo", rgb=True),
        "mask": viewer.add_image(region.astype(bool), name="mask as scan", **_like(image_layer)),
        "far region": viewer.add_labels(region, name="far region", **_like(image_layer, translate=far, metadata={})),
        "moved anatomy": viewer.add_labels(np.array(labels_layer.data), name="moved", **_like(image_layer, translate=moved, metadata={})),
        "anatomy 9": viewer.add_labels(outside, name="anatomy 9", **_like(image_layer)),
        "shapes outside": viewer.add_shapes([np.array([[9000.0, 9000.0], [9000.0, 9100.0], [9100.0, 9100.0]])],
                                            shape_type="polygon", name="far shapes"),
    }
    cases = [
        ("nan", "region", None, "NaN"),
        ("inf", "region", None, "infinite"),
        ("rgb", "region", None, "RGB"),
        ("mask", "region", None, "only 0 and 1"),
        ("scan", "far region", None, "outside"),
        ("scan", "region", "moved anatomy", "origin"),
        ("scan", "region", "anatomy 9", "9"),
        ("scan", "shapes outside", None, "empty"),
    ]
    by_name = {"scan": image_layer, "region": region_layer, **layers}
    before = layer_state(viewer)
    for image, region_name, anatomy, expected in cases:
        widget.image.reset_choices()
        widget.region.reset_choices()
        widget.anatomy.reset_choices()
        widget.image.value = by_name[image]
        widget.region.value = by_name[region_name]
        widget.anatomy.value = by_name[anatomy] if anatomy else None
        assert widget.start() is None, (image, region_name, anatomy)
        assert notices[-1][0] == "warning" and expected in notices[-1][1], (image, region_name, anatomy, notices[-1])
        assert_layers_unchanged(viewer, before)


def test_inpaint_shows_the_nan_voxel_error_and_changes_no_layer(scan, tiny_model):
    """An image holding NaN: napari shows the error (how many voxels, what to do), as a new layer or in place,
    and every layer stays as it was (no new layer, the NaN data untouched)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    viewer, image_layer, _ = scan
    nan = np.array(image_layer.data, np.float32)
    nan[1, 5, 5] = nan[2, 6, 6] = np.nan
    nan_layer = viewer.add_image(nan, name="nan scan", **_like(image_layer))
    region = np.zeros(image_layer.data.shape, np.uint8)
    region[1:3, 4:10, 4:10] = 1
    region_layer = viewer.add_labels(region, name="region", **_like(image_layer))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Inpaint")
    widget.image.value, widget.region.value = nan_layer, region_layer
    before = layer_state(viewer)
    for in_place in (False, True):
        widget.in_place.value = in_place
        start = len(notification_manager.records)
        assert widget.start() is None
        shown = notification_manager.records[start:]
        assert len(shown) == 1 and shown[0].severity == NotificationSeverity.WARNING
        message = shown[0].message
        assert "nan scan" in message and "2 NaN or infinite voxels" in message and "replace them" in message, message
        assert_layers_unchanged(viewer, before)
        assert np.isnan(nan_layer.data[1, 5, 5]) and np.isnan(nan_layer.data[2, 6, 6])
        assert widget.current_run is None and not widget.undo_button.enabled


def test_model_panel_with_broken_model_folders(make_napari_viewer, tmp_path, monkeypatch, notices):
    """Broken folders are reported, loading one says why and keeps the model that was loaded, and no code
    hidden in a weights file runs."""
    import pickle

    root = tmp_path / "models"
    make_tiny_model(root / "good", name="good")
    make_tiny_model(root / "no-weights", name="no-weights")
    (root / "no-weights" / "weights.safetensors").unlink()
    make_tiny_model(root / "other-arch", name="other-arch")
    other = make_tiny_model(tmp_path / "spare", known_image=False)
    (root / "other-arch" / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    marker = tmp_path / "code-ran"

    class CodeRan:
        def __reduce__(self):
            return (marker.touch, ())

    make_tiny_model(root / "pickled", name="pickled")
    (root / "pickled" / "weights.safetensors").write_bytes(pickle.dumps({"x": CodeRan()}))
    (root / "bad-card").mkdir()
    (root / "bad-card" / "model.json").write_text('{"name": "bad-card"}')
    monkeypatch.setenv("NAPARI_MEDGEN_MODELS", str(root))
    viewer = make_napari_viewer()
    _, panel = viewer.window.add_plugin_dock_widget(PLUGIN, "Model")
    assert any("bad-card" in message for _, message in notices)  # reported, not listed
    assert set(panel._model_choice.choices) >= {"good", "no-weights", "other-arch", "pickled"}
    panel._device.value = "cpu"
    panel._model_choice.value = "good"
    good = panel.load()
    assert good is not None and panel.session.model is good
    for name, expected in (("no-weights", "missing"), ("other-arch", "do not fit"), ("pickled", "never loads pickled")):
        panel._model_choice.value = name
        assert panel.load() is None
        assert expected in notices[-1][1], (name, notices[-1])
        assert panel.session.model is good  # the model that was loaded stays loaded
    assert not marker.exists()
    panel.release()


def test_saving_a_layer_onto_a_read_only_or_full_disk(scan, tmp_path, monkeypatch):
    _, image_layer, _ = scan
    folder = tmp_path / "out"
    folder.mkdir()
    path = write_volume(Volume(np.ones((2, 3, 4), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3).ravel(), {"x": 1}),
                        folder / "scan.nii.gz")
    before = listing(folder)
    real = os.replace
    for code in (errno.EROFS, errno.ENOSPC):  # read-only, full

        def replace(source, destination, *args, code=code, **kwargs):
            # A new file moved into the folder fails; putting back what was there (a rollback) still works.
            if ".medgen-write-" in str(source) and ".replaced" not in str(source):
                raise OSError(code, os.strerror(code))
            return real(source, destination, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Exception) as raised:
            image_layer.save(str(path), plugin=PLUGIN)
        assert any(isinstance(e, MedgenError) and os.strerror(code) in str(e) for e in exception_chain(raised.value))
        assert listing(folder) == before and hidden_leftovers(folder) == []


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
            _wait(qtbot, widget)
        finally:
            handle.remove()
        assert run._outcome == "cancelled", (when, run._outcome)
        assert len(calls) < steps or when == "during the last step"
        assert_layers_unchanged(viewer, before)
        assert widget.run_button.enabled and not widget.cancel_button.enabled
        assert "preview (running)" not in [layer.name for layer in viewer.layers]
    widget.sampling.steps.value = 2
    widget.start()
    _wait(qtbot, widget)
    assert widget.current_run._outcome == "done"
    assert len(viewer.layers) == len(before) + 1


def test_exception_inside_the_network_fails_the_run_and_the_next_works(scan, tiny_model, qtbot, notices):
    """A ValueError, and a RuntimeError (what torch raises; superqt's worker used to swallow those and never
    end, leaving the widget busy for good): the run fails, nothing changed, the next run works."""
    viewer, image_layer, _ = scan
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Inpaint")
    region = np.zeros(image_layer.data.shape, np.uint8)
    region[1:3, 8:14, 6:12] = 1
    region_layer = viewer.add_labels(region, name="region", **_like(image_layer))
    widget.image.value, widget.region.value = image_layer, region_layer
    widget.in_place.value = True
    widget.sampling.steps.value = 4
    before = layer_state(viewer)
    for error in (lambda: ValueError("a bug in the network"), lambda: RuntimeError("CUDA error: a bug in the network")):
        with FaultyNetwork(tiny_model, error=error, fail_calls={3}):
            run = widget.start()
            _wait(qtbot, widget)
        assert run._outcome == "failed"
        assert notices[-1][0] == "error" and "a bug in the network" in notices[-1][1]
        assert_layers_unchanged(viewer, before)  # in place, and still nothing changed
        assert not widget.undo_button.enabled and widget.run_button.enabled
    widget.start()
    _wait(qtbot, widget)
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
        _wait(qtbot, widget)
        assert widget.current_run._outcome == "done"
        assert any(kind == "warning" and "fell back to the CPU" in message for kind, message in notices)
        assert len(viewer.layers) == len(before) + 1
        result = viewer.layers[-1]
        assert result.metadata["provenance"]["device"] == "cpu" and result.metadata["synthetic"] is True
        widget.start()  # the next run works (and falls back again: the GPU is still full)
        _wait(qtbot, widget)
        assert widget.current_run._outcome == "done"
        assert len(viewer.layers) == len(before) + 2


def test_closing_the_image_during_an_in_place_run(scan, tiny_model, qtbot, notices):
    viewer, image_layer, _ = scan
    region = np.zeros(image_layer.data.shape, np.uint8)
    region[1:3, 8:14, 6:12] = 1
    region_layer = viewer.add_labels(region, name="region", **_like(image_layer))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Inpaint")
    widget.image.value, widget.region.value = image_layer, region_layer
    widget.in_place.value = True
    widget.sampling.steps.value = 60
    original = np.array(image_layer.data, copy=True)
    run = widget.start()
    qtbot.waitUntil(lambda: run._progress is not None and run._progress.n >= 1, timeout=30000)
    viewer.layers.remove(image_layer)
    _wait(qtbot, widget)
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
    _wait(qtbot, widget)
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
    _wait(qtbot, widget)
    assert widget.current_run._outcome == "failed" and shown
    assert_layers_unchanged(viewer, before)
