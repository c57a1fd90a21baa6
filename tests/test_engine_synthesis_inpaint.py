"""Inpainting end to end on tiny models, and cancelling a run: every voxel outside the region kept, regions
with gaps, thinner than a voxel or on another grid, with and without a label map, 2-D images; closing the
generator stops the work. No Qt, no napari (fixtures: `engine_fixtures`).
"""

from __future__ import annotations


import numpy as np
import pytest
from engine_fixtures import (
    SPACING,
    CallCounter,
    assert_same_geometry,
    assert_same_image,
    axial_slices,
    make_image,
    make_labels,
    make_region,
)
from engine_fixtures import model_folders, models, one_thread  # noqa: F401 (fixtures)
from reliability_helpers import drive

from napari_medgen.engine.errors import InvalidVolumeError
from napari_medgen.engine.resample import Grid, resample
from napari_medgen.engine.synthesis import generate, inpaint
from napari_medgen.engine.volume import Volume


# -- cancelling ------------------------------------------------------------------------------------
def test_closing_after_the_first_event_stops_the_work(models):
    labels = make_labels()
    counter = CallCounter(models["2d"])
    try:
        run = generate(models["2d"], labels, steps=3, seed=9, batch_size=1)
        first = next(run)
        assert first.step == 1 and first.total == 3 * axial_slices(labels)
        run.close()
        assert counter.count == 1
    finally:
        counter.remove()
    again, _ = drive(generate(models["2d"], labels, steps=3, seed=9, batch_size=1))
    reference, _ = drive(generate(models["2d"], labels, steps=3, seed=9, batch_size=6))
    assert_same_image(again[0].array, reference[0].array)


def test_closing_an_inpainting_run(models):
    image = make_image()
    counter = CallCounter(models["repaint"])
    try:
        run = inpaint(models["repaint"], image, make_region(image), steps=3, seed=0)
        next(run)
        run.close()
        assert counter.count == 1
    finally:
        counter.remove()


# -- inpainting ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("kind", ["2d", "repaint", "3d", "repaint-3d"])
def test_inpaint_keeps_every_voxel_outside_the_region(models, kind, dtype):
    image = make_image(dtype)
    region = make_region(image)
    results, events = drive(inpaint(models[kind], image, region, steps=3, seed=0, jump_length=2, jump_count=2))
    result = results[0]
    assert_same_geometry(result, image)
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
    image = make_image(direction=np.eye(3))
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
    assert_same_image(one[0].array, four[0].array)
    per_slice = events_one[-1].total // 2  # two slices hold region
    assert events_one[-1].total == 2 * per_slice


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_inpaint_region_smaller_than_a_model_voxel(models, kind):
    """One 1 mm voxel, far smaller than the model's 4 mm voxels: still regenerated, nothing else touched."""
    image = make_image()
    array = np.zeros(image.shape, np.uint8)
    array[3, 9, 13] = 1
    region = image.with_array(array, metadata={})
    results, _ = drive(inpaint(models[kind], image, region, steps=2, seed=0, feather_mm=0.0))
    changed = results[0].array != image.array
    assert changed[3, 9, 13]
    assert changed.sum() == 1


def test_3d_model_refuses_a_2d_image(models):
    image = make_image(shape=(20, 24), direction=np.eye(2))
    with pytest.raises(InvalidVolumeError, match="3-D"):
        drive(inpaint(models["3d"], image, make_region(image, box=(slice(5, 15), slice(6, 18))), steps=2))


def test_inpaint_with_a_label_map(models):
    image = make_image()
    labels = image.with_array(make_labels().array, metadata={})
    region = make_region(image)
    results, _ = drive(inpaint(models["2d"], image, region, label_map=labels, steps=2, seed=0))
    outside = region.array == 0
    assert np.array_equal(results[0].array[outside], image.array[outside])
    assert results[0].metadata["provenance"]["inputs_sha256"]["label_map"] == labels.content_hash()


def test_inpaint_region_as_float_mask(models):
    image = make_image()
    region = make_region(image)
    as_float = region.with_array(region.array.astype(np.float32))
    results, _ = drive(inpaint(models["2d"], image, as_float, steps=2, seed=0))
    outside = region.array == 0
    assert np.array_equal(results[0].array[outside], image.array[outside])


def test_inpaint_on_a_2d_image(models):
    image = make_image(shape=(20, 24), direction=np.array([[0.0, 1.0], [1.0, 0.0]]))
    region = make_region(image, box=(slice(5, 15), slice(6, 18)))
    results, _ = drive(inpaint(models["repaint"], image, region, steps=2, seed=0, jump_length=1, jump_count=2))
    assert_same_geometry(results[0], image)
    outside = region.array == 0
    assert np.array_equal(results[0].array[outside], image.array[outside])
    assert (results[0].array[~outside] != image.array[~outside]).any()


def test_inpaint_region_on_another_grid_is_resampled(models):
    image = make_image()
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
    assert_same_geometry(result, image)
    assert np.array_equal(result.array[~expected_region], image.array[~expected_region])
    assert (result.array[expected_region] != image.array[expected_region]).mean() > 0.5
    assert result.metadata["provenance"]["inputs_sha256"]["region"] == other.content_hash()


def test_inpaint_thin_region_on_a_finer_grid_is_not_lost(models):
    """A one-voxel-thick stroke on a finer grid, between the image's voxel centres, still marks the
    voxels it passes through instead of vanishing in nearest-neighbour resampling."""
    image = make_image(direction=np.eye(3))
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
