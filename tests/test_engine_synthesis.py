"""Generation and inpainting end to end on tiny models: geometry, reproducibility, cancelling, errors.

No Qt, no napari. Models are tiny random-weight MONAI UNets built here (`tiny_models`); where the
content of the result matters, an "oracle" network that knows the answer replaces the random one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model, randomize_zero_layers, tiny_card  # noqa: E402

from napari_medgen.engine.diffusion.schedule import NoiseSchedule  # noqa: E402
from napari_medgen.engine.errors import (  # noqa: E402
    GeometryMismatchError,
    InvalidVolumeError,
    LabelSchemaError,
    MedgenError,
    RegionError,
    TaskNotSupportedError,
)
from napari_medgen.engine.model.card import parse_card  # noqa: E402
from napari_medgen.engine.model.loading import LoadedModel, load_model
from napari_medgen.engine.model.networks import build_networks
from napari_medgen.engine.model.weights import save_model  # noqa: E402
from napari_medgen.engine.orientation import to_canonical  # noqa: E402
from napari_medgen.engine.resample import Grid, resample  # noqa: E402
from napari_medgen.engine.synthesis import ProgressEvent, generate, inpaint  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402

SPACING = (0.9, 1.1, 3.0)
ORIGIN = (12.5, -40.25, 7.0)
# Array axes permuted and flipped against the patient axes (a sagittal-style acquisition).
PERMUTED_FLIPPED = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
# A truly oblique direction with a flip (det -1).
_q, _ = np.linalg.qr(np.array([[0.9, 0.3, 0.1], [-0.2, 0.8, 0.4], [0.1, -0.5, 0.95]]))
OBLIQUE_FLIPPED = _q @ np.diag([1.0, 1.0, -1.0] if np.linalg.det(_q) > 0 else [1.0, 1.0, 1.0])
assert np.linalg.det(OBLIQUE_FLIPPED) < 0


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny networks run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def drive(gen) -> tuple[list, list[ProgressEvent]]:
    """Run an engine generator to its end: (returned volumes, events)."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    folders = {
        "2d": make_tiny_model(root / "tiny-2d"),
        "repaint": make_tiny_model(root / "repaint", name="tiny-repaint", known_image=False),
        "3d": make_tiny_model(root / "tiny-3d", name="tiny-3d", spatial_dims=3),
        "repaint-3d": make_tiny_model(root / "repaint-3d", name="tiny-repaint-3d", spatial_dims=3, known_image=False),
        "spade": make_tiny_model(root / "spade", name="tiny-spade", label_map="spade", known_image=False),
        "generate-only": make_tiny_model(root / "gen-only", name="gen-only", tasks=("generate",)),
        "2d-1mm": make_tiny_model(root / "tiny-2d-1mm", name="tiny-2d-1mm", spacing_mm=1.0),
        "3d-1mm": make_tiny_model(root / "tiny-3d-1mm", name="tiny-3d-1mm", spatial_dims=3, spacing_mm=1.0),
    }
    raw = tiny_card(name="tiny-controlnet").model_dump(mode="json")
    raw["conditioning"]["label_map"] = "controlnet"
    raw["network"]["kwargs"]["in_channels"] = 1 + 2 + 8
    raw["controlnet"] = {
        "class_name": "ControlNet",
        "kwargs": {
            **{k: v for k, v in raw["network"]["kwargs"].items() if k != "out_channels"},
            "conditioning_embedding_in_channels": 4,
            "conditioning_embedding_num_channels": [8],
        },
    }
    card = parse_card(raw)
    torch.manual_seed(0)
    networks = build_networks(card)
    for network in networks.values():
        randomize_zero_layers(network)
    folders["controlnet"] = save_model(card, networks, root / "controlnet")
    return folders


@pytest.fixture(scope="module")
def models(model_folders) -> dict[str, LoadedModel]:
    return {key: load_model(folder, device="cpu") for key, folder in model_folders.items()}


