"""Latent models (MAISI-style): rectified flow against MONAI's loop, generation from a 3-D label map on the CPU
in its exact geometry, the body envelope, latent inpainting (outside voxels bit-exact), cancel, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_importers import make_maisi_folder

from napari_medgen.engine.errors import LabelSchemaError, ModelCardError
from napari_medgen.engine.volume import Volume

# A direction that permutes and flips axes: the result must come back in the label map's own geometry.
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def maisi_model(tmp_path_factory):
    from napari_medgen.engine.model.importers import import_maisi
    from napari_medgen.engine.model.loading import load_model

    root = tmp_path_factory.mktemp("maisi")
    folder, _, _ = make_maisi_folder(root / "src")
    out = import_maisi(folder, root / "model", name="maisi-tiny")
    return load_model(out, device="cpu")


def _label_map(body: bool = True, shape=(10, 14, 12)) -> Volume:
    """A small abdomen: body envelope (optional), liver and spleen, air outside; (z, y, x)."""
    labels = np.zeros(shape, np.uint8)
    if body:
        labels[:, 2:12, 2:10] = 200
    labels[2:8, 4:8, 3:6] = 1
    labels[3:7, 5:9, 6:9] = 3
    return Volume(labels, spacing=(1.7, 1.5, 2.0), origin=(10.0, -5.0, 3.0), direction=DIRECTION)


def test_rflow_matches_monai_loop():
    """Our loop is MONAI's RFlowScheduler driven as MAISI drives it: the same latents, step for step."""
    from monai.networks.schedulers import RFlowScheduler

    from napari_medgen.engine.diffusion.rectified_flow import RectifiedFlowSchedule, sample_rflow
    from napari_medgen.engine.model.card_sections import SchedulerSpec

    spec = SchedulerSpec(class_name="RFlowScheduler", prediction_type="v_prediction", use_discrete_timesteps=False,
                         use_timestep_transform=True)
    torch.manual_seed(0)
    weights = torch.randn(4, 4)

    def velocity(x, t):  # any function of (x, t): the network
        return torch.einsum("ij,bj...->bi...", weights, x) * (1 + float(t) / 1000) - x

    noise = torch.randn(1, 4, 6, 6, 4)
    reference = RFlowScheduler(num_train_timesteps=1000, use_discrete_timesteps=False, sample_method="uniform",
                               use_timestep_transform=True)
    reference.set_timesteps(num_inference_steps=7, input_img_size_numel=torch.prod(torch.tensor(noise.shape[-3:])))
    latents = noise.clone()
    following = torch.cat((reference.timesteps[1:], torch.tensor([0], dtype=reference.timesteps.dtype)))
    for t, next_t in zip(reference.timesteps, following):
        latents, _ = reference.step(velocity(latents, torch.Tensor((t,))), t, latents, next_t)

    ours = sample_rflow(velocity, noise.clone(), RectifiedFlowSchedule(spec), 7)
    events = []
    while True:
        try:
            events.append(next(ours))
        except StopIteration as stop:
            final = stop.value
            break
    assert [e[0] for e in events] == list(range(1, 8)) and events[-1][1] == 7
    assert torch.equal(final, latents)


def test_generate_3d_on_cpu_keeps_geometry(maisi_model):
    from napari_medgen.engine.synthesis import generate

    label_map = _label_map()
    run = generate(maisi_model, label_map, steps=3, seed=4, preview_every=2)
    events = []
    while True:
        try:
            events.append(next(run))
        except StopIteration as stop:
            results = stop.value
            break
    assert [e.step for e in events] == [1, 2, 3, 4] and events[-1].total == 4  # 3 UNet steps + the decode
    preview = events[1].preview
    assert preview is not None and preview.shape == label_map.shape and preview.same_grid(label_map)
    (image,) = results
    assert image.shape == label_map.shape and image.same_grid(label_map)
    assert np.isfinite(image.array).all()
    assert np.all(image.array[label_map.array == 0] == -1000)  # MAISI's background rule
    inside = image.array[label_map.array > 0]
    assert inside.min() >= -1000 - 1e-3 and inside.max() <= 1000 + 1e-3 and inside.std() > 0
    record = image.metadata["provenance"]
    assert image.metadata["synthetic"] and record["sampler"] == "rflow" and record["steps"] == 3
    assert "notices" not in record  # the body label was there
    from napari_medgen.napari_io import volume_to_layer

    assert volume_to_layer(image, "image", "ct")[1]["contrast_limits"] == [-160.0, 240.0]  # a CT window in napari
    again = list_run(generate(maisi_model, label_map, steps=3, seed=4, preview_every=0))
    assert np.array_equal(again[0].array, image.array)  # a seed gives the same volume


