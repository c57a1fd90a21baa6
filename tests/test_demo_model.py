"""The shipped brain-t1-demo model, as a user meets it: found by name, and it follows painted anatomy.

The only tests that run the real demo weights (a few seconds: one axial slice, 10 steps). Quality
figures live in benchmarks/quality.py; these check what anyone would notice at a glance.
"""

from __future__ import annotations

import numpy as np
import pytest
from reliability_helpers import drive
from scipy.ndimage import binary_erosion, distance_transform_edt

from napari_medgen._paths import sample_dir
from napari_medgen.engine.io import read_volume
from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.model.registry import DEFAULT_MODEL, find_model
from napari_medgen.engine.orientation import to_canonical
from napari_medgen.engine.synthesis import generate
from napari_medgen.engine.synthesis.options import resolve_options


@pytest.fixture(scope="module")
def painted_slice():
    """The sample's tissue labels with a grey-matter disc painted into the white matter of one slice."""
    # Canonical orientation: a run over a slice range returns those slices in that order (as napari shows them).
    labels = to_canonical(read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz"))
    array = labels.array.copy()
    z = int(np.argmax((array == 3).sum((1, 2))))  # the slice with the most white matter
    depth = distance_transform_edt(array[z] == 3)
    cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)  # deepest inside the white matter
    yy, xx = np.mgrid[: array.shape[1], : array.shape[2]]
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 9) & (depth > 0)
    assert disc.sum() >= 25
    array[z][disc] = 2
    return labels.with_array(array), z, disc


def test_demo_model_is_the_default_and_ships_with_the_package():
    entry = find_model(None)
    assert entry.card.name == DEFAULT_MODEL == "brain-t1-demo"
    assert entry.source == "shipped" and (entry.folder / "weights.safetensors").is_file()
    assert set(entry.card.tasks) == {"generate", "inpaint"}


def test_demo_model_runs_at_its_measured_defaults():
    """A run that asks for nothing gets the card's measured sampler, steps, guidance and planes (tri-planar: each voxel
    its own noise; benchmarks/tri_planar.py chose them), and the card says why; asked for axial slices, the
    slice-noise correlation of card 2.2.0 comes back."""
    card = find_model(None).card
    options = resolve_options(None, {}, card)
    assert (options.sampler, options.steps, options.guidance, options.planes) == ("dpm++2m", 20, 1.0, "tri")
    assert options.slice_noise_correlation == 0.0 and options.slice_noise_correlation_by_label is None
    assert card.conditioning.orientations == ["axial", "coronal", "sagittal"]
    assert "DPM-Solver++ 2M" in card.sampling.reason and "tri-planar" in card.sampling.reason
    axial = resolve_options(None, {"planes": "axial"}, card)
    # Grey matter's texture changes more from slice to slice than white matter's (card 2.2.0).
    grey, white = (card.label_schema.index_of(name) for name in ("grey matter", "white matter"))
    assert axial.slice_noise_correlation == 0.7 and axial.slice_noise_correlation_by_label == {grey: 0.5, white: 0.9}


def test_demo_model_follows_painted_tissue(painted_slice):
    label_map, z, disc = painted_slice
    model = load_model(None, device="cpu")
    (result,), _ = drive(generate(model, label_map, steps=10, seed=3, preview_every=0, slice_range=(z, z + 1)))
    image, labels = result.array[0], label_map.array[z]
    mean = {k: float(image[binary_erosion(labels == k)].mean()) for k in (1, 2, 3)}
    # T1 contrast: CSF darkest, white matter brightest, with a clear margin between them.
    assert mean[1] < mean[2] < mean[3], mean
    assert mean[3] - mean[2] > 0.1 * (mean[3] - mean[1]), mean
    # The painted grey-matter disc is darker than the white matter around it.
    ring = binary_erosion(labels == 3) & ~disc
    near = np.zeros_like(ring)
    cy, cx = np.argwhere(disc).mean(0).round().astype(int)
    near[max(cy - 8, 0) : cy + 9, max(cx - 8, 0) : cx + 9] = True
    assert image[disc].mean() < image[ring & near].mean() - 0.5 * (mean[3] - mean[2]), (image[disc].mean(), image[ring & near].mean())
    # Background stays background.
    assert np.abs(image[labels == 0]).mean() < 0.1 * mean[3]