def _labels(shape=(6, 20, 24), direction=PERMUTED_FLIPPED, spacing=SPACING, seed=0) -> Volume:
    """A blocky label map (values 0..3) so that resampling keeps every class."""
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    coarse = rng.integers(0, 4, size=tuple(max(1, s // 3) + 1 for s in shape)).astype(np.uint8)
    index = np.meshgrid(*[np.arange(n) // 3 for n in shape], indexing="ij")
    array = coarse[tuple(index)]
    return Volume(array, spacing[:ndim], ORIGIN[:ndim], tuple(np.asarray(direction).ravel()), {"label_map": True})


def _image(dtype=np.float32, shape=(6, 20, 24), direction=PERMUTED_FLIPPED, seed=1) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.uniform(0, 800, size=shape)
    if np.dtype(dtype).kind == "i":
        array = np.rint(array - 200)  # some negative values, as in CT
    ndim = len(shape)
    return Volume(array.astype(dtype), SPACING[:ndim], ORIGIN[:ndim], tuple(np.asarray(direction).ravel()))


def _region(like: Volume, box=(slice(2, 4), slice(5, 15), slice(6, 18))) -> Volume:
    array = np.zeros(like.shape, np.uint8)
    array[box] = 1
    return like.with_array(array, metadata={})


def _axial_slices(volume: Volume) -> int:
    """Slices a 2-D model goes through: along the canonical (axial) axis, not array axis 0."""
    return to_canonical(volume).shape[0]


def _assert_same_geometry(result: Volume, reference: Volume) -> None:
    assert result.shape == reference.shape
    assert result.spacing == reference.spacing
    assert result.origin == reference.origin
    assert result.direction == reference.direction


class _CallCounter:
    """Counts forward passes of a network (a pre-hook, removed afterwards)."""

    def __init__(self, model: LoadedModel) -> None:
        self.count = 0
        self.batch = 0
        self._handle = model.networks["network"].register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1
        self.batch += args[0].shape[0]

    def remove(self) -> None:
        self._handle.remove()


class _Oracle(torch.nn.Module):
    """A network that knows the answer: the clean image is a fixed intensity per label class.

    It reads the label one-hot from its input channels and returns the exact noise prediction for
    that clean image, so the sampled result must equal it wherever the geometry is right.
    """

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.schedule = NoiseSchedule(model.card.scheduler)
        self.n = model.card.num_label_channels
        self.values = torch.linspace(-1.0, 1.0, self.n)

    def forward(self, x, timesteps, class_labels=None, **_):
        onehot = x[:, 1 : 1 + self.n]
        x0 = (onehot * self.values.reshape((1, -1) + (1,) * (x.dim() - 2)).to(x.dtype)).sum(1, keepdim=True)
        a = self.schedule.alpha_bar(int(timesteps[0]))
        return (x[:, :1] - a**0.5 * x0) / (1 - a) ** 0.5


def _with_oracle(model: LoadedModel) -> LoadedModel:
    return dataclasses.replace(model, networks={"network": _Oracle(model)})


# -- generation: geometry --------------------------------------------------------------------------
@pytest.mark.parametrize("direction", [PERMUTED_FLIPPED, OBLIQUE_FLIPPED], ids=["permuted-flipped", "oblique"])
def test_2d_model_on_3d_label_map_keeps_exact_geometry(models, direction):
    labels = _labels(direction=direction)
    results, events = drive(generate(models["2d"], labels, steps=3, seed=1))
    assert len(results) == 1
    result = results[0]
    _assert_same_geometry(result, labels)
    assert result.array.dtype == np.float32
    assert np.isfinite(result.array).all()
    assert events[-1].step == events[-1].total == len(events)


def test_2d_model_on_2d_label_map(models):
    labels = _labels(shape=(20, 24), direction=np.array([[-1.0, 0.0], [0.0, 1.0]]))
    results, _ = drive(generate(models["2d"], labels, steps=3, seed=1))
    _assert_same_geometry(results[0], labels)
    assert results[0].ndim == 2


def test_3d_model_with_sliding_windows_keeps_exact_geometry(models):
    # 40 x 2 mm = 80 mm = 20 voxels at the model's 4 mm: more than its 16-voxel tile.
    labels = _labels(shape=(8, 20, 40), spacing=(2.0, 1.1, 3.0))
    counter = _CallCounter(models["3d"])
    try:
        results, events = drive(generate(models["3d"], labels, steps=3, seed=1))
    finally:
        counter.remove()
    _assert_same_geometry(results[0], labels)
    assert np.isfinite(results[0].array).all()
    assert len(events) == 3
    assert counter.count > 3  # more than one window per step


def test_3d_model_refuses_2d_label_map(models):
    with pytest.raises(InvalidVolumeError, match="3-D"):
        drive(generate(models["3d"], _labels(shape=(20, 24), direction=np.eye(2)), steps=2))


@pytest.mark.parametrize(
    "direction, spacing",
    # Permuted: array axis y runs along S, so its 3 mm are the axial spacing. Oblique: isotropic.
    [(PERMUTED_FLIPPED, (1.0, 3.0, 1.0)), (OBLIQUE_FLIPPED, (1.0, 1.0, 1.0)), (np.eye(3), (1.0, 1.0, 2.5))],
    ids=["permuted-flipped", "oblique", "identity"],
)
def test_oracle_2d_result_lines_up_with_the_labels(models, direction, spacing):
    """Where the model's spacing equals the scan's, the result is exactly the oracle's image of the
    label map: any slip of orientation, flip or slice order would show."""
    labels = _labels(shape=(5, 12, 16), spacing=spacing, direction=direction)
    oracle = _with_oracle(models["2d-1mm"])
    results, _ = drive(generate(oracle, labels, steps=3, seed=0))
    expected = labels.array.astype(np.float32) * 1000.0 / 3.0
    np.testing.assert_allclose(results[0].array, expected, atol=1e-2)


def test_oracle_3d_result_lines_up_through_sliding_windows(models):
    labels = _labels(shape=(10, 20, 34), spacing=(1.0, 1.0, 1.0), direction=PERMUTED_FLIPPED)
    oracle = _with_oracle(models["3d-1mm"])
    results, _ = drive(generate(oracle, labels, steps=3, seed=0))
    expected = labels.array.astype(np.float32) * 1000.0 / 3.0
    np.testing.assert_allclose(results[0].array, expected, atol=1e-2)


@pytest.mark.parametrize("kind", ["spade", "controlnet"])
def test_other_conditioning_routes_follow_the_labels(models, kind):
    """SPADE and ControlNet take the labels outside the input stack: the same seed with other labels must give
    another image (where the labels changed), and the same labels the same image."""
    labels = _labels()
    changed = labels.array.copy()
    changed[:, :10] = (changed[:, :10] + 2) % 4  # one half of every slice gets other anatomy
    other = labels.with_array(changed)
    first, _ = drive(generate(models[kind], labels, steps=2, seed=0, guidance=1.0))
    again, _ = drive(generate(models[kind], labels, steps=2, seed=0, guidance=1.0))
    relabelled, _ = drive(generate(models[kind], other, steps=2, seed=0, guidance=1.0))
    _assert_same_geometry(first[0], labels)
    assert np.isfinite(first[0].array).all()
    np.testing.assert_array_equal(first[0].array, again[0].array)
    difference = np.abs(first[0].array - relabelled[0].array)
    assert difference.max() > 1.0, f"{kind}: the labels made no difference to the image"


def test_guidance_runs_both_passes_and_changes_the_result(models):
    labels = _labels()
    counter = _CallCounter(models["2d"])
    try:
        guided, _ = drive(generate(models["2d"], labels, steps=2, seed=0, guidance=3.0, batch_size=6))
        # Conditional and unconditional passes in one batch: twice the (axial) slices, every step.
        assert counter.batch == 2 * 2 * _axial_slices(labels)
    finally:
        counter.remove()
    plain, _ = drive(generate(models["2d"], labels, steps=2, seed=0, batch_size=6))
    assert not np.array_equal(guided[0].array, plain[0].array)


def test_guidance_with_a_3d_model_and_sliding_windows(models):
    labels = _labels(shape=(8, 20, 40), spacing=(2.0, 1.1, 3.0))
    guided, _ = drive(generate(models["3d"], labels, steps=2, seed=0, guidance=2.0))
    plain, _ = drive(generate(models["3d"], labels, steps=2, seed=0))
    _assert_same_geometry(guided[0], labels)
    assert np.isfinite(guided[0].array).all()
    assert not np.array_equal(guided[0].array, plain[0].array)


def test_bf16_model_generates(model_folders):
    model = load_model(model_folders["2d"], device="cpu", precision="bf16")
    results, _ = drive(generate(model, _labels(), steps=2, seed=0))
    assert results[0].array.dtype == np.float32
    assert np.isfinite(results[0].array).all()


# -- generation: reproducibility -------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["dpm++2m", "ddim", "ddpm"])
def test_same_seed_same_result_other_seed_other_result(models, sampler):
    labels = _labels()
    a, _ = drive(generate(models["2d"], labels, steps=3, seed=5, sampler=sampler))
    b, _ = drive(generate(models["2d"], labels, steps=3, seed=5, sampler=sampler))
    c, _ = drive(generate(models["2d"], labels, steps=3, seed=6, sampler=sampler))
    assert np.array_equal(a[0].array, b[0].array)
    assert not np.array_equal(a[0].array, c[0].array)


def test_3d_same_seed_same_result(models):
    labels = _labels(shape=(8, 20, 40), spacing=(2.0, 1.1, 3.0))
    a, _ = drive(generate(models["3d"], labels, steps=2, seed=5))
    b, _ = drive(generate(models["3d"], labels, steps=2, seed=5))
    c, _ = drive(generate(models["3d"], labels, steps=2, seed=6))
    assert np.array_equal(a[0].array, b[0].array)
    assert not np.array_equal(a[0].array, c[0].array)


def _assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float32 rounding (a convolution over a batch of 4 need not round like one over 1)."""
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)


def test_batch_size_does_not_change_the_result(models):
    """Noise is drawn per slice from the seed, not per batch: the batch size changes nothing but rounding."""
    labels = _labels()
    one, events_one = drive(generate(models["2d"], labels, steps=3, seed=2, batch_size=1))
    four, events_four = drive(generate(models["2d"], labels, steps=3, seed=2, batch_size=4))
    _assert_same_image(one[0].array, four[0].array)
    other_seed, _ = drive(generate(models["2d"], labels, steps=3, seed=3, batch_size=4))
    assert np.abs(other_seed[0].array - four[0].array).max() > 1.0
    n = _axial_slices(labels)
    assert events_one[-1].total == 3 * n and events_four[-1].total == 3 * -(-n // 4)


def test_variants_use_consecutive_seeds(models):
    labels = _labels()
    results, events = drive(generate(models["2d"], labels, steps=2, seed=10, variants=2))
    assert len(results) == 2
    assert [r.metadata["provenance"]["seed"] for r in results] == [10, 11]
    assert [r.metadata["provenance"]["variant"] for r in results] == [0, 1]
    assert {e.variant for e in events} == {0, 1}
    assert not np.array_equal(results[0].array, results[1].array)
    alone, _ = drive(generate(models["2d"], labels, steps=2, seed=11))
    assert np.array_equal(results[1].array, alone[0].array)


def test_provenance_names_model_weights_sampler_and_inputs(models):
    labels = _labels()
    results, _ = drive(generate(models["2d"], labels, steps=3, seed=4, sampler="ddim"))
    meta = results[0].metadata
    assert meta["synthetic"] is True
    prov = meta["provenance"]
    assert prov["model"] == "tiny-2d"
    assert prov["weights_sha256"] == models["2d"].weights_sha256 and len(prov["weights_sha256"]) == 64
    assert prov["sampler"] == "ddim" and prov["steps"] == 3 and prov["seed"] == 4
    assert prov["task"] == "generate"
    assert prov["inputs_sha256"] == {"label_map": labels.content_hash()}
    json.dumps(meta)  # serialisable, for the sidecar


def test_slice_range_covers_just_those_slices_and_matches_the_full_run(models):
    labels = _labels()
    full, _ = drive(generate(models["2d"], labels, steps=3, seed=3, batch_size=2))
    part, events = drive(generate(models["2d"], labels, steps=3, seed=3, batch_size=2, slice_range=(2, 4)))
    canonical_labels = to_canonical(labels)
    canonical_full = to_canonical(full[0])
    result = part[0]
    assert result.shape == (2,) + canonical_labels.shape[1:]
    # On the canonical grid of those slices ...
    expected_origin = canonical_labels.index_to_physical(np.array([0.0, 0.0, 2.0]))
    np.testing.assert_allclose(result.origin, expected_origin, atol=1e-9)
    np.testing.assert_allclose(result.spacing, canonical_labels.spacing)
    np.testing.assert_allclose(result.direction, canonical_labels.direction)
    # ... and the same image as those slices of a run over the whole volume.
    _assert_same_image(result.array, canonical_full.array[2:4])
    assert events[-1].total == 3 * 1
    assert result.metadata["provenance"]["seed"] == 3


def test_bad_slice_range(models):
    with pytest.raises(MedgenError, match="slice range"):
        drive(generate(models["2d"], _labels(), steps=2, slice_range=(15, _axial_slices(_labels()) + 1)))


def test_previews_have_the_output_geometry(models):
    labels = _labels()
    n = _axial_slices(labels)
    _, events = drive(generate(models["2d"], labels, steps=4, seed=0, batch_size=n, preview_every=2))
    previews = [e.preview for e in events if e.preview is not None]
    assert len(previews) == 2
    for preview in previews:
        _assert_same_geometry(preview, labels)
        assert preview.array.dtype == np.float32


def test_inpainting_previews_of_an_integer_image_are_float32(models):
    image = _image(np.int16)
    _, events = drive(inpaint(models["2d"], image, _region(image), steps=2, seed=0, preview_every=1))
    previews = [e.preview for e in events if e.preview is not None]
    assert previews
    for preview in previews:
        _assert_same_geometry(preview, image)
        assert preview.array.dtype == np.float32


# -- cancelling ------------------------------------------------------------------------------------
def test_closing_after_the_first_event_stops_the_work(models):
    labels = _labels()
    counter = _CallCounter(models["2d"])
    try:
        run = generate(models["2d"], labels, steps=3, seed=9, batch_size=1)
        first = next(run)
        assert first.step == 1 and first.total == 3 * _axial_slices(labels)
        run.close()
        assert counter.count == 1
    finally:
        counter.remove()
    again, _ = drive(generate(models["2d"], labels, steps=3, seed=9, batch_size=1))
    reference, _ = drive(generate(models["2d"], labels, steps=3, seed=9, batch_size=6))
    _assert_same_image(again[0].array, reference[0].array)


def test_closing_an_inpainting_run(models):
    image = _image()
    counter = _CallCounter(models["repaint"])
    try:
        run = inpaint(models["repaint"], image, _region(image), steps=3, seed=0)
        next(run)
        run.close()
        assert counter.count == 1
    finally:
        counter.remove()


# -- inpainting ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("kind", ["2d", "repaint", "3d", "repaint-3d"])
def test_inpaint_keeps_every_voxel_outside_the_region(models, kind, dtype):
    image = _image(dtype)
    region = _region(image)
    results, events = drive(inpaint(models[kind], image, region, steps=3, seed=0, jump_length=2, jump_count=2))
    result = results[0]
    _assert_same_geometry(result, image)
    assert result.array.dtype == image.array.dtype
    outside = region.array == 0
    assert np.array_equal(result.array[outside], image.array[outside])
    inside = ~outside
    changed = result.array[inside] != image.array[inside]
    assert changed.mean() > 0.5
    assert events[-1].step == events[-1].total
    prov = result.metadata["provenance"]
    assert prov["task"] == "inpaint"
    assert prov["inputs_sha256"] == {"image": image.content_hash(), "region": region.content_hash()}


@pytest.mark.parametrize("kind", ["2d", "repaint"])
def test_inpaint_region_with_gaps_between_slices(models, kind):
    """Slices without region are skipped; the noise of each slice is its own, whatever the batching."""
    image = _image(direction=np.eye(3))
    array = np.zeros(image.shape, np.uint8)
    array[1, 4:12, 5:15] = 1
    array[4, 8:16, 10:20] = 1
    region = image.with_array(array, metadata={})
    runs = [
        drive(inpaint(models[kind], image, region, steps=2, seed=0, batch_size=b, jump_length=1, jump_count=2))
        for b in (1, 4)
    ]
    (one, events_one), (four, _) = runs
    outside = array == 0
    assert np.array_equal(one[0].array[outside], image.array[outside])
    assert (one[0].array[1][array[1] > 0] != image.array[1][array[1] > 0]).any()
    assert (one[0].array[4][array[4] > 0] != image.array[4][array[4] > 0]).any()
    _assert_same_image(one[0].array, four[0].array)
    per_slice = events_one[-1].total // 2  # two slices hold region
    assert events_one[-1].total == 2 * per_slice


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_inpaint_region_smaller_than_a_model_voxel(models, kind):
    """One 1 mm voxel, far smaller than the model's 4 mm voxels: still regenerated, nothing else touched."""
    image = _image()
    array = np.zeros(image.shape, np.uint8)
    array[3, 9, 13] = 1
    region = image.with_array(array, metadata={})
    results, _ = drive(inpaint(models[kind], image, region, steps=2, seed=0, feather_mm=0.0))
    changed = results[0].array != image.array
    assert changed[3, 9, 13]
    assert changed.sum() == 1


def test_3d_model_refuses_a_2d_image(models):
    image = _image(shape=(20, 24), direction=np.eye(2))
    with pytest.raises(InvalidVolumeError, match="3-D"):
        drive(inpaint(models["3d"], image, _region(image, box=(slice(5, 15), slice(6, 18))), steps=2))


def test_inpaint_with_a_label_map(models):
    image = _image()
    labels = image.with_array(_labels().array, metadata={})
    region = _region(image)
    results, _ = drive(inpaint(models["2d"], image, region, label_map=labels, steps=2, seed=0))
    outside = region.array == 0
    assert np.array_equal(results[0].array[outside], image.array[outside])
    assert results[0].metadata["provenance"]["inputs_sha256"]["label_map"] == labels.content_hash()


def test_inpaint_region_as_float_mask(models):
    image = _image()
    region = _region(image)
    as_float = region.with_array(region.array.astype(np.float32))
    results, _ = drive(inpaint(models["2d"], image, as_float, steps=2, seed=0))
    outside = region.array == 0
    assert np.array_equal(results[0].array[outside], image.array[outside])


def test_inpaint_on_a_2d_image(models):
    image = _image(shape=(20, 24), direction=np.array([[0.0, 1.0], [1.0, 0.0]]))
    region = _region(image, box=(slice(5, 15), slice(6, 18)))
    results, _ = drive(inpaint(models["repaint"], image, region, steps=2, seed=0, jump_length=1, jump_count=2))
    _assert_same_geometry(results[0], image)
    outside = region.array == 0
    assert np.array_equal(results[0].array[outside], image.array[outside])
    assert (results[0].array[~outside] != image.array[~outside]).any()


def test_inpaint_region_on_another_grid_is_resampled(models):
    image = _image()
    # The same physical box drawn on an axis-aligned 1.5 mm grid that covers the image.
    corners = np.array([[i, j, k] for i in (0, 23) for j in (0, 19) for k in (0, 5)], float)
    points = image.index_to_physical(corners)
    low, high = points.min(0) - 2, points.max(0) + 2
    shape_xyz = np.ceil((high - low) / 1.5).astype(int) + 1
    other = Volume(np.zeros(shape_xyz[::-1], np.uint8), (1.5, 1.5, 1.5), tuple(low), tuple(np.eye(3).ravel()))
    # Paint, on the other grid, every voxel whose centre falls in the image's region box.
    zyx = np.argwhere(np.ones(other.shape, bool))
    world = other.index_to_physical(zyx[:, ::-1].astype(float))
    rel = world - np.asarray(image.origin)
    index_xyz = (rel @ image.direction_matrix) / np.asarray(image.spacing)
    inside = (
        (index_xyz[:, 0] > 5.5) & (index_xyz[:, 0] < 17.5)
        & (index_xyz[:, 1] > 4.5) & (index_xyz[:, 1] < 14.5)
        & (index_xyz[:, 2] > 1.5) & (index_xyz[:, 2] < 3.5)
    )
    array = np.zeros(other.shape, np.uint8)
    array[tuple(zyx[inside].T)] = 1
    other = other.with_array(array)
    expected_region = resample(other, Grid.of(image), "nearest").array > 0
    assert expected_region.any()

    results, _ = drive(inpaint(models["2d"], image, other, steps=2, seed=0))
    result = results[0]
    _assert_same_geometry(result, image)
    assert np.array_equal(result.array[~expected_region], image.array[~expected_region])
    assert (result.array[expected_region] != image.array[expected_region]).mean() > 0.5
    assert result.metadata["provenance"]["inputs_sha256"]["region"] == other.content_hash()


def test_inpaint_thin_region_on_a_finer_grid_is_not_lost(models):
    """A one-voxel-thick stroke on a finer grid, between the image's voxel centres, still marks the
    voxels it passes through instead of vanishing in nearest-neighbour resampling."""
    image = _image(direction=np.eye(3))
    fine_spacing = (0.3, 0.3, 0.5)
    shape_xyz = np.round(np.asarray(image.shape[::-1]) * np.asarray(SPACING) / np.asarray(fine_spacing)).astype(int)
    fine = Volume(np.zeros(shape_xyz[::-1], np.uint8), fine_spacing, image.origin, image.direction)
    array = fine.array.copy()
    # z index 15 on the fine grid: 7.5 mm above the origin, 2.5 image voxels; between image slices 2 and 3.
    array[15, 20:40, 20:50] = 1
    fine = fine.with_array(array)
    assert not resample(fine, Grid.of(image), "nearest").array.any()
    results, _ = drive(inpaint(models["2d"], image, fine, steps=2, seed=0))
    changed = results[0].array != image.array
    assert changed.any()
    assert set(np.argwhere(changed)[:, 0].tolist()) <= {2, 3}


# -- errors ----------------------------------------------------------------------------------------
def test_empty_region(models):
    image = _image()
    with pytest.raises(RegionError, match="empty"):
        drive(inpaint(models["2d"], image, image.with_array(np.zeros(image.shape, np.uint8)), steps=2))


def test_region_outside_the_image(models):
    image = _image()
    far = Volume(np.ones((4, 4, 4), np.uint8), (1.0, 1.0, 1.0), (5000.0, 5000.0, 5000.0), tuple(np.eye(3).ravel()))
    with pytest.raises(RegionError, match="outside"):
        drive(inpaint(models["2d"], image, far, steps=2))


def test_region_of_other_dimension(models):
    image = _image()
    flat = Volume(np.ones((20, 24), np.uint8), (0.9, 1.1), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(GeometryMismatchError):
        drive(inpaint(models["2d"], image, flat, steps=2))


def test_label_values_outside_the_schema(models):
    labels = _labels()
    array = labels.array.copy()
    array[0, 0, 0] = 7
    with pytest.raises(LabelSchemaError, match="7"):
        drive(generate(models["2d"], labels.with_array(array), steps=2))
    image = _image()
    with pytest.raises(LabelSchemaError, match="7"):
        drive(inpaint(models["2d"], image, _region(image), label_map=image.with_array(array, metadata={}), steps=2))


def test_float_label_map_is_refused(models):
    labels = _labels()
    with pytest.raises(LabelSchemaError, match="non-integer"):
        drive(generate(models["2d"], labels.with_array(labels.array.astype(np.float32)), steps=2))


def test_label_map_on_another_grid_than_the_image(models):
    image = _image()
    labels = Volume(_labels().array, SPACING, (0.0, 0.0, 0.0), tuple(PERMUTED_FLIPPED.ravel()))
    with pytest.raises(GeometryMismatchError, match="origin"):
        drive(inpaint(models["2d"], image, _region(image), label_map=labels, steps=2))


def test_model_without_inpaint_task(models):
    image = _image()
    with pytest.raises(TaskNotSupportedError, match="inpaint"):
        drive(inpaint(models["generate-only"], image, _region(image), steps=2))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"sampler": "euler"}, "sampler"),
        ({"steps": 0}, "steps"),
        ({"guidance": -1.0}, "guidance"),
        ({"variants": 0}, "variants"),
        ({"eta": 2.0}, "eta"),
    ],
)
def test_bad_options(models, options, match):
    with pytest.raises(MedgenError, match=match):
        drive(generate(models["2d"], _labels(), **options))


def test_unknown_option_is_a_type_error(models):
    with pytest.raises(TypeError, match="colour"):
        drive(generate(models["2d"], _labels(), colour="red"))


def test_image_that_is_a_label_map_is_refused(models):
    labels = _labels()
    with pytest.raises(InvalidVolumeError, match="label map"):
        drive(inpaint(models["2d"], labels, _region(labels), steps=2))


# -- writing a result ------------------------------------------------------------------------------
def test_written_result_carries_its_provenance(models, tmp_path):
    import SimpleITK as sitk

    from napari_medgen.engine.io import read_volume, sidecar_path, write_volume

    labels = _labels()
    results, _ = drive(generate(models["2d"], labels, steps=2, seed=21))
    path = write_volume(results[0], tmp_path / "synthetic.nii.gz")
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["synthetic"] is True
    assert sidecar["provenance"] == results[0].metadata["provenance"]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert reader.GetMetaData("descrip").startswith("SYNTHETIC")
    assert "tiny-2d" in reader.GetMetaData("descrip")
    back = read_volume(path)
    assert back.metadata["synthetic"] is True
    assert back.metadata["provenance"]["seed"] == 21
    assert back.same_grid(labels)


def test_slice_noise_correlation_mixes_own_and_shared_noise():
    """0 keeps each slice's own noise exactly as before (a seed's image does not change); 1 gives every slice
    the same noise; in between, any two slices' noise has that correlation and stays standard normal."""
    from napari_medgen.engine.synthesis.run import _SliceNoise

    keys = [7, 8, 9, 10]
    own = _SliceNoise(keys, seed=1, correlation=0.0).draw((1, 64, 64))
    for k, key in enumerate(keys):
        expected = torch.randn((1, 64, 64), generator=torch.Generator().manual_seed(key))
        torch.testing.assert_close(own[k], expected)
    shared = _SliceNoise(keys, seed=1, correlation=1.0).draw((1, 64, 64))
    assert all(torch.equal(shared[0], shared[k]) for k in range(1, 4))
    mixed = _SliceNoise(keys, seed=1, correlation=0.5).draw((1, 96, 96))[:, 0].reshape(4, -1).numpy()
    correlation = np.corrcoef(mixed)[np.triu_indices(4, 1)]
    assert np.all(np.abs(correlation - 0.5) < 0.05)
    assert np.all(np.abs(mixed.std(1) - 1.0) < 0.05)


def test_slice_noise_correlation_per_voxel_keeps_each_voxel_standard_normal():
    """A correlation per voxel (a tissue's own): voxels at 1 share their noise across slices, voxels at 0 keep
    each slice's own draw, and every voxel's noise stays standard normal."""
    from napari_medgen.engine.synthesis.run import _SliceNoise

    keys = list(range(40))
    correlation = np.zeros((40, 1, 32, 32), dtype=np.float32)
    correlation[:, :, :16] = 1.0  # the top half: fully shared
    correlation[:, :, 16:, :16] = 0.5
    noise = _SliceNoise(keys, seed=3, correlation=correlation).draw((1, 32, 32)).numpy()
    assert np.all(noise[:, :, :16] == noise[:1, :, :16])
    for k, key in enumerate(keys[:3]):  # correlation 0: exactly the slice's own draw
        own = torch.randn((1, 32, 32), generator=torch.Generator().manual_seed(key)).numpy()
        np.testing.assert_allclose(noise[k, :, 16:, 16:], own[:, 16:, 16:], rtol=0, atol=1e-6)
    half = noise[:, 0, 16:, :16]
    assert abs(np.corrcoef(half[0::2].ravel(), half[1::2].ravel())[0, 1] - 0.5) < 0.05
    for block in (noise[:, :, 16:, :16], noise[:, :, 16:, 16:]):
        assert abs(block.std() - 1.0) < 0.05


def test_a_cards_correlation_by_label_is_used_recorded_and_overridden_by_a_users_correlation(model_folders, tmp_path):
    """A card may give tissues their own slice-noise correlation: generation follows it and the result's
    provenance records it; a correlation the user asks for applies to every voxel instead."""
    raw = json.loads((model_folders["2d"] / "model.json").read_text())
    raw["conditioning"]["default_slice_noise_correlation"] = 0.0
    raw["conditioning"]["slice_noise_correlation_by_label"] = {"2": 1.0}
    folder = tmp_path / "by-label"
    shutil.copytree(model_folders["2d"], folder)
    (folder / "model.json").write_text(json.dumps(raw))
    model = load_model(folder, device="cpu")
    array = np.full((6, 20, 24), 3, dtype=np.uint8)
    array[:, :, :12] = 2  # the same anatomy on every slice: grey matter left, white matter right
    labels = Volume(array, SPACING, ORIGIN, tuple(np.eye(3).ravel()), {"label_map": True})
    result, _ = drive(generate(model, labels, steps=3, seed=2))
    provenance = result[0].metadata["provenance"]
    assert provenance["slice_noise_correlation"] == 0.0
    assert provenance["slice_noise_correlation_by_label"] == {"2": 1.0}
    image = result[0].array
    step = np.abs(np.diff(image, axis=0))[:, 3:-3]
    # Label 2's voxels get the same noise in every slice: far more alike from slice to slice than label 3's.
    assert step[:, :, :9].mean() < 0.5 * step[:, :, 15:].mean()
    uniform, _ = drive(generate(model, labels, steps=3, seed=2, slice_noise_correlation=0.0))
    assert "slice_noise_correlation_by_label" not in uniform[0].metadata["provenance"]
    assert not np.array_equal(uniform[0].array, image)
    with pytest.raises(MedgenError, match="slice_noise_correlation_by_label"):
        generate(model, labels, steps=2, slice_noise_correlation_by_label={2: 1.5})


def test_shared_slice_noise_makes_neighbouring_slices_alike(models):
    """The same anatomy on every slice: with shared noise the slices come out far more alike than with each
    slice's own noise (stripes across slices are what the correlation is for)."""
    array = np.repeat(_labels(shape=(1, 20, 24)).array, 6, axis=0)
    labels = Volume(array, SPACING, ORIGIN, tuple(np.eye(3).ravel()), {"label_map": True})

    def slice_to_slice(correlation: float) -> float:
        result, _ = drive(generate(models["2d"], labels, steps=3, seed=2, slice_noise_correlation=correlation))
        image = result[0].array
        return float(np.abs(np.diff(image, axis=0)).mean())

    assert slice_to_slice(1.0) < 0.5 * slice_to_slice(0.0)


def test_guidance_rescale_changes_a_guided_result_and_is_recorded(models):
    labels = _labels()
    plain, _ = drive(generate(models["2d"], labels, steps=2, seed=0, guidance=3.0))
    rescaled, _ = drive(generate(models["2d"], labels, steps=2, seed=0, guidance=3.0, guidance_rescale=0.7))
    assert not np.array_equal(plain[0].array, rescaled[0].array)
    assert rescaled[0].metadata["provenance"]["guidance_rescale"] == 0.7
    with pytest.raises(MedgenError, match="guidance_rescale"):
        generate(models["2d"], labels, steps=2, guidance_rescale=1.5)
    with pytest.raises(MedgenError, match="slice_noise_correlation"):
        generate(models["2d"], labels, steps=2, slice_noise_correlation=-0.1)
