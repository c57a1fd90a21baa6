"""Generation runs the network only on the anatomy and a margin of background around it
(`model_grid.anatomy_box`) when the card says what the background is, and tri-planar sampling runs only
the slices of each plane that hold some anatomy: the output is still the label map's whole grid, exactly the
background outside the anatomy, a slice range still gives the whole run's slices, and the network sees fewer
voxels (the speed a user notices)."""

from __future__ import annotations

import numpy as np
import pytest
from engine_fixtures import PERMUTED_FLIPPED, assert_same_geometry, assert_same_image
from engine_fixtures import one_thread  # noqa: F401 (fixture)
from reliability_helpers import drive
from tiny_models import make_tiny_model

from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.orientation import to_canonical
from napari_medgen.engine.synthesis import generate
from napari_medgen.engine.volume import Volume

# canonical (z, y, x): 20 slices of 64 x 64 voxels of 1 mm; the anatomy a block in the middle
SHAPE = (20, 64, 64)
ANATOMY = (slice(6, 14), slice(24, 40), slice(20, 44))


@pytest.fixture(scope="module")
def stripped_models(tmp_path_factory):
    """Tiny models (slice-wise and tri-planar) whose card says label 0 is background, exactly 0 in an image."""
    root = tmp_path_factory.mktemp("stripped")
    return {
        "axial": load_model(make_tiny_model(root / "axial", name="tiny-stripped", spacing_mm=2.0, background_label=0),
                            device="cpu"),
        "tri": load_model(make_tiny_model(root / "tri", name="tiny-stripped-tri", spacing_mm=2.0, background_label=0,
                                          orientations=True), device="cpu"),
    }


def _label_map(direction=np.eye(3)) -> Volume:
    """A block of tissues (labels 1-3 in thirds) in background, laid out as `direction` orients it."""
    canonical = np.zeros(SHAPE, np.uint8)
    block = np.zeros(tuple(s.stop - s.start for s in ANATOMY), np.uint8)
    block[:, :, :8], block[:, :, 8:16], block[:, :, 16:] = 1, 2, 3
    canonical[ANATOMY] = block
    identity = Volume(canonical, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), {"label_map": True})
    if np.allclose(direction, np.eye(3)):
        return identity
    # the same anatomy stored in another array order: find the layout whose canonical form is `canonical`
    from napari_medgen.engine.orientation import canonical_axes, unorient_array

    axes, flips = canonical_axes(np.asarray(direction))
    stored = np.ascontiguousarray(unorient_array(canonical, axes, flips))
    return Volume(stored, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.asarray(direction).ravel()), {"label_map": True})


class _InputSizes:
    """The (slices, height, width) of every network call's input."""

    def __init__(self, model) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self._handle = model.networks["network"].register_forward_pre_hook(
            lambda module, args: self.shapes.append(tuple(args[0].shape[:1]) + tuple(args[0].shape[2:])))

    def remove(self) -> None:
        self._handle.remove()


@pytest.mark.parametrize("planes", ["axial", "tri"])
def test_the_network_runs_on_the_anatomy_box_and_the_rest_is_background(stripped_models, planes):
    model = stripped_models[planes]
    labels = _label_map(PERMUTED_FLIPPED)
    sizes = _InputSizes(model)
    try:
        (result,), _ = drive(generate(model, labels, steps=2, seed=1, preview_every=0, planes=planes))
    finally:
        sizes.remove()
    assert_same_geometry(result, labels)
    assert result.metadata["provenance"]["planes"] == planes
    box = result.metadata["provenance"]["anatomy_box"]  # canonical (z, y, x), recorded
    assert all(start <= a.start and a.stop <= stop for (start, stop), a in zip(box, ANATOMY, strict=True))
    # exactly the card's background wherever the label map is background, generated inside the anatomy
    assert np.all(result.array[labels.array == 0] == 0.0)
    assert np.ptp(result.array[labels.array > 0]) > 0
    # the whole grid at the model's 2 mm is 32 x 32 in-plane: the anatomy's box (16 x 24 mm, 12 mm each side,
    # at least a 32 mm training tile) is smaller along x, and axial runs only the anatomy's 8 slices
    assert max(h * w for _, h, w in sizes.shapes) < 32 * 32
    if planes == "axial":
        assert sum(n for n, _, _ in sizes.shapes) == 2 * (ANATOMY[0].stop - ANATOMY[0].start)
    else:
        # two calls: the axial slices, then the coronal ones, that hold some anatomy (at 2 mm: 4 of 8 mm, 8 of
        # 16 mm, a slice more where the block's edge falls between voxels); the box's margin and padding are not run
        assert sum(n for n, _, _ in sizes.shapes) <= (4 + 1) + (8 + 1)


def test_a_slice_range_gives_the_whole_runs_slices_and_background_beyond_the_anatomy(stripped_models):
    model = stripped_models["axial"]
    labels = _label_map()
    (whole,), _ = drive(generate(model, labels, steps=2, seed=3, preview_every=0))
    (part,), _ = drive(generate(model, labels, steps=2, seed=3, preview_every=0, slice_range=(9, 11)))
    assert_same_image(part.array, to_canonical(whole).array[9:11])
    (outside,), _ = drive(generate(model, labels, steps=2, seed=3, preview_every=0, slice_range=(1, 3)))
    assert outside.shape == (2, 64, 64) and np.all(outside.array == 0.0)


def test_a_card_without_a_background_label_runs_the_whole_grid(tmp_path):
    model = load_model(make_tiny_model(tmp_path / "plain", spacing_mm=2.0), device="cpu")
    sizes = _InputSizes(model)
    try:
        drive(generate(model, _label_map(), steps=1, seed=1, preview_every=0))
    finally:
        sizes.remove()
    assert sum(n for n, _, _ in sizes.shapes) == SHAPE[0]
    assert max(h * w for _, h, w in sizes.shapes) == 32 * 32


def test_a_3d_model_gets_the_margin_across_slices_too(tmp_path):
    model = load_model(make_tiny_model(tmp_path / "m3", name="tiny-stripped-3d", spatial_dims=3, spacing_mm=2.0,
                                       background_label=0), device="cpu")
    labels = _label_map()
    (result,), _ = drive(generate(model, labels, steps=1, seed=1, preview_every=0))
    (z_start, z_stop), _, _ = result.metadata["provenance"]["anatomy_box"]
    assert z_start < ANATOMY[0].start and z_stop > ANATOMY[0].stop  # 12 mm of context along z as well
    assert np.all(result.array[labels.array == 0] == 0.0)
