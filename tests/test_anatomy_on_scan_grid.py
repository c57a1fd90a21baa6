"""A fill made on a coarser model grid brought to a 1 mm scan with its label map (issue 33): the tissue edges
where the fine labels put them, each tissue at the scan's own level near the region (a ventricle's CSF darker
than a sulcus's), nothing read from inside the region, and the choice recorded in the provenance."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from engine_fixtures import one_thread  # noqa: E402, F401 (fixture)
from reliability_helpers import drive  # noqa: E402
from tiny_models import make_tiny_model  # noqa: E402

from napari_medgen.engine.model.loading import load_model  # noqa: E402
from napari_medgen.engine.resample import Grid, grid_at_spacing, resample  # noqa: E402
from napari_medgen.engine.synthesis import inpaint  # noqa: E402
from napari_medgen.engine.synthesis.anatomy_edges import anatomy_on_scan_grid  # noqa: E402
from napari_medgen.engine.synthesis.model_grid import ModelGridProblem  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402

IDENTITY = tuple(np.eye(3).ravel())
CSF, GM, WM = 1, 2, 3


def _scan(shape=(16, 48, 48)):
    """A 1 mm scan: white matter with a grey-matter slab and a 1 mm CSF line through it (finer than 2 mm), and
    a dark 'ventricle' of CSF on the left while the CSF of the right is brighter (a sulcus's partial volume)."""
    labels = np.full(shape, WM, np.uint16)
    labels[:, :, 20:30] = GM
    labels[:, 24, 20:30] = CSF
    labels[:, 10:18, 2:8] = CSF  # the ventricle, beside the region
    labels[:, 10:18, 40:46] = CSF  # the sulci, far from it
    image = np.select([labels == WM, labels == GM], [850.0, 650.0], 0.0).astype(np.float32)
    image[:, 10:18, 2:8] = 300.0
    image[:, 10:18, 40:46] = 420.0
    image[:, 24, 20:30] = 300.0
    return Volume(image, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY), labels


def _problem(labels: Volume) -> ModelGridProblem:
    grid = grid_at_spacing(labels, (2.0, 2.0, 2.0))
    coarse = resample(labels, grid, "nearest").array.astype(np.uint16)
    return ModelGridProblem(grid=Grid(grid.size, grid.spacing, grid.origin, grid.direction), labels=coarse,
                            known=None, region=None, pad=(0, 0, 0))


def _coarse_fill(image: Volume, labels: Volume, problem: ModelGridProblem, levels: dict[int, float]) -> np.ndarray:
    """What a perfect 2 mm network gives back on the 1 mm grid: the tissue levels on the coarse labels, linear."""
    painted = np.zeros(problem.labels.shape, np.float32)
    for tissue, level in levels.items():
        painted[problem.labels == tissue] = level
    grid = problem.grid
    return resample(Volume(painted, grid.spacing, grid.origin, grid.direction), Grid.of(image), "linear").array


def test_the_fill_gets_the_fine_labels_edges_and_the_local_tissue_levels():
    image, labels_array = _scan()
    labels = image.with_array(labels_array, metadata={"label_map": True})
    region = np.zeros(image.shape, bool)
    region[4:12, 8:40, 6:36] = True  # takes in the 1 mm CSF line and part of the dark ventricle
    problem = _problem(labels)
    on_scan = anatomy_on_scan_grid(labels, image.array, region, problem, background_label=0)
    assert on_scan is not None
    assert np.all(on_scan.edges[~region] == 0)
    # A network that knows only the crop-wide levels (CSF 360, between the ventricle's 300 and the sulci's 420).
    fill = _coarse_fill(image, labels, problem, {CSF: 360.0, GM: 650.0, WM: 850.0})
    brought = on_scan.applied(fill, region)
    truth = image.array
    assert np.abs(brought - truth)[region].mean() < 0.5 * np.abs(fill - truth)[region].mean()
    line = region & (labels_array == CSF)
    line[:, :, :20] = False  # the 1 mm CSF line, which the 2 mm grid could not hold
    assert np.abs(brought[line] - 300.0).mean() < 60.0 < np.abs(fill[line] - 300.0).mean()
    # The ventricle's CSF inside the region at the ventricle's level, not the crop's.
    ventricle = region & (labels_array == CSF)
    ventricle[:, :, 8:] = False
    assert abs(float(brought[ventricle].mean()) - 300.0) < 25.0
    # Whatever the region holds is never read.
    hidden = image.array.copy()
    hidden[region] = 5000.0
    again = anatomy_on_scan_grid(labels, hidden, region, problem, background_label=0)
    np.testing.assert_array_equal(again.edges, on_scan.edges)
    np.testing.assert_array_equal(again.applied(fill, region), brought)


def test_nothing_is_moved_where_the_scan_is_no_finer_than_the_model():
    image, labels_array = _scan()
    coarse_image = Volume(image.array, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), IDENTITY)
    labels = coarse_image.with_array(labels_array, metadata={"label_map": True})
    region = np.zeros(image.shape, bool)
    region[4:12, 8:40, 6:36] = True
    assert anatomy_on_scan_grid(labels, coarse_image.array, region, _problem(labels)) is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(str(make_tiny_model(tmp_path_factory.mktemp("onscan") / "m")), device="cpu", precision="fp32")


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 3.0), (4.0, 4.0, 4.0)])
def test_a_fill_with_a_label_map_keeps_every_voxel_outside_and_says_how_it_was_made(tiny, spacing):
    image, labels_array = _scan(shape=(12, 40, 40))
    image = Volume(image.array, spacing, (3.0, -2.0, 1.0), IDENTITY)
    label_map = image.with_array(np.minimum(labels_array, 3), metadata={"label_map": True})
    region_array = np.zeros(image.shape, np.uint8)
    region_array[4:8, 12:30, 12:30] = 1
    region = image.with_array(region_array, metadata={})
    for estimate in ("mean", "sample"):
        (out,), _ = drive(inpaint(tiny, image, region, label_map, inpaint_estimate=estimate, steps=2, seed=1))
        outside = region_array == 0
        np.testing.assert_array_equal(out.array[outside], image.array[outside])
        record = out.metadata["provenance"]
        assert record["inpaint_estimate"] == estimate and record["anatomy"] == "given"
        finer = min(spacing[:2]) < tiny.card.spacing_mm[0] / 1.25
        assert record["anatomy_at_scan_resolution"] == finer
    (plain,), _ = drive(inpaint(tiny, image, region, label_map, inpaint_estimate="mean", fine_detail="none", seed=1))
    assert plain.metadata["provenance"]["anatomy_at_scan_resolution"] is False
    # Without a label map the tissue continued into the region is a guess: it guides the fill, never sharpened.
    (guessed,), _ = drive(inpaint(tiny, image, region, inpaint_estimate="mean", seed=1))
    assert guessed.metadata["provenance"]["anatomy_at_scan_resolution"] is False


