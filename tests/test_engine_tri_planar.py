"""Tri-planar sampling (one 2-D network trained on three planes, the planes in turn) and its training data:
restricted to one plane it is slice-wise sampling; each plane's slices reach the network with their plane's
code; thin and anisotropic volumes; inpainting keeps every voxel outside the region; a model without planes
is refused tri-planar and keeps its path. No Qt, no napari."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_fixtures import one_thread  # noqa: F401 (fixture)
from reliability_helpers import drive
from tiny_models import make_tiny_model, tiny_card

from napari_medgen.engine.errors import OptionNotSupportedError
from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.synthesis import generate, inpaint
from napari_medgen.engine.synthesis import planes as planes_module
from napari_medgen.engine.volume import Volume

SPACING_MM = 4.0  # the tiny card's


def _labels(shape=(16, 24, 16), spacing=(SPACING_MM,) * 3, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    array = np.zeros(shape, np.uint8)
    inner = tuple(slice(m, s - m) if s > 2 * m else slice(None) for s, m in zip(shape, (2, 3, 2), strict=True))
    array[inner] = rng.integers(1, 4, size=array[inner].shape)
    return Volume(array, spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), {"label_map": True})


@pytest.fixture(scope="module")
def planar(tmp_path_factory):
    return load_model(str(make_tiny_model(tmp_path_factory.mktemp("tri") / "m", orientations=True)), device="cpu",
                      precision="fp32")


@pytest.fixture(scope="module")
def axial_only(tmp_path_factory):
    return load_model(str(make_tiny_model(tmp_path_factory.mktemp("axial") / "m")), device="cpu", precision="fp32")


def test_tri_planar_on_one_plane_is_slice_wise_sampling(planar, monkeypatch):
    """With the cycle restricted to the axial plane, the whole-volume loop gives what slice-by-slice sampling
    gives (same noise per slice, same conditioning, same network calls), to float rounding."""
    labels = _labels()
    (slice_wise,), _ = drive(generate(planar, labels, planes="axial", slice_noise_correlation=0.0, steps=4, seed=3))
    monkeypatch.setattr(planes_module, "PLANE_CYCLE", ("axial",))
    (tri,), _ = drive(generate(planar, labels, planes="tri", steps=4, seed=3))
    assert tri.metadata["provenance"]["planes"] == "tri"
    np.testing.assert_allclose(tri.array, slice_wise.array, rtol=0, atol=1e-2)  # of a 0-1000 range


def test_each_plane_reaches_the_network_with_its_code_and_shape(planar):
    """Calls go axial, coronal, sagittal in turn; each batch carries its plane's class code, and its slices are
    that plane's (z, y, x cut across the right axis)."""
    seen = []
    network = planar.networks["network"]
    hook = network.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((tuple(args[0].shape[2:]), set(kwargs["class_labels"].tolist()))),
        with_kwargs=True)
    try:
        (out,), _ = drive(generate(planar, _labels(shape=(16, 24, 32)), planes="tri", steps=3, seed=0))
    finally:
        hook.remove()
    assert out.shape == (16, 24, 32)
    order = planar.card.conditioning.orientations
    expected = [((24, 32), order.index("axial")), ((16, 32), order.index("coronal")), ((16, 24), order.index("sagittal"))]
    assert all(len(codes) == 1 for _, codes in seen)
    assert _collapse(seen) == expected


def _collapse(seen):
    """Consecutive batches of one call (same slice shape and code) as one entry."""
    out = []
    for shape, codes in seen:
        entry = (shape, next(iter(codes)))
        if not out or out[-1] != entry:
            out.append(entry)
    return out


def test_a_model_without_planes_is_refused_tri_planar_and_keeps_its_path(axial_only):
    labels = _labels()
    with pytest.raises(OptionNotSupportedError, match="tri-planar"):
        generate(axial_only, labels, planes="tri")
    (out,), _ = drive(generate(axial_only, labels, steps=2))
    record = out.metadata["provenance"]
    assert record["planes"] == "axial" and "planes_why" not in record


def test_a_slice_correlation_is_refused_with_tri_planar(planar):
    with pytest.raises(OptionNotSupportedError, match="own noise"):
        generate(planar, _labels(), planes="tri", slice_noise_correlation=0.5)


def test_a_thin_volume_goes_axial_and_says_why(planar):
    labels = _labels(shape=(2, 24, 16))
    (out,), _ = drive(generate(planar, labels, planes="tri", steps=2))
    record = out.metadata["provenance"]
    assert out.shape == labels.shape
    assert record["planes"] == "axial" and "axial plane" in record["planes_why"]


def test_an_anisotropic_volume_is_sampled_on_the_isotropic_grid_and_returned_on_its_own(planar):
    labels = _labels(shape=(8, 24, 16), spacing=(SPACING_MM, SPACING_MM, 2 * SPACING_MM))
    (out,), _ = drive(generate(planar, labels, planes="tri", steps=2))
    assert out.shape == labels.shape and out.spacing == labels.spacing and out.origin == labels.origin
    assert out.metadata["provenance"]["planes"] == "tri"
    assert np.isfinite(out.array).all() and out.array.std() > 0


