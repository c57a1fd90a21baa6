"""Inpainting a scan finer than the model's grid (issue 33): the tissue levels harmonised without a label map,
the scan's own fine detail in a sampled fill (seeded, learned only from voxels outside the region), the fill
recorded in the provenance, and voxels outside the region bit-exact at every spacing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from engine_fixtures import one_thread  # noqa: E402, F401 (fixture)
from reliability_helpers import drive  # noqa: E402
from test_inpaint_fidelity import LEVELS, norm, tissue_image  # noqa: E402
from tiny_models import make_tiny_model  # noqa: E402

from napari_medgen.engine.intensity import harmonised_map, intensity_map_for, tissue_classes_by_intensity  # noqa: E402
from napari_medgen.engine.model.loading import load_model  # noqa: E402
from napari_medgen.engine.synthesis import inpaint  # noqa: E402
from napari_medgen.engine.synthesis.fine_detail import fine_detail  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402

IDENTITY = tuple(np.eye(3).ravel())


def test_without_a_label_map_the_tissue_levels_are_still_harmonised():
    """Classes from the known voxels' intensities put each tissue of another scanner on the learned level, as a
    label map would; the region's voxels (a bright lesion here) do not count."""
    image, labels = tissue_image({1: 300.0, 2: 2100.0, 3: 2600.0}, shape=(6, 24, 24))
    known = np.ones(labels.shape, bool)
    image[:, 10:14, 15:19] = 9000.0
    known[:, 10:14, 15:19] = False
    classes = tissue_classes_by_intensity(image, known, norm())
    assert classes is not None
    agree = (classes == labels)[known & (labels > 0)]
    assert agree.mean() > 0.97
    mapped = harmonised_map(norm(), intensity_map_for(norm(), image), image, classes, known)
    assert mapped.harmonised
    for label, level in LEVELS.items():
        inside = known & (labels == int(label))
        assert np.median(mapped.forward(image[inside])) == pytest.approx(level, abs=0.03)
    uniform = np.where(labels > 0, 500.0, 0.0).astype(np.float32)
    assert tissue_classes_by_intensity(uniform, known, norm()) is None  # nothing to split