def test_a_fill_more_blotchy_than_the_scan_is_calmed_to_the_scans_spread():
    from scipy import ndimage

    image, labels_array = _scan()
    labels = image.with_array(labels_array, metadata={"label_map": True})
    region = np.zeros(image.shape, bool)
    region[4:12, 8:40, 6:36] = True
    problem = _problem(labels)
    # A network whose tissues vary far more than the scan's (smooth blotches, the demo model's CSF at 1.3x).
    blotches = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 1, image.shape), 2.0)
    fill = _coarse_fill(image, labels, problem, {CSF: 300.0, GM: 650.0, WM: 850.0})
    fill = fill + (60.0 / blotches.std()) * blotches
    given = anatomy_on_scan_grid(labels, image.array, region, problem, background_label=0)
    deep = region & (labels_array == WM)
    deep[:, :, 16:34] = False  # white matter away from the grey-matter slab
    spread = lambda array: float(np.std(array[deep] - image.array[deep]))  # noqa: E731
    assert spread(given.applied(fill, region)) < 0.3 * spread(fill)


def test_a_label_map_a_model_does_not_take_moves_no_edge(tmp_path):
    label_free = load_model(str(make_tiny_model(tmp_path / "free", label_map="none")), device="cpu", precision="fp32")
    image, labels_array = _scan(shape=(12, 40, 40))
    label_map = image.with_array(np.minimum(labels_array, 3), metadata={"label_map": True})
    region_array = np.zeros(image.shape, np.uint8)
    region_array[4:8, 12:30, 12:30] = 1
    (out,), _ = drive(inpaint(label_free, image, image.with_array(region_array, metadata={}), label_map,
                              inpaint_estimate="mean", steps=2, seed=1))
    # The network never saw the labels, so its fill's edges are not where they put them: nothing is moved.
    assert out.metadata["provenance"]["anatomy_at_scan_resolution"] is False
    np.testing.assert_array_equal(out.array[region_array == 0], image.array[region_array == 0])