@pytest.mark.parametrize("estimate", ["sample", "mean"])
def test_tri_planar_inpainting_keeps_every_voxel_outside_the_region(planar, estimate):
    labels = _labels()
    rng = np.random.default_rng(1)
    image = labels.with_array((labels.array.astype(np.float32) * 300 + rng.normal(0, 20, labels.shape)).astype(np.float32), metadata={})
    region_array = np.zeros(labels.shape, np.uint8)
    region_array[6:10, 8:14, 5:10] = 1
    region = labels.with_array(region_array, metadata={})
    (out,), _ = drive(inpaint(planar, image, region, labels, planes="tri", steps=3, inpaint_estimate=estimate))
    outside = region_array == 0
    assert np.array_equal(out.array[outside], image.array[outside])
    assert not np.allclose(out.array[~outside], image.array[~outside])
    assert out.metadata["provenance"]["planes"] == "tri"


def test_training_slices_are_cut_in_every_plane(tmp_path):
    """A card with orientations trains on slices of each plane, each with its plane's code and its position
    along the axis it cuts, from the pair on an isotropic grid."""
    from napari_medgen.engine.io import write_volume
    from napari_medgen.engine.training.data import load_training_slices

    labels = _labels(shape=(12, 20, 16), spacing=(SPACING_MM, SPACING_MM, 2 * SPACING_MM))
    image = labels.with_array((labels.array.astype(np.float32) * 250).astype(np.float32), metadata={})
    pair = (write_volume(image, tmp_path / "a_image.nii.gz"), write_volume(labels, tmp_path / "a_label.nii.gz"))
    data = load_training_slices(tiny_card(orientations=True), [pair])
    # z is resampled from 8 mm to 4 mm: 24 slices; non-empty slices per plane: 16 axial, 14 coronal, 12 sagittal
    counts = np.bincount(data.orientations, minlength=3)
    assert counts.tolist() == [16, 14, 12]
    assert data.description["orientations"] == ["axial", "coronal", "sagittal"]
    coronal = data.positions[data.orientations == 1]
    np.testing.assert_allclose(coronal, np.arange(3, 17) / 19)
    assert data.labels.shape[1:] == (24, 20)  # padded to the tallest (24 z) and widest (20 y, sagittal) slice


def test_a_fine_tune_adds_the_plane_embedding_at_zero(tmp_path):
    """Started from a model without planes, the new embedding is zero: the fine-tune begins as that model on
    every plane (what the 3.0.0 teacher started from)."""
    from napari_medgen.engine.model.card import load_card
    from napari_medgen.engine.model.networks import build_networks
    from napari_medgen.engine.model.weights import load_weights

    earlier = make_tiny_model(tmp_path / "earlier")
    card = tiny_card(orientations=True)
    network = build_networks(card)["network"]
    load_weights(load_card(earlier), earlier, {"network": network}, new_at_zero=("network.class_embedding.weight",))
    old = build_networks(load_card(earlier))["network"]
    load_weights(load_card(earlier), earlier, {"network": old})
    x = torch.randn(2, card.network.kwargs["in_channels"], 16, 16)
    t = torch.tensor([10, 50])
    with torch.no_grad():
        for code in range(3):
            torch.testing.assert_close(network(x, t, class_labels=torch.full((2,), code)), old(x, t))


def test_the_last_calls_can_average_the_three_planes(planar):
    """planes_average_last=1: the last of 3 calls runs all three planes (and is recorded); the others one each."""
    codes = []
    hook = planar.networks["network"].register_forward_pre_hook(
        lambda module, args, kwargs: codes.append(int(kwargs["class_labels"][0])), with_kwargs=True)
    try:
        (out,), _ = drive(generate(planar, _labels(shape=(16, 16, 16)), planes="tri", steps=3, planes_average_last=1))
    finally:
        hook.remove()
    order = planar.card.conditioning.orientations
    ran = [c for k, c in enumerate(codes) if k == 0 or c != codes[k - 1]]
    # calls 1 and 2: axial, coronal; call 3 (the last): axial, coronal and sagittal, averaged
    assert ran == [order.index(p) for p in ("axial", "coronal", "axial", "coronal", "sagittal")]
    assert out.metadata["provenance"]["planes_average_last"] == 1


def test_a_three_plane_network_called_without_a_plane_runs_axial(planar):
    """Code that drives the engine's denoiser itself (a notebook, a benchmark) and names no plane gets the axial
    code, the plane slice-wise sampling runs, rather than an error from the network."""
    from napari_medgen.engine.diffusion.denoiser import Denoiser

    codes = []
    network = planar.networks["network"]
    hook = network.register_forward_pre_hook(
        lambda module, args, kwargs: codes.extend(kwargs["class_labels"].tolist()), with_kwargs=True)
    channels = planar.card.input_channels - 1
    try:
        Denoiser(planar, torch.zeros(2, channels, 16, 16))(torch.zeros(2, 1, 16, 16), 10)
    finally:
        hook.remove()
    assert codes == [planar.card.conditioning.orientations.index("axial")] * 2
