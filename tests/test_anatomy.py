"""Labels from a scan (issue 20): registration, the grid of the result, cancel, missing atlas, and use by generate.

Everything runs on small volumes (the shipped atlas down-sampled to 6 mm, or a phantom), a few seconds each.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from anatomy_fixtures import FAST, dice, drive, model_with_atlas, moved, small_atlas  # noqa: F401 (fixtures)
from scipy.spatial.transform import Rotation

from napari_medgen.engine.anatomy import AnatomyOptions, NoAtlasError, atlas_for, labels_from_scan, registration
from napari_medgen.engine.errors import InvalidVolumeError
from napari_medgen.engine.model.registry import find_model
from napari_medgen.engine.resample import Grid
from napari_medgen.engine.volume import Volume


def known_affine(
    centre: np.ndarray, degrees=(8.0, -5.0, 6.0), scale=1.06, shift=(6.0, -8.0, 5.0)
) -> sitk.AffineTransform:
    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(float(v) for v in centre))
    transform.SetMatrix(tuple((Rotation.from_euler("xyz", degrees, degrees=True).as_matrix() * scale).ravel()))
    transform.SetTranslation(shift)
    return transform


def test_registration_recovers_a_known_affine():
    """A phantom of three ellipsoids (different intensities) at 3 mm moved by a known affine (rotation, scale,
    shift): recovered to under a third of a voxel on average and two thirds at worst."""
    shape, spacing = (40, 40, 40), 3.0
    z, y, x = np.meshgrid(*[(np.arange(n) - n / 2) * spacing for n in shape], indexing="ij")
    phantom = 100.0 * ((x / 45) ** 2 + (y / 38) ** 2 + (z / 30) ** 2 < 1)
    phantom += 80.0 * (((x - 12) / 14) ** 2 + ((y + 8) / 9) ** 2 + ((z - 5) / 11) ** 2 < 1)
    phantom += 50.0 * (((x + 15) / 8) ** 2 + ((y - 14) / 12) ** 2 + ((z + 9) / 7) ** 2 < 1)
    atlas = Volume(phantom.astype(np.float32), (spacing,) * 3, (-60.0, -60.0, -60.0), tuple(np.eye(3).ravel()))
    truth = known_affine(np.zeros(3))
    scan_image = sitk.Resample(atlas.to_sitk(), atlas.to_sitk(), truth, sitk.sitkLinear, 0.0)
    options = AnatomyOptions(
        working_spacing_mm=spacing, sampling_fraction=0.5, similarity_iterations=150, affine_iterations=150
    )
    start = sitk.Similarity3DTransform()
    start.SetCenter((0.0, 0.0, 0.0))
    _, found = drive(registration.similarity_then_affine(scan_image, atlas.to_sitk(), start, options, 0, 10, 10))
    points = np.argwhere(phantom > 0)[::50][:, ::-1] * spacing - 60.0
    error = [
        np.linalg.norm(np.subtract(found.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p)))) for p in points
    ]
    assert np.mean(error) < 1.0 and np.max(error) < 2.0, (
        f"mean error {np.mean(error):.2f} mm, largest {np.max(error):.2f} mm"
    )


def test_labels_land_on_an_oblique_scan_grid(model_with_atlas, small_atlas):
    """The atlas under a known affine on an oblique, anisotropic grid: the labels have that exact grid and fit the
    truth; progress steps rise to 100 through every stage."""
    t1, _labels = small_atlas
    direction = Rotation.from_euler("xyz", (20.0, -10.0, 15.0), degrees=True).as_matrix()
    centre = t1.index_to_physical((np.array(t1.shape[::-1]) - 1) / 2)
    size = np.array([44, 50, 42])
    grid = Grid(
        tuple(int(v) for v in size),
        (4.5, 4.0, 5.0),
        tuple(centre - direction @ (size / 2 * np.array([4.5, 4.0, 5.0]))),
        tuple(direction.ravel()),
    )
    scan, truth = moved(
        small_atlas, known_affine(centre, degrees=(5.0, 4.0, -6.0), scale=1.04, shift=(4.0, 3.0, -5.0)), grid
    )
    scan.metadata["description"] = "oblique test scan"
    events, result = drive(labels_from_scan(scan, str(model_with_atlas), **FAST))
    assert result.same_grid(scan) and result.shape == scan.shape
    assert result.array.dtype == np.uint8 and set(np.unique(result.array)) <= {0, 1, 2, 3}
    assert result.metadata["label_map"] is True and result.metadata["anatomy"]["model"] == "tiny-2d"
    assert result.metadata["anatomy"]["scan_sha256"] == scan.content_hash()
    assert dice(result.array > 0, truth.array > 0) > 0.85
    steps = [e.step for e in events]
    assert steps == sorted(steps) and steps[-1] == events[-1].total == 100
    said = " ".join(e.message for e in events)
    assert all(f"{stage}:" in said for stage in ("similarity", "affine", "deformable", "mixture")), said[:300]


def test_closing_the_generator_stops_the_work(model_with_atlas, small_atlas):
    """Closed in the middle of a registration stage: no result, no worker thread left, promptly."""
    scan, _ = moved(small_atlas, sitk.Transform(3, sitk.sitkIdentity), Grid.of(small_atlas[0]))
    run = labels_from_scan(
        scan, str(model_with_atlas), **{**FAST, "similarity_iterations": 5000, "affine_iterations": 5000}
    )
    for event in run:
        if event.message.startswith("similarity:"):
            break
    else:
        pytest.fail("the run ended before its similarity stage reported an iteration")
    started = time.perf_counter()
    run.close()
    assert time.perf_counter() - started < 5
    assert not [t for t in threading.enumerate() if t.name.startswith("medgen-")]
    with pytest.raises(StopIteration):
        next(run)


def test_a_model_without_atlas_is_a_clear_error(tiny_model: Path, oblique_volume):
    """Refused when called, before any work: the message names the model and what to do."""
    with pytest.raises(NoAtlasError, match="tiny-2d names no atlas.*label map made elsewhere"):
        labels_from_scan(oblique_volume, str(tiny_model))
    with pytest.raises(NoAtlasError):
        atlas_for(find_model(str(tiny_model)).card)


def test_the_demo_model_names_the_shipped_atlas():
    atlas = atlas_for(find_model("brain-t1-demo").card)
    assert atlas.image.name == "mni152_t1_2mm.nii.gz" and atlas.labels.name == "mni152_tissue_labels_2mm.nii.gz"
    assert atlas.image.is_file() and atlas.labels.is_file()


def test_inputs_are_checked_at_once(model_with_atlas, small_atlas):
    with pytest.raises(InvalidVolumeError, match="label map"):
        labels_from_scan(
            small_atlas[1].with_array(small_atlas[1].array, metadata={"label_map": True}), str(model_with_atlas)
        )
    flat = Volume(small_atlas[0].array[:1], small_atlas[0].spacing, small_atlas[0].origin, small_atlas[0].direction)
    with pytest.raises(InvalidVolumeError, match="3-D"):
        labels_from_scan(flat, str(model_with_atlas))


def test_the_labels_feed_generate(model_with_atlas, small_atlas):
    """What labels_from_scan returns is a label map `generate` accepts, and the image comes back on its grid."""
    from napari_medgen.engine.synthesis import generate

    scan, _ = moved(
        small_atlas,
        known_affine(np.zeros(3), degrees=(3.0, 0.0, 0.0), scale=1.0, shift=(3.0, 0.0, 0.0)),
        Grid.of(small_atlas[0]),
    )
    _, labels = drive(labels_from_scan(scan, str(model_with_atlas), **{**FAST, "deformable": "none"}))
    _, images = drive(generate(str(model_with_atlas), labels, steps=2, slice_range=(5, 7)))
    assert len(images) == 1 and images[0].shape[0] == 2 and np.isfinite(images[0].array).all()


def test_an_implausible_brain_size_is_said():
    from napari_medgen.engine.anatomy.result import plausibility

    assert plausibility(1.1) == ""
    assert "2.5 times the atlas" in plausibility(2.5) and "check the labels" in plausibility(0.3)


def test_the_bspline_alternative_runs(model_with_atlas, small_atlas):
    """The B-spline on mutual information (instead of demons), briefly: labels on the grid, the brain found."""
    truth_transform = known_affine(np.zeros(3), degrees=(0.0, 4.0, 0.0), scale=1.0, shift=(0.0, 4.0, 0.0))
    scan, truth = moved(small_atlas, truth_transform, Grid.of(small_atlas[0]))
    options = {**FAST, "deformable": "bspline", "bspline_iterations": 5, "bspline_grid_mm": 36.0}
    events, result = drive(labels_from_scan(scan, str(model_with_atlas), **options))
    assert result.same_grid(scan) and dice(result.array > 0, truth.array > 0) > 0.85
    assert any(e.message.startswith("deformable:") for e in events)
