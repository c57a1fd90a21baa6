"""The plugin's reader, writers and sample data, driven through napari's own API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from geometry_cases import DIRECTIONS, listing, make_volume
from reliability_helpers import exception_chain

from napari_medgen.engine.errors import MedgenError, VolumeReadError
from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.volume import Volume
from napari_medgen.layer_geometry import GEOMETRY_KEY, layer_kwargs_like, volume_to_layer_data
from napari_medgen.napari_io import (
    image_display_kwargs,
    is_segmentation,
    napari_get_reader,
    read_layers,
    volume_to_layer,
)

PLUGIN = "napari-medgen"


def assert_layer_places_voxels_like_file(layer, path: Path) -> None:
    """Every corner voxel of the file is in the layer at the world point ITK gives it."""
    volume = read_volume(path)
    image = volume.to_sitk()
    data = np.asarray(layer.data)
    for index_zyx in [(0, 0, 0), tuple(n - 1 for n in volume.shape), (1, 2, 3)]:
        itk_point = np.asarray(image.TransformIndexToPhysicalPoint([int(i) for i in index_zyx[::-1]]))
        layer_index = np.round(np.asarray(layer.world_to_data(itk_point[::-1]))).astype(int)
        np.testing.assert_allclose(layer.data_to_world(layer_index)[::-1], itk_point, atol=1e-6)
        assert data[tuple(layer_index)] == volume.array[index_zyx]


# -- reading ------------------------------------------------------------------------------------


def test_open_nifti_image(make_napari_viewer, tmp_path):
    path = write_volume(make_volume(DIRECTIONS["oblique_1"], metadata={"modality": "MR"}), tmp_path / "t1.nii.gz")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer._type_string == "image"
    assert layer.name == "t1"
    assert layer.metadata["modality"] == "MR"
    assert GEOMETRY_KEY in layer.metadata
    assert_layer_places_voxels_like_file(layer, path)
    low, high = layer.contrast_limits
    assert low < high


def test_open_segmentation_file_gives_labels(make_napari_viewer, tmp_path):
    path = write_volume(make_volume(DIRECTIONS["lps_flip_xy"], dtype=np.uint8), tmp_path / "case01_seg.nii.gz")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer._type_string == "labels"
    assert np.issubdtype(np.asarray(layer.data).dtype, np.integer)
    assert_layer_places_voxels_like_file(layer, path)


def test_integer_ct_opens_as_an_image(make_napari_viewer, tmp_path):
    """An int16 CT is intensities, not labels, unless its name or metadata says otherwise."""
    ct = make_volume(dtype=np.int16, metadata={"modality": "CT"})
    path = write_volume(ct, tmp_path / "chest_ct.nii.gz")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer._type_string == "image"
    np.testing.assert_array_equal(layer.contrast_limits, [-1000.0, 1000.0])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("case01_seg.nii.gz", True),
        ("BraTS_001_seg.nii", True),
        ("aseg.mha", True),
        ("liver-mask.nrrd", True),
        ("labels.nii.gz", True),
        ("sub-01_label-tissue.nii.gz", True),
        ("gt_01.nii.gz", True),
        ("segmentation2.nii.gz", True),
        ("ct.nii.gz", False),
        ("segmental_artery.nii.gz", False),
        ("t1w.nii.gz", False),
    ],
)
def test_segmentation_names(name, expected):
    labels = make_volume(dtype=np.uint8)
    assert is_segmentation(name, labels) is expected
    assert is_segmentation(name, make_volume()) is False  # float voxels are never labels


def test_label_map_metadata_makes_labels_whatever_the_name(tmp_path):
    path = write_volume(make_volume(dtype=np.uint8, metadata={"label_map": True}), tmp_path / "result.nii.gz")
    ((_, _, layer_type),) = read_layers(str(path))
    assert layer_type == "labels"


@pytest.mark.parametrize("ext", [".nii", ".mha", ".mhd", ".nrrd", ".nhdr"])
def test_reader_accepts_every_format(tmp_path, ext):
    path = write_volume(make_volume(DIRECTIONS["oblique_2"]), tmp_path / f"scan{ext}")
    reader = napari_get_reader(str(path))
    assert callable(reader)
    ((data, _, layer_type),) = reader(str(path))
    assert layer_type == "image"
    assert data.shape == (5, 7, 9) or sorted(data.shape) == [5, 7, 9]


def test_reader_declines_other_files(tmp_path):
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    (tmp_path / "folder").mkdir()
    assert napari_get_reader(str(tmp_path / "photo.png")) is None
    assert napari_get_reader(str(tmp_path / "folder")) is None
    assert napari_get_reader([str(tmp_path / "photo.png"), str(tmp_path / "x.nii.gz")]) is None


def test_reader_opens_a_list_of_files(tmp_path):
    paths = [str(write_volume(make_volume(), tmp_path / f"s{i}.mha")) for i in range(2)]
    layers = napari_get_reader(paths)(paths)
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["s0", "s1"]


def test_open_dicom_file(make_napari_viewer, pydicom_files):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(pydicom_files / "CT_small.dcm"), plugin=PLUGIN)
    assert layer._type_string == "image"
    np.testing.assert_allclose(layer.scale[1:], (0.661468, 0.661468), atol=1e-6)


def test_open_dicom_series_folder(make_napari_viewer, tmp_path):
    from test_volume_io_dicom import write_dicom_series

    source = make_volume(dtype=np.int16)
    write_dicom_series(tmp_path / "series", source)
    assert callable(napari_get_reader(str(tmp_path / "series")))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "series"), plugin=PLUGIN)
    assert layer.data.shape == source.shape
    np.testing.assert_allclose(layer.scale, source.spacing[::-1], atol=1e-4)
    np.testing.assert_allclose(layer.translate, source.origin[::-1], atol=1e-4)


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_bad_file_raises_our_error_through_napari(make_napari_viewer, tmp_path, content):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(content)
    with pytest.raises(VolumeReadError, match="broken.nii.gz"):
        read_layers(str(path))
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as error:  # napari wraps the plugin's error in its own
        viewer.open(str(path), plugin=PLUGIN)
    ours = [e for e in exception_chain(error.value) if isinstance(e, VolumeReadError)]
    assert ours and "broken.nii.gz" in str(ours[0])  # our error, naming the file, behind napari's
    assert len(viewer.layers) == 0


def test_display_range_of_intensity_images():
    volume = make_volume()
    low, high = image_display_kwargs(volume)["contrast_limits"]
    assert volume.array.min() <= low < high <= volume.array.max()
    flat = Volume(np.zeros((2, 3, 4), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3).ravel())
    low, high = image_display_kwargs(flat)["contrast_limits"]
    assert low < high


def test_volume_to_layer_is_geometry_plus_display():
    """The one recipe for showing a volume: the geometry adapter's tuple, with contrast limits for an image."""
    volume = make_volume(DIRECTIONS["oblique_1"])
    data, kwargs, layer_type = volume_to_layer(volume, "image", "scan")
    geometry_data, geometry_kwargs, _ = volume_to_layer_data(volume, "image", "scan")
    np.testing.assert_array_equal(data, geometry_data)
    assert layer_type == "image" and kwargs["contrast_limits"] == image_display_kwargs(volume)["contrast_limits"]
    assert {k: v for k, v in kwargs.items() if k != "contrast_limits"}.keys() == geometry_kwargs.keys()
    np.testing.assert_allclose(kwargs["affine"], geometry_kwargs["affine"])
    assert volume_to_layer(volume, "image", contrast_limits=(0, 1000))[1]["contrast_limits"] == [0.0, 1000.0]
    labels = Volume(np.ones((2, 3, 4), np.uint8), (1, 1, 1), (0, 0, 0), np.eye(3).ravel(), {"label_map": True})
    _, label_kwargs, label_type = volume_to_layer(labels)
    assert label_type == "labels" and "contrast_limits" not in label_kwargs


