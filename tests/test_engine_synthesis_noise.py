"""Sampling options that shape the noise and the guidance: slice-noise correlation (per run, per label from
the card, overridden by the user) and guidance rescale. No Qt, no napari (fixtures: `engine_fixtures`).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from engine_fixtures import ORIGIN, SPACING, make_labels
from engine_fixtures import model_folders, models, one_thread  # noqa: F401 (fixtures)
from reliability_helpers import drive

from napari_medgen.engine.errors import MedgenError
from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.synthesis import generate
from napari_medgen.engine.volume import Volume


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
    array = np.repeat(make_labels(shape=(1, 20, 24)).array, 6, axis=0)
    labels = Volume(array, SPACING, ORIGIN, tuple(np.eye(3).ravel()), {"label_map": True})

    def slice_to_slice(correlation: float) -> float:
        result, _ = drive(generate(models["2d"], labels, steps=3, seed=2, slice_noise_correlation=correlation))
        image = result[0].array
        return float(np.abs(np.diff(image, axis=0)).mean())

    assert slice_to_slice(1.0) < 0.5 * slice_to_slice(0.0)


def test_guidance_rescale_changes_a_guided_result_and_is_recorded(models):
    labels = make_labels()
    plain, _ = drive(generate(models["2d"], labels, steps=2, seed=0, guidance=3.0))
    rescaled, _ = drive(generate(models["2d"], labels, steps=2, seed=0, guidance=3.0, guidance_rescale=0.7))
    assert not np.array_equal(plain[0].array, rescaled[0].array)
    assert rescaled[0].metadata["provenance"]["guidance_rescale"] == 0.7
    with pytest.raises(MedgenError, match="guidance_rescale"):
        generate(models["2d"], labels, steps=2, guidance_rescale=1.5)
    with pytest.raises(MedgenError, match="slice_noise_correlation"):
        generate(models["2d"], labels, steps=2, slice_noise_correlation=-0.1)