def _textured(shape=(24, 48, 48), seed=0):
    """A 1 mm 'scan': a smooth tissue pattern plus fine grain (what a 2 mm grid cannot hold)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    smooth = 600 + 200 * np.sin(yy / 9.0) * np.cos(xx / 11.0)
    return (smooth + rng.normal(0, 25, shape)).astype(np.float32)


def test_fine_detail_matches_the_scans_grain_and_never_reads_the_region():
    scan = _textured()
    region = np.zeros(scan.shape, bool)
    region[6:18, 14:34, 14:34] = True
    fill = np.full(scan.shape, 600.0, np.float32)
    detail = fine_detail(scan, region, fill, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), seed=3)
    assert detail is not None
    assert np.all(detail[~region] == 0)
    # The grain's strength: the high-pass part of white noise of std 25 at a 2 mm cut keeps most of it.
    assert 12 < detail[region].std() < 30
    np.testing.assert_array_equal(detail, fine_detail(scan, region, fill, (1.0,) * 3, (2.0,) * 3, seed=3))
    assert not np.array_equal(detail, fine_detail(scan, region, fill, (1.0,) * 3, (2.0,) * 3, seed=4))
    hidden = scan.copy()
    hidden[region] = 5000.0  # whatever the region holds is never used
    np.testing.assert_array_equal(detail, fine_detail(hidden, region, fill, (1.0,) * 3, (2.0,) * 3, seed=3))
    assert fine_detail(scan, region, fill, (2.0,) * 3, (2.0,) * 3, seed=3) is None  # no finer than the model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(str(make_tiny_model(tmp_path_factory.mktemp("fine") / "m")), device="cpu", precision="fp32")


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.9, 2.5), (4.0, 4.0, 4.0)])
def test_a_fill_on_any_grid_keeps_every_voxel_outside_and_records_its_fill(tiny, spacing):
    scan = _textured(shape=(12, 40, 40))
    image = Volume(scan, spacing, (3.0, -2.0, 1.0), IDENTITY)
    region_array = np.zeros(scan.shape, np.uint8)
    region_array[4:8, 12:26, 12:26] = 1
    region = image.with_array(region_array, metadata={})
    for estimate in ("sample", "mean"):
        (out,), _ = drive(inpaint(tiny, image, region, inpaint_estimate=estimate, steps=2, seed=1))
        outside = region_array == 0
        np.testing.assert_array_equal(out.array[outside], scan[outside])
        record = out.metadata["provenance"]
        assert record["inpaint_estimate"] == estimate
        finer = min(spacing) < tiny.card.spacing_mm[0] / 1.25
        assert record["fine_detail"] == finer  # the default: every fill on a finer scan


def test_fine_detail_can_be_left_out_and_is_repeatable(tiny):
    scan = _textured(shape=(12, 40, 40))
    image = Volume(scan, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    region_array = np.zeros(scan.shape, np.uint8)
    region_array[4:8, 12:26, 12:26] = 1
    region = image.with_array(region_array, metadata={})
    run = lambda **o: drive(inpaint(tiny, image, region, inpaint_estimate="sample", steps=2, seed=5, **o))[0][0]  # noqa: E731
    first, again, plain = run(), run(), run(fine_detail="none")
    np.testing.assert_array_equal(first.array, again.array)
    assert plain.metadata["provenance"]["fine_detail"] is False
    inside = region_array > 0
    assert np.abs(np.diff(first.array, axis=2))[inside[:, :, 1:]].mean() > np.abs(np.diff(plain.array, axis=2))[inside[:, :, 1:]].mean()


def test_without_anatomy_the_surrounding_tissue_is_continued_into_the_region():
    from napari_medgen.engine.synthesis.continued_anatomy import continued_tissues

    classes = np.full((20, 40, 40), 3, np.int64)  # white matter ...
    classes[:, :, :8] = 1  # ... with CSF along one side
    region = np.zeros(classes.shape, bool)
    region[5:15, 12:28, 14:30] = True
    hidden = classes.copy()
    hidden[region] = 1  # whatever the region's voxels were classed as does not count
    continued = continued_tissues(hidden, region, (1.0, 1.0, 1.0))
    assert np.all(continued[region] == 3)
    np.testing.assert_array_equal(continued[~region], hidden[~region])
    mixed = region.copy()
    mixed[5:15, 12:28, 4:12] = True  # a region reaching into the CSF: its CSF side stays CSF
    continued = continued_tissues(classes, mixed, (1.0, 1.0, 1.0))
    assert np.all(continued[5:15, 12:28, 4:6] == 1) and np.all(continued[5:15, 12:28, 20:30] == 3)


def test_a_strip_of_tissue_crossing_the_region_runs_on_through_it():
    from napari_medgen.engine.synthesis.continued_anatomy import continued_tissues

    classes = np.full((6, 40, 40), 3, np.int64)  # white matter ...
    classes[:, 18:22, :] = 2  # ... crossed by a 4 mm strip of grey matter
    region = np.zeros(classes.shape, bool)
    region[1:5, 8:32, 15:25] = True  # taller than wide: the strip's known ends are nearer than the white matter
    continued = continued_tissues(classes, region, (1.0, 1.0, 1.0))
    strip = region.copy()
    strip[:, :18] = strip[:, 22:] = False
    assert (continued[strip] == 2).mean() > 0.9
    assert (continued[region & ~strip] == 3).mean() > 0.9


def test_the_provenance_says_what_guided_the_fill(tiny):
    import dataclasses

    card = tiny.card.model_copy(deep=True)
    card.normalization.label_levels, card.normalization.background_label = dict(LEVELS), 0
    model = dataclasses.replace(tiny, card=card)
    array, labels = tissue_image({1: 300.0, 2: 2100.0, 3: 2600.0}, shape=(8, 24, 24))
    image = Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    region_array = np.zeros(array.shape, np.uint8)
    region_array[3:5, 8:16, 15:19] = 1
    region = image.with_array(region_array, metadata={})
    label_map = image.with_array(labels, metadata={"label_map": True})
    anatomy = lambda **o: drive(inpaint(model, image, region, steps=1, **o))[0][0].metadata["provenance"]["anatomy"]  # noqa: E731
    assert anatomy() == "continued"
    assert anatomy(continue_anatomy=False) == "none"
    assert anatomy(label_map=label_map) == "given"
