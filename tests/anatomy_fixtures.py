"""Fixtures and helpers of the labels-from-a-scan tests: the shipped atlas at 6 mm, a tiny model that names it, and
scans made from it through a known transform."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from reliability_helpers import drive as drive_to_end

from napari_medgen._paths import sample_dir
from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.resample import Grid, grid_at_spacing, resample
from napari_medgen.engine.volume import Volume

ATLAS_MM = 6.0
# Small and quick: the registration sees the 6 mm atlas at 6 mm; few iterations are enough there.
FAST = {
    "working_spacing_mm": ATLAS_MM,
    "similarity_iterations": 40,
    "affine_iterations": 40,
    "demons_iterations": 20,
    "em_iterations": 6,
    "sampling_fraction": 0.3,
}


def drive(gen):
    """Run a generator to its end: (events, returned value), the order these tests read."""
    value, events = drive_to_end(gen)
    return events, value


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


@pytest.fixture(scope="module")
def small_atlas() -> tuple[Volume, Volume]:
    """The shipped atlas (ICBM152 T1 and tissue labels) at 6 mm."""
    t1 = read_volume(sample_dir() / "mni152_t1_2mm.nii.gz")
    labels = read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz")
    grid = grid_at_spacing(t1, (ATLAS_MM,) * 3)
    smooth = t1.with_array(
        sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.Cast(t1.to_sitk(), sitk.sitkFloat32), 2.0))
    )
    return resample(smooth, grid, "linear"), resample(labels, grid, "nearest")


@pytest.fixture
def model_with_atlas(tmp_path: Path, small_atlas, monkeypatch) -> Path:
    """The tiny test model, with the 6 mm atlas in its folder, named by its card's atlas field."""
    from tiny_models import make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny-2d")
    write_volume(small_atlas[0], folder / "atlas_t1.nii.gz")
    write_volume(small_atlas[1].with_array(small_atlas[1].array.astype(np.uint8)), folder / "atlas_labels.nii.gz")
    raw = json.loads((folder / "model.json").read_text())
    raw["atlas"] = {"image": "atlas_t1.nii.gz", "labels": "atlas_labels.nii.gz"}
    (folder / "model.json").write_text(json.dumps(raw))
    return folder


def moved(atlas: tuple[Volume, Volume], transform: sitk.Transform, grid: Grid) -> tuple[Volume, Volume]:
    """The atlas image and labels seen on `grid` through `transform` (grid point -> atlas point)."""
    out = []
    for volume, interpolator in ((atlas[0], sitk.sitkLinear), (atlas[1], sitk.sitkNearestNeighbor)):
        image = sitk.Resample(
            volume.to_sitk(), list(grid.size), transform, interpolator, grid.origin, grid.spacing, grid.direction, 0
        )
        out.append(Volume.from_sitk(image))
    return out[0], out[1]