def list_run(run):
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value


def test_layout_round_trip_and_spacing_order():
    from napari_medgen.engine.synthesis.latent_networks import from_layout, spacing_in_layout, to_layout

    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    ras = to_layout(array, "ras_xyz")
    assert ras.shape == (4, 3, 2)
    # canonical x runs right->left, RAS x left->right: the first RAS voxel is canonical x's last.
    assert ras[0, 0, 0] == array[0, 2, 3]
    assert np.array_equal(from_layout(ras, "ras_xyz"), array)
    assert spacing_in_layout((1.0, 2.0, 3.0), "ras_xyz") == [1.0, 2.0, 3.0]


def test_body_label_added_when_missing(maisi_model):
    from napari_medgen.engine.synthesis import generate

    label_map = _label_map(body=False)
    run = generate(maisi_model, label_map, steps=2, preview_every=0)
    first = next(run)
    assert "no body label 200" in first.notice and "convex hull" in first.notice
    (image,) = list_run(run)
    record = image.metadata["provenance"]
    assert any("no body label 200" in n for n in record["notices"])
    assert record["inputs_sha256"]["label_map"] == label_map.content_hash()  # the map as given


def test_body_envelope_from_scan():
    from napari_medgen.engine.synthesis.body_envelope import add_body_envelope

    labels = np.zeros((4, 20, 20), np.uint8)
    labels[:, 8:12, 8:12] = 1
    scan = np.full(labels.shape, -1000.0, np.float32)
    scan[:, 3:17, 3:17] = 40.0  # the body
    scan[:, 1, 1] = 300  # a speck outside (a table): not the largest part
    volume = Volume(labels, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    added, notice = add_body_envelope(volume, 200, scan=volume.with_array(scan))
    assert "from the scan" in notice
    assert np.array_equal(added.array == 200, (scan > -500) & (labels == 0) & ~((np.arange(20)[:, None] == 1) & (np.arange(20) == 1)))
    assert np.array_equal(added.array[labels == 1], labels[labels == 1])
    same, none = add_body_envelope(added, 200)
    assert none == "" and same is added


def test_latent_inpaint_outside_bit_exact(maisi_model):
    from napari_medgen.engine.synthesis import inpaint

    label_map = _label_map()
    rng = np.random.default_rng(0)
    scan = np.where(label_map.array > 0, 40, -1000).astype(np.int16) + rng.integers(-20, 20, label_map.shape).astype(np.int16)
    image = label_map.with_array(scan)
    region_array = np.zeros(label_map.shape, np.uint8)
    region_array[3:7, 5:9, 4:8] = 1
    region = label_map.with_array(region_array)
    (result,) = list_run(inpaint(maisi_model, image, region, label_map, steps=3, preview_every=0, context_mm=4))
    assert result.array.dtype == scan.dtype and result.same_grid(image)
    assert np.array_equal(result.array[region_array == 0], scan[region_array == 0])
    assert not np.array_equal(result.array[region_array == 1], scan[region_array == 1])
    with pytest.raises(LabelSchemaError, match="label map"):
        inpaint(maisi_model, image, region, None, steps=2)


def test_cancel_mid_run(maisi_model):
    from napari_medgen.engine.synthesis import generate

    network = maisi_model.networks["network"]
    calls = []
    handle = network.register_forward_hook(lambda *a: calls.append(1))
    try:
        run = generate(maisi_model, _label_map(), steps=10, preview_every=0)
        next(run)
        next(run)
        run.close()
        assert len(calls) == 2
        with pytest.raises(StopIteration):
            next(run)
    finally:
        handle.remove()


def test_latent_card_checks(maisi_model):
    from napari_medgen.engine.model.card import parse_card

    raw = maisi_model.card.model_dump(mode="json")
    no_autoencoder = dict(raw, autoencoder=None)
    with pytest.raises(ModelCardError, match="both 'autoencoder' and 'latent'"):
        parse_card(no_autoencoder)
    wrong = json.loads(json.dumps(raw))
    wrong["controlnet"]["kwargs"]["conditioning_embedding_in_channels"] = 5
    with pytest.raises(ModelCardError, match="label bit-planes"):
        parse_card(wrong)
    pixel_rflow = json.loads(json.dumps(raw))
    pixel_rflow.update(autoencoder=None, latent=None)
    with pytest.raises(ModelCardError, match="latent"):
        parse_card(pixel_rflow)
    assert maisi_model.card.downsampling_factor == 8  # 4x compression x 2 for the UNet's one down-sampling


def test_cli_generate_from_imported_model(maisi_model, tmp_path):
    from napari_medgen.cli import main
    from napari_medgen.engine.io import read_volume, write_volume

    label_map = _label_map(body=False)
    labels_path = tmp_path / "labels.nii.gz"
    write_volume(label_map, labels_path)
    out = tmp_path / "ct.nii.gz"
    code = main(["generate", "--model", str(maisi_model.folder), "--labels", str(labels_path), "--out", str(out),
                 "--steps", "2", "--device", "cpu", "--progress", "none"])
    assert code == 0
    written = read_volume(out)
    source = read_volume(labels_path)
    assert written.shape == source.shape and written.same_grid(source)


def test_napari_generate_widget_paints_ct(maisi_model, make_napari_viewer, qtbot):
    """In napari: a painted label map (a Labels layer) -> the Generate widget -> a CT layer placed exactly on it,
    shown in a CT window."""
    from napari_medgen.layer_geometry import volume_to_layer_data
    from napari_medgen.widgets.session import ModelSession

    viewer = make_napari_viewer()
    label_map = _label_map(body=False)
    data, kwargs, _ = volume_to_layer_data(label_map.with_array(label_map.array, metadata={"label_map": True}), "labels", "painted")
    labels_layer = viewer.add_labels(np.array(data), **kwargs)
    ModelSession.of(viewer).set_model(maisi_model)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medgen", "Generate")
    widget.label_layer.value = labels_layer
    assert widget.scope.value == "whole volume"  # a 3-D model makes the whole volume, not one padded slice
    widget.sampling.steps.value = 2
    widget.start()
    qtbot.waitUntil(lambda: widget.current_run is not None and not widget.current_run.running, timeout=120000)
    result = viewer.layers[-1]
    assert result.data.shape == labels_layer.data.shape
    np.testing.assert_allclose(result.scale, labels_layer.scale)
    np.testing.assert_allclose(result.translate, labels_layer.translate)
    np.testing.assert_allclose(result.affine.affine_matrix, labels_layer.affine.affine_matrix)
    assert list(result.contrast_limits) == [-160.0, 240.0]
    from napari_medgen.widgets.generate_widget import preview_contrast

    assert preview_contrast(maisi_model.card) == [-160.0, 240.0]  # the preview in the same CT window
    assert any("body label" in n for n in result.metadata["provenance"]["notices"])


def test_out_of_accelerator_memory_falls_back_to_cpu(maisi_model):
    """A full accelerator does not fail the run: the variant goes again on the CPU (same seed, same volume)."""
    from reliability_helpers import FaultyNetwork, cuda_out_of_memory, on_fake_accelerator

    from napari_medgen.engine.synthesis import generate

    label_map = _label_map()
    expected = list_run(generate(maisi_model, label_map, steps=2, seed=3, preview_every=0))[0]
    on_gpu = on_fake_accelerator(maisi_model)
    with FaultyNetwork(on_gpu, error=cuda_out_of_memory, fail_calls={1}):
        run = generate(on_gpu, label_map, steps=2, seed=3, preview_every=0)
        events = []
        while True:
            try:
                events.append(next(run))
            except StopIteration as stop:
                (image,) = stop.value
                break
    assert events[0].notice == "ran out of META memory: fell back to the CPU (slower)"
    assert "fell back to the CPU" in events[-1].message
    assert [e.step for e in events] == [0, 1, 2, 3]
    assert np.array_equal(image.array, expected.array)
    assert image.metadata["provenance"]["device"] == "cpu"


def test_label_bit_planes_match_maisi_binarisation(maisi_model):
    """The ControlNet's input is MAISI's binarize_labels: channel k is bit k of the label index."""
    from napari_medgen.engine.synthesis.latent_networks import label_channels

    labels = np.random.default_rng(1).choice([0, 1, 3, 5, 14, 23, 200], size=(5, 6, 7))
    ours = label_channels(maisi_model.card, labels)
    bits = np.unpackbits(labels.astype(np.uint8)[..., None], axis=-1, bitorder="little")  # bit k at index k
    assert np.array_equal(ours, np.moveaxis(bits, -1, 0).astype(np.float32))
