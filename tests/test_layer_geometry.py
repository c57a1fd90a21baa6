"""The layer adapter puts every voxel at its physical place in napari's world, and back, exactly.

Checked through real napari layers (``layer.data_to_world``) against SimpleITK's own
``TransformIndexToPhysicalPoint``: napari world axes are (z, y, x) in LPS mm, ITK's are (x, y, z).
"""

from __future__ import annotations

import itertools

import napari
import numpy as np
import pytest
import SimpleITK as sitk
from geometry_cases import DIRECTIONS, SHAPE_ZYX, make_volume, rotation

from napari_medgen.engine.errors import GeometryMismatchError
from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.volume import Volume
from napari_medgen.layer_geometry import (
    GEOMETRY_KEY,
    layer_kwargs_like,
    layer_to_volume,
    napari_layer_to_volume,
    volume_to_layer_data,
)

RANDOM_ROTATIONS = {f"random_{seed}": rotation(seed, proper=seed % 2 == 0) for seed in range(10, 16)}
ALL_DIRECTIONS = {**DIRECTIONS, **RANDOM_ROTATIONS}
AXIS_ALIGNED = ("identity", "lps_flip_xy", "single_flip", "permutation", "permutation_flip")


def sample_indices(shape_zyx: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every corner of the grid and a few voxels inside (ITK array order)."""
    corners = list(itertools.product(*[(0, n - 1) for n in shape_zyx]))
    inner = [tuple(n // 2 for n in shape_zyx), tuple(min(1, n - 1) for n in shape_zyx)]
    return corners + inner


def image_layer(volume: Volume) -> napari.layers.Image:
    data, kwargs, layer_type = volume_to_layer_data(volume, "image", "scan")
    assert layer_type == "image"
    return napari.layers.Image(data, **kwargs)


def assert_voxels_at_itk_points(volume: Volume, layer) -> None:
    """Each voxel (found by its unique value) sits where SimpleITK says it is."""
    image = volume.to_sitk()
    data = np.asarray(layer.data)
    for index_zyx in sample_indices(volume.shape):
        value = volume.array[index_zyx]
        found = np.argwhere(data == value)
        assert len(found) == 1, "voxel values must be unique"
        world = np.asarray(layer.data_to_world(found[0]))
        itk_point = image.TransformIndexToPhysicalPoint([int(i) for i in index_zyx[::-1]])
        np.testing.assert_allclose(world[::-1], itk_point, rtol=0, atol=1e-6)


@pytest.mark.parametrize("direction", list(ALL_DIRECTIONS))
def test_voxels_land_where_itk_places_them(direction):
    volume = make_volume(ALL_DIRECTIONS[direction])
    layer = image_layer(volume)
    assert_voxels_at_itk_points(volume, layer)


@pytest.mark.parametrize("direction", list(ALL_DIRECTIONS))
def test_layer_back_to_volume_is_the_exact_source_grid(direction):
    volume = make_volume(ALL_DIRECTIONS[direction], metadata={"modality": "MR"})
    layer = image_layer(volume)
    back = napari_layer_to_volume(layer)
    assert back.shape == volume.shape
    assert back.spacing == volume.spacing
    assert back.origin == volume.origin
    assert back.direction == volume.direction
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.metadata["modality"] == "MR"
    assert GEOMETRY_KEY not in back.metadata


@pytest.mark.parametrize("direction", list(ALL_DIRECTIONS))
def test_layer_without_reference_geometry_goes_back_to_the_same_physical_grid(direction):
    """A layer whose metadata lost the reference geometry: geometry rebuilt from scale/translate/affine."""
    volume = make_volume(ALL_DIRECTIONS[direction])
    layer = image_layer(volume)
    rebuilt = layer_to_volume(
        np.asarray(layer.data), layer.scale, layer.translate, layer.affine.affine_matrix, metadata={}
    )
    np.testing.assert_array_equal(rebuilt.array, np.asarray(layer.data))
    for index in sample_indices(rebuilt.shape):
        world = np.asarray(layer.data_to_world(index))
        np.testing.assert_allclose(rebuilt.index_to_physical(np.array(index[::-1])), world[::-1], atol=1e-6)
    # Same voxels, same places: resampling one onto the other is the identity.
    resampled = sitk.Resample(
        rebuilt.to_sitk(), volume.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, -1.0
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), volume.array)


@pytest.mark.parametrize("error", [1e-7, 1e-4])
def test_nearly_orthonormal_directions_place_voxels_exactly(error):
    """Directions read from files are orthonormal only to float32 precision (NIfTI); Volume accepts ~1e-3."""
    direction = rotation(40) + np.random.default_rng(40).uniform(-error, error, size=(3, 3))
    volume = make_volume(direction, origin=(-180.0, 210.0, 95.0))
    layer = image_layer(volume)
    assert_voxels_at_itk_points(volume, layer)


@pytest.mark.parametrize("direction", AXIS_ALIGNED)
def test_axis_aligned_volumes_need_no_affine(direction):
    """Flips and permutations are shown by reordering axes, so napari slices them axis-aligned."""
    volume = make_volume(DIRECTIONS[direction])
    data, kwargs, _ = volume_to_layer_data(volume, "image")
    assert "affine" not in kwargs or np.allclose(kwargs["affine"], np.eye(4))
    assert np.all(np.asarray(kwargs["scale"]) > 0)
    # Layer axes run inferior->superior, anterior->posterior, right->left (world axes z, y, x).
    layer = napari.layers.Image(data, **kwargs)
    start = np.asarray(layer.data_to_world((0, 0, 0)))
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = 1
        moved = np.asarray(layer.data_to_world(step)) - start
        assert moved[axis] > 0
        assert np.count_nonzero(np.abs(moved) > 1e-9) == 1


def test_mni_like_flip_shows_as_positive_scale_and_lps_translate():
    volume = make_volume(DIRECTIONS["lps_flip_xy"], spacing=(2.0, 2.0, 2.0), origin=(90.0, 126.0, -72.0))
    data, kwargs, _ = volume_to_layer_data(volume, "image")
    np.testing.assert_allclose(kwargs["scale"], (2.0, 2.0, 2.0))
    _, ny, nx = SHAPE_ZYX
    # After flipping x and y, the first voxel is the source's last in x and y.
    np.testing.assert_allclose(kwargs["translate"], (-72.0, 126.0 - 2.0 * (ny - 1), 90.0 - 2.0 * (nx - 1)))
    np.testing.assert_array_equal(data, volume.array[:, ::-1, ::-1])


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_2d_volumes_place_pixels_like_itk(seed):
    volume = make_volume(rotation(seed, ndim=2, proper=seed != 22), shape=(6, 11), spacing=(0.7, 1.3), origin=(5.0, -9.5))
    layer = image_layer(volume)
    assert layer.ndim == 2
    assert_voxels_at_itk_points(volume, layer)
    back = napari_layer_to_volume(layer)
    assert (back.spacing, back.origin, back.direction) == (volume.spacing, volume.origin, volume.direction)
    np.testing.assert_array_equal(back.array, volume.array)


def test_affine_with_its_own_scale_folds_into_spacing():
    """A layer made outside the plugin, with spacing carried by the affine rather than by scale."""
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    rot = rotation(30)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.5, 0.7, 0.7])
    affine[:3, 3] = (10.0, -4.0, 7.0)
    layer = napari.layers.Image(data, affine=affine)
    volume = napari_layer_to_volume(layer)
    np.testing.assert_allclose(volume.spacing, (0.7, 0.7, 2.5))
    for index in sample_indices(data.shape):
        np.testing.assert_allclose(
            volume.index_to_physical(np.array(index[::-1])), np.asarray(layer.data_to_world(index))[::-1], atol=1e-9
        )


def test_layer_type_follows_the_voxels():
    assert volume_to_layer_data(make_volume())[2] == "image"
    assert volume_to_layer_data(make_volume(dtype=np.uint8))[2] == "labels"
    synthetic = make_volume(dtype=np.int16, metadata={"synthetic": True})
    assert volume_to_layer_data(synthetic)[2] == "image"


def test_reference_geometry_in_metadata_is_json_serialisable():
    import json

    _, kwargs, _ = volume_to_layer_data(make_volume(DIRECTIONS["oblique_1"]), "image")
    json.dumps(kwargs["metadata"][GEOMETRY_KEY])


# -- Labels painted on an image's grid ----------------------------------------------------------


def paint_voxel(labels: napari.layers.Labels, index, label: int) -> None:
    """Set one voxel as napari's painting tools do (undoable, with events)."""
    labels.data_setitem(tuple(np.array([int(i)]) for i in index), label)


def paint_points(volume: Volume) -> list[tuple[int, ...]]:
    """Source voxels (ITK array order) to paint: corners and inner voxels."""
    return sample_indices(volume.shape)


@pytest.mark.parametrize("direction", ["identity", "lps_flip_xy", "permutation_flip", "oblique_1", "oblique_improper"])
@pytest.mark.parametrize("ext", [".nii.gz", ".mha"])
def test_painted_labels_save_on_the_scan_grid(tmp_path, direction, ext):
    scan = make_volume(DIRECTIONS[direction])
    image = image_layer(scan)
    labels = napari.layers.Labels(np.zeros(image.data.shape, np.uint8), **layer_kwargs_like(image))
    painted = {}
    for label, index_zyx in enumerate(paint_points(scan), start=1):
        (layer_index,) = np.argwhere(np.asarray(image.data) == scan.array[index_zyx])
        paint_voxel(labels, layer_index, label)
        painted[label] = tuple(layer_index)
    path = write_volume(napari_layer_to_volume(labels), tmp_path / f"labels{ext}")
    saved = read_volume(path)
    tolerance = 0.0 if ext == ".mha" else 2e-5
    np.testing.assert_allclose(saved.spacing, scan.spacing, atol=tolerance, rtol=0)
    np.testing.assert_allclose(saved.origin, scan.origin, atol=tolerance * 100, rtol=0)
    np.testing.assert_allclose(saved.direction, scan.direction, atol=tolerance, rtol=0)
    assert saved.shape == scan.shape and saved.array.dtype == np.uint8
    saved_image = saved.to_sitk()
    for label, layer_index in painted.items():
        world = np.asarray(labels.data_to_world(layer_index))
        index_xyz = saved_image.TransformPhysicalPointToIndex(tuple(world[::-1]))
        assert saved_image[index_xyz] == label
    assert int(np.count_nonzero(saved.array)) == len(painted)


def test_labels_like_a_plain_napari_image_save_on_its_grid(tmp_path):
    """An image napari opened itself (no reference geometry): labels made for it still line up."""
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    image = napari.layers.Image(data, scale=(2.5, 0.7, 0.7), translate=(10.0, -4.0, 7.0))
    labels = napari.layers.Labels(np.zeros(data.shape, np.uint16), **layer_kwargs_like(image))
    paint_voxel(labels, (2, 1, 4), 9)
    saved = read_volume(write_volume(napari_layer_to_volume(labels), tmp_path / "labels.mha"))
    assert saved.spacing == (0.7, 0.7, 2.5) and saved.origin == (7.0, -4.0, 10.0)
    assert saved.array.dtype == np.uint16 and saved.array[2, 1, 4] == 9


def test_layer_kwargs_like_copies_the_reference_geometry():
    image = image_layer(make_volume(DIRECTIONS["oblique_1"]))
    kwargs = layer_kwargs_like(image)
    kwargs["metadata"][GEOMETRY_KEY]["origin"] = [0.0, 0.0, 0.0]
    assert image.metadata[GEOMETRY_KEY]["origin"] != [0.0, 0.0, 0.0]
    labels = napari.layers.Labels(np.zeros(image.data.shape, np.uint8), **layer_kwargs_like(image))
    np.testing.assert_array_equal(labels.affine.affine_matrix, image.affine.affine_matrix)
    np.testing.assert_array_equal(labels.scale, image.scale)
    np.testing.assert_array_equal(labels.translate, image.translate)


def test_labels_of_the_wrong_shape_are_refused():
    image = image_layer(make_volume(DIRECTIONS["oblique_1"]))
    labels = napari.layers.Labels(np.zeros((2, 2, 2), np.uint8), **layer_kwargs_like(image))
    with pytest.raises(GeometryMismatchError, match="does not fit"):
        napari_layer_to_volume(labels)


def test_painting_in_a_viewer_on_an_oblique_scan(make_napari_viewer, tmp_path):
    """Paint with the brush where a world point is, as a click would; the saved voxel is at that point."""
    viewer = make_napari_viewer()
    scan = make_volume(DIRECTIONS["oblique_2"])
    data, kwargs, _ = volume_to_layer_data(scan, "image", "scan")
    image = viewer.add_image(data, **kwargs)
    labels = viewer.add_labels(np.zeros(data.shape, np.uint8), name="mask", **layer_kwargs_like(image))
    labels.brush_size = 1
    labels.n_edit_dimensions = 2
    target_xyz = (6, 2, 3)  # ITK index of the voxel to paint
    physical = scan.to_sitk().TransformIndexToPhysicalPoint(target_xyz)
    viewer.dims.set_point(0, physical[2])
    data_position = np.asarray(labels.world_to_data(np.asarray(physical)[::-1]))
    labels.paint(data_position, 5)
    assert np.count_nonzero(np.asarray(labels.data)) == 1
    saved = read_volume(write_volume(napari_layer_to_volume(labels), tmp_path / "mask.mha"))
    assert saved.same_grid(scan)
    assert saved.array[target_xyz[::-1]] == 5