# -- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["lps_flip_xy", "oblique_1"])
def test_save_image_layer(make_napari_viewer, tmp_path, direction):
    source = make_volume(DIRECTIONS[direction], metadata={"modality": "MR"})
    path = write_volume(source, tmp_path / "source.mha")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    for ext in (".nii.gz", ".mha", ".nrrd"):
        out = tmp_path / f"saved{ext}"
        written = layer.save(str(out), plugin=PLUGIN)
        assert [Path(p) for p in written] == [out]
        saved = read_volume(out)
        assert saved.same_grid(source)
        if ext == ".mha":
            assert (saved.spacing, saved.origin, saved.direction) == (source.spacing, source.origin, source.direction)
        np.testing.assert_array_equal(saved.array, source.array)
        assert saved.array.dtype == source.array.dtype
        assert saved.metadata["modality"] == "MR"
        assert GEOMETRY_KEY not in saved.metadata


def test_save_labels_painted_on_an_opened_scan(make_napari_viewer, tmp_path):
    source = make_volume(DIRECTIONS["oblique_improper"])
    path = write_volume(source, tmp_path / "scan.nii.gz")
    scan = read_volume(path)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(path), plugin=PLUGIN)
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="mask", **layer_kwargs_like(image))
    painted_world = []
    last = tuple(n - 1 for n in image.data.shape)
    for value, layer_index in enumerate([(0, 0, 0), last, (2, 3, 1)], start=1):
        labels.data_setitem(tuple(np.array([i]) for i in layer_index), value)
        painted_world.append((value, np.asarray(labels.data_to_world(layer_index))))
    for ext in (".nii.gz", ".mha", ".nrrd"):
        out = tmp_path / f"mask{ext}"
        labels.save(str(out), plugin=PLUGIN)
        saved = read_volume(out)
        assert saved.same_grid(scan)
        assert saved.array.dtype == np.uint8
        assert saved.metadata.get("label_map") is True
        itk = saved.to_sitk()
        for value, world in painted_world:
            assert itk[itk.TransformPhysicalPointToIndex(tuple(world[::-1]))] == value
        assert np.count_nonzero(saved.array) == 3
    # It opens again as Labels, on the scan's grid, with the same voxels in the same places.
    (reopened,) = viewer.open(str(tmp_path / "mask.nii.gz"), plugin=PLUGIN)
    assert reopened._type_string == "labels"
    np.testing.assert_allclose(reopened.affine.affine_matrix, image.affine.affine_matrix, atol=1e-5)
    np.testing.assert_allclose(reopened.translate, image.translate, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(reopened.data), np.asarray(labels.data))


