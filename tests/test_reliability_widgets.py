"""The napari side of reliability, inputs: bad files, bad layers and broken models give a notification and
change no layer; saving onto a read-only or full disk fails cleanly."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from reliability_helpers import (
    assert_layers_unchanged,
    exception_chain,
    hidden_leftovers,
    layer_state,
    listing,
)
from tiny_models import make_tiny_model
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

from napari_medgen.engine import memory
from napari_medgen.engine.errors import MedgenError
from napari_medgen.engine.io import write_volume
from napari_medgen.engine.volume import Volume
from napari_medgen.napari_io import napari_get_reader


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
        "outside the schema": (viewer.add_labels(outside, name="labels 9", **kwargs_like(image_layer)), "9"),
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
    region_layer = viewer.add_labels(region, name="region", **kwargs_like(image_layer))
    nan = np.array(image_layer.data, np.float32)
    nan[2, 3, 3] = np.nan
    inf = np.array(image_layer.data, np.float32)
    inf[2, 3, 3] = np.inf
    far = 5000.0 + np.asarray(image_layer.translate)
    moved = 40.0 + np.asarray(image_layer.translate)
    outside = np.array(labels_layer.data, copy=True)
    outside[0, 0, 0] = 9
    layers = {
        "nan": viewer.add_image(nan, name="nan scan", **kwargs_like(image_layer)),
        "inf": viewer.add_image(inf, name="inf scan", **kwargs_like(image_layer)),
        "rgb": viewer.add_image(np.zeros((24, 20, 3), np.uint8), name="photo", rgb=True),
        "mask": viewer.add_image(region.astype(bool), name="mask as scan", **kwargs_like(image_layer)),
        "far region": viewer.add_labels(region, name="far region", **kwargs_like(image_layer, translate=far, metadata={})),
        "moved anatomy": viewer.add_labels(np.array(labels_layer.data), name="moved", **kwargs_like(image_layer, translate=moved, metadata={})),
        "anatomy 9": viewer.add_labels(outside, name="anatomy 9", **kwargs_like(image_layer)),
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
    nan_layer = viewer.add_image(nan, name="nan scan", **kwargs_like(image_layer))
    region = np.zeros(image_layer.data.shape, np.uint8)
    region[1:3, 4:10, 4:10] = 1
    region_layer = viewer.add_labels(region, name="region", **kwargs_like(image_layer))
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
