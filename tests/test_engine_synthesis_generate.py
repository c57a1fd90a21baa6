"""Generation end to end on tiny models: the result's geometry (2-D and 3-D models, oblique and flipped
volumes, sliding windows), each conditioning route, guidance, reproducibility (seeds, batch size, variants,
slice ranges), previews, provenance and the written result. No Qt, no napari (fixtures: `engine_fixtures`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from engine_fixtures import (
    OBLIQUE_FLIPPED,
    PERMUTED_FLIPPED,
    CallCounter,
    assert_same_geometry,
    assert_same_image,
    axial_slices,
    make_image,
    make_labels,
    make_region,
    with_oracle,
)
from engine_fixtures import model_folders, models, one_thread  # noqa: F401 (fixtures)
from reliability_helpers import drive

from napari_medgen.engine.errors import InvalidVolumeError, MedgenError
from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.orientation import to_canonical
from napari_medgen.engine.synthesis import generate, inpaint


# -- generation: geometry --------------------------------------------------------------------------
@pytest.mark.parametrize("direction", [PERMUTED_FLIPPED, OBLIQUE_FLIPPED], ids=["permuted-flipped", "oblique"])
def test_2d_model_on_3d_label_map_keeps_exact_geometry(models, direction):
    labels = make_labels(direction=direction)
    results, events = drive(generate(models["2d"], labels, steps=3, seed=1))
    assert len(results) == 1
    result = results[0]
    assert_same_geometry(result, labels)
    assert result.array.dtype == np.float32
    assert np.isfinite(result.array).all()
    assert events[-1].step == events[-1].total == len(events)


def test_2d_model_on_2d_label_map(models):
    labels = make_labels(shape=(20, 24), direction=np.array([[-1.0, 0.0], [0.0, 1.0]]))
    results, _ = drive(generate(models["2d"], labels, steps=3, seed=1))
    assert_same_geometry(results[0], labels)
    assert results[0].ndim == 2


def test_3d_model_with_sliding_windows_keeps_exact_geometry(models):
    # 40 x 2 mm = 80 mm = 20 voxels at the model's 4 mm: more than its 16-voxel tile.
    labels = make_labels(shape=(8, 20, 40), spacing=(2.0, 1.1, 3.0))
    counter = CallCounter(models["3d"])
    try:
        results, events = drive(generate(models["3d"], labels, steps=3, seed=1))
    finally:
        counter.remove()
    assert_same_geometry(results[0], labels)
    assert np.isfinite(results[0].array).all()
    assert len(events) == 3
    assert counter.count > 3  # more than one window per step


def test_3d_model_refuses_2d_label_map(models):
    with pytest.raises(InvalidVolumeError, match="3-D"):
        drive(generate(models["3d"], make_labels(shape=(20, 24), direction=np.eye(2)), steps=2))


@pytest.mark.parametrize(
    "direction, spacing",
    # Permuted: array axis y runs along S, so its 3 mm are the axial spacing. Oblique: isotropic.
    [(PERMUTED_FLIPPED, (1.0, 3.0, 1.0)), (OBLIQUE_FLIPPED, (1.0, 1.0, 1.0)), (np.eye(3), (1.0, 1.0, 2.5))],
    ids=["permuted-flipped", "oblique", "identity"],
)
def test_oracle_2d_result_lines_up_with_the_labels(models, direction, spacing):
    """Where the model's spacing equals the scan's, the result is exactly the oracle's image of the
    label map: any slip of orientation, flip or slice order would show."""
    labels = make_labels(shape=(5, 12, 16), spacing=spacing, direction=direction)
    oracle = with_oracle(models["2d-1mm"])
    results, _ = drive(generate(oracle, labels, steps=3, seed=0))
    expected = labels.array.astype(np.float32) * 1000.0 / 3.0
    np.testing.assert_allclose(results[0].array, expected, atol=1e-2)


def test_oracle_3d_result_lines_up_through_sliding_windows(models):
    labels = make_labels(shape=(10, 20, 34), spacing=(1.0, 1.0, 1.0), direction=PERMUTED_FLIPPED)
    oracle = with_oracle(models["3d-1mm"])
    results, _ = drive(generate(oracle, labels, steps=3, seed=0))
    expected = labels.array.astype(np.float32) * 1000.0 / 3.0
    np.testing.assert_allclose(results[0].array, expected, atol=1e-2)


@pytest.mark.parametrize("kind", ["spade", "controlnet"])
def test_other_conditioning_routes_follow_the_labels(models, kind):
    """SPADE and ControlNet take the labels outside the input stack: the same seed with other labels must give
    another image (where the labels changed), and the same labels the same image."""
    labels = make_labels()
    changed = labels.array.copy()
    changed[:, :10] = (changed[:, :10] + 2) % 4  # one half of every slice gets other anatomy
    other = labels.with_array(changed)
    first, _ = drive(generate(models[kind], labels, steps=2, seed=0, guidance=1.0))
    again, _ = drive(generate(models[kind], labels, steps=2, seed=0, guidance=1.0))
    relabelled, _ = drive(generate(models[kind], other, steps=2, seed=0, guidance=1.0))
    assert_same_geometry(first[0], labels)
    assert np.isfinite(first[0].array).all()
    np.testing.assert_array_equal(first[0].array, again[0].array)
    difference = np.abs(first[0].array - relabelled[0].array)
    assert difference.max() > 1.0, f"{kind}: the labels made no difference to the image"


def test_guidance_runs_both_passes_and_changes_the_result(models):
    labels = make_labels()
    counter = CallCounter(models["2d"])
    try:
        guided, _ = drive(generate(models["2d"], labels, steps=2, seed=0, guidance=3.0, batch_size=6))
        # Conditional and unconditional passes in one batch: twice the (axial) slices, every step.
        assert counter.batch == 2 * 2 * axial_slices(labels)
    finally:
        counter.remove()
    plain, _ = drive(generate(models["2d"], labels, steps=2, seed=0, batch_size=6))
    assert not np.array_equal(guided[0].array, plain[0].array)


def test_guidance_with_a_3d_model_and_sliding_windows(models):
    labels = make_labels(shape=(8, 20, 40), spacing=(2.0, 1.1, 3.0))
    guided, _ = drive(generate(models["3d"], labels, steps=2, seed=0, guidance=2.0))
    plain, _ = drive(generate(models["3d"], labels, steps=2, seed=0))
    assert_same_geometry(guided[0], labels)
    assert np.isfinite(guided[0].array).all()
    assert not np.array_equal(guided[0].array, plain[0].array)


def test_bf16_model_generates(model_folders):
    model = load_model(model_folders["2d"], device="cpu", precision="bf16")
    results, _ = drive(generate(model, make_labels(), steps=2, seed=0))
    assert results[0].array.dtype == np.float32
    assert np.isfinite(results[0].array).all()


# -- generation: reproducibility -------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["dpm++2m", "ddim", "ddpm"])
def test_same_seed_same_result_other_seed_other_result(models, sampler):
    labels = make_labels()
    a, _ = drive(generate(models["2d"], labels, steps=3, seed=5, sampler=sampler))
    b, _ = drive(generate(models["2d"], labels, steps=3, seed=5, sampler=sampler))
    c, _ = drive(generate(models["2d"], labels, steps=3, seed=6, sampler=sampler))
    assert np.array_equal(a[0].array, b[0].array)
    assert not np.array_equal(a[0].array, c[0].array)


def test_3d_same_seed_same_result(models):
    labels = make_labels(shape=(8, 20, 40), spacing=(2.0, 1.1, 3.0))
    a, _ = drive(generate(models["3d"], labels, steps=2, seed=5))
    b, _ = drive(generate(models["3d"], labels, steps=2, seed=5))
    c, _ = drive(generate(models["3d"], labels, steps=2, seed=6))
    assert np.array_equal(a[0].array, b[0].array)
    assert not np.array_equal(a[0].array, c[0].array)


def test_batch_size_does_not_change_the_result(models):
    """Noise is drawn per slice from the seed, not per batch: the batch size changes nothing but rounding."""
    labels = make_labels()
    one, events_one = drive(generate(models["2d"], labels, steps=3, seed=2, batch_size=1))
    four, events_four = drive(generate(models["2d"], labels, steps=3, seed=2, batch_size=4))
    assert_same_image(one[0].array, four[0].array)
    other_seed, _ = drive(generate(models["2d"], labels, steps=3, seed=3, batch_size=4))
    assert np.abs(other_seed[0].array - four[0].array).max() > 1.0
    n = axial_slices(labels)
    assert events_one[-1].total == 3 * n and events_four[-1].total == 3 * -(-n // 4)


def test_variants_use_consecutive_seeds(models):
    labels = make_labels()
    results, events = drive(generate(models["2d"], labels, steps=2, seed=10, variants=2))
    assert len(results) == 2
    assert [r.metadata["provenance"]["seed"] for r in results] == [10, 11]
    assert [r.metadata["provenance"]["variant"] for r in results] == [0, 1]
    assert {e.variant for e in events} == {0, 1}
    assert not np.array_equal(results[0].array, results[1].array)
    alone, _ = drive(generate(models["2d"], labels, steps=2, seed=11))
    assert np.array_equal(results[1].array, alone[0].array)


def test_provenance_names_model_weights_sampler_and_inputs(models):
    labels = make_labels()
    results, _ = drive(generate(models["2d"], labels, steps=3, seed=4, sampler="ddim"))
    meta = results[0].metadata
    assert meta["synthetic"] is True
    prov = meta["provenance"]
    assert prov["model"] == "tiny-2d"
    assert prov["weights_sha256"] == models["2d"].weights_sha256 and len(prov["weights_sha256"]) == 64
    assert prov["sampler"] == "ddim" and prov["steps"] == 3 and prov["seed"] == 4
    assert prov["task"] == "generate"
    assert prov["inputs_sha256"] == {"label_map": labels.content_hash()}
    json.dumps(meta)  # serialisable, for the sidecar


def test_slice_range_covers_just_those_slices_and_matches_the_full_run(models):
    labels = make_labels()
    full, _ = drive(generate(models["2d"], labels, steps=3, seed=3, batch_size=2))
    part, events = drive(generate(models["2d"], labels, steps=3, seed=3, batch_size=2, slice_range=(2, 4)))
    canonical_labels = to_canonical(labels)
    canonical_full = to_canonical(full[0])
    result = part[0]
    assert result.shape == (2,) + canonical_labels.shape[1:]
    # On the canonical grid of those slices ...
    expected_origin = canonical_labels.index_to_physical(np.array([0.0, 0.0, 2.0]))
    np.testing.assert_allclose(result.origin, expected_origin, atol=1e-9)
    np.testing.assert_allclose(result.spacing, canonical_labels.spacing)
    np.testing.assert_allclose(result.direction, canonical_labels.direction)
    # ... and the same image as those slices of a run over the whole volume.
    assert_same_image(result.array, canonical_full.array[2:4])
    assert events[-1].total == 3 * 1
    assert result.metadata["provenance"]["seed"] == 3


def test_bad_slice_range(models):
    with pytest.raises(MedgenError, match="slice range"):
        drive(generate(models["2d"], make_labels(), steps=2, slice_range=(15, axial_slices(make_labels()) + 1)))


def test_previews_have_the_output_geometry(models):
    labels = make_labels()
    n = axial_slices(labels)
    _, events = drive(generate(models["2d"], labels, steps=4, seed=0, batch_size=n, preview_every=2))
    previews = [e.preview for e in events if e.preview is not None]
    assert len(previews) == 2
    for preview in previews:
        assert_same_geometry(preview, labels)
        assert preview.array.dtype == np.float32


def test_inpainting_previews_of_an_integer_image_are_float32(models):
    image = make_image(np.int16)
    _, events = drive(inpaint(models["2d"], image, make_region(image), steps=2, seed=0, preview_every=1))
    previews = [e.preview for e in events if e.preview is not None]
    assert previews
    for preview in previews:
        assert_same_geometry(preview, image)
        assert preview.array.dtype == np.float32


# -- writing a result ------------------------------------------------------------------------------
def test_written_result_carries_its_provenance(models, tmp_path):
    import SimpleITK as sitk

    from napari_medgen.engine.io import read_volume, sidecar_path, write_volume

    labels = make_labels()
    results, _ = drive(generate(models["2d"], labels, steps=2, seed=21))
    path = write_volume(results[0], tmp_path / "synthetic.nii.gz")
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["synthetic"] is True
    assert sidecar["provenance"] == results[0].metadata["provenance"]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert reader.GetMetaData("descrip").startswith("SYNTHETIC")
    assert "tiny-2d" in reader.GetMetaData("descrip")
    back = read_volume(path)
    assert back.metadata["synthetic"] is True
    assert back.metadata["provenance"]["seed"] == 21
    assert back.same_grid(labels)