def test_save_plain_napari_layers(make_napari_viewer, tmp_path):
    """Layers napari made without this plugin are saved with their scale and translate."""
    viewer = make_napari_viewer()
    image = viewer.add_image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), scale=(2.5, 0.7, 0.7), translate=(1, 2, 3))
    labels = viewer.add_labels(np.zeros((3, 4, 5), np.int32), scale=(2.5, 0.7, 0.7), translate=(1, 2, 3))
    labels.data_setitem((np.array([1]), np.array([2]), np.array([3])), 4)
    image.save(str(tmp_path / "image.mha"), plugin=PLUGIN)
    labels.save(str(tmp_path / "labels.mha"), plugin=PLUGIN)
    for name in ("image.mha", "labels.mha"):
        saved = read_volume(tmp_path / name)
        assert saved.spacing == (0.7, 0.7, 2.5)
        assert saved.origin == (3.0, 2.0, 1.0)
        assert saved.direction == tuple(np.eye(3).ravel())
    assert read_volume(tmp_path / "labels.mha").array[1, 2, 3] == 4


def test_failed_save_through_napari_leaves_the_old_file(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = write_volume(make_volume(), tmp_path / "scan.nii.gz")
    before = listing(tmp_path)
    layer = viewer.add_image(np.zeros((1, 1, 40000), np.float32))  # too long an axis for NIfTI-1
    with pytest.raises(Exception) as error:  # napari may wrap the plugin's error in its own
        layer.save(str(path), plugin=PLUGIN)
    ours = [e for e in exception_chain(error.value) if isinstance(e, MedgenError)]
    assert ours and "scan.nii.gz" in str(ours[0]), f"not our error: {error.value!r}"
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    ("layer_kwargs", "data"),
    [
        ({"rgb": True}, np.zeros((8, 9, 3), np.uint8)),
        ({}, np.zeros((2, 3, 4, 5), np.float32)),
    ],
)
def test_writer_refuses_layers_that_are_not_scalar_volumes(tmp_path, layer_kwargs, data):
    import napari

    from napari_medgen.napari_io import write_image

    layer = napari.layers.Image(data, **layer_kwargs)
    data, attributes, _ = layer.as_layer_data_tuple()
    with pytest.raises(MedgenError, match="picture.nii.gz"):
        write_image(str(tmp_path / "picture.nii.gz"), data, attributes)
    assert list(tmp_path.iterdir()) == []


def test_writer_saves_the_full_resolution_of_a_multiscale_layer(tmp_path):
    import napari

    from napari_medgen.napari_io import write_image

    levels = [np.arange(8 * 16 * 16, dtype=np.float32).reshape(8, 16, 16), np.zeros((4, 8, 8), np.float32)]
    layer = napari.layers.Image(levels, multiscale=True, scale=(2.0, 1.0, 1.0))
    data, attributes, _ = layer.as_layer_data_tuple()
    write_image(str(tmp_path / "pyramid.mha"), data, attributes)
    saved = read_volume(tmp_path / "pyramid.mha")
    np.testing.assert_array_equal(saved.array, levels[0])
    assert saved.spacing == (1.0, 1.0, 2.0)


# -- sample data --------------------------------------------------------------------------------


def test_sample_brain(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "brain_t1_tissue")
    assert len(layers) == 2
    image, labels = layers
    assert image._type_string == "image" and labels._type_string == "labels"
    assert image.data.shape == labels.data.shape and image.ndim == 3
    np.testing.assert_array_equal(image.scale, labels.scale)
    np.testing.assert_array_equal(image.translate, labels.translate)
    np.testing.assert_array_equal(image.affine.affine_matrix, labels.affine.affine_matrix)
    np.testing.assert_allclose(image.scale, (2.0, 2.0, 2.0))
    assert set(np.unique(np.asarray(labels.data)).tolist()) == {0, 1, 2, 3}
    assert np.issubdtype(np.asarray(labels.data).dtype, np.integer)
    # The brain is where MNI space says it is: world (z, y, x) LPS, origin near the anterior commissure.
    centre = np.asarray(labels.data_to_world(np.array(labels.data.shape) / 2))
    assert np.all(np.abs(centre) < 40)
    # White matter is inside the head, in the middle of the image.
    white = np.argwhere(np.asarray(labels.data) == 3).mean(axis=0)
    assert np.all(np.abs(np.asarray(labels.data_to_world(white))) < 40)
    # Image and labels leave the plugin on the same file grid, and label names ride along.
    assert image.metadata[GEOMETRY_KEY] == labels.metadata[GEOMETRY_KEY]
    assert "label_schema" in labels.metadata


def test_sample_brain_files_share_one_grid():
    from napari_medgen._paths import sample_dir
    from napari_medgen.sample_data import SAMPLE_LABELS, SAMPLE_T1

    t1 = read_volume(sample_dir() / SAMPLE_T1)
    tissue = read_volume(sample_dir() / SAMPLE_LABELS)
    assert t1.same_grid(tissue)
    assert tissue.is_label_map
    assert set(np.unique(tissue.array).tolist()) == {0, 1, 2, 3}
    np.testing.assert_allclose(t1.direction_matrix, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
