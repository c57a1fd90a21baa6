"""Inpainting on another scanner's image: intensity harmonisation, the posterior-mean estimate for thin
regions, and the result meeting the known image on the region's border."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

sys.path.insert(0, str(Path(__file__).parent))
from engine_fixtures import one_thread  # noqa: E402, F401 (fixture)
from tiny_models import randomize_zero_layers, tiny_card  # noqa: E402

from napari_medgen.engine.errors import MedgenError  # noqa: E402
from napari_medgen.engine.intensity import IntensityMap, harmonised_map, intensity_map_for  # noqa: E402
from napari_medgen.engine.model.card_sections import IntensityNormalization  # noqa: E402
from napari_medgen.engine.model.loading import load_model  # noqa: E402
from napari_medgen.engine.model.networks import build_networks  # noqa: E402
from napari_medgen.engine.model.weights import save_model  # noqa: E402
from napari_medgen.engine.synthesis import inpaint  # noqa: E402
from napari_medgen.engine.synthesis.api import region_thickness_mm  # noqa: E402
from napari_medgen.engine.synthesis.tasks import interpolated_near_border, matched_to_border  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402

LEVELS = {"1": -0.1, "2": 0.45, "3": 0.85}
IDENTITY = tuple(np.eye(3).ravel())


def tissue_image(medians: dict[int, float], shape=(4, 24, 24), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels in three bands (CSF, grey, white) inside a background frame, and an image with those medians."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    labels[:, 4:20, 4:9], labels[:, 4:20, 9:14], labels[:, 4:20, 14:20] = 1, 2, 3
    image = np.zeros(shape, np.float32)
    for label, value in medians.items():
        inside = labels == label
        image[inside] = value + rng.normal(0, 0.02 * value, inside.sum())
    return image, labels


def norm(levels=LEVELS) -> IntensityNormalization:
    return IntensityNormalization(kind="mri_percentile", background=0.0, label_levels=levels)


def test_harmonised_map_puts_each_tissue_of_another_scanner_on_the_learned_level():
    # Another scanner: same order of tissues, other scale and contrast (grey closer to white).
    image, labels = tissue_image({1: 300.0, 2: 2100.0, 3: 2600.0})
    fallback = intensity_map_for(norm(), image)
    mapped = harmonised_map(norm(), fallback, image, labels)
    assert mapped.harmonised
    for label, level in LEVELS.items():
        assert np.median(mapped.forward(image[labels == int(label)])) == pytest.approx(level, abs=0.02)
    assert float(mapped.forward(np.array([0.0]))[0]) == pytest.approx(-1.0)  # the background stays -1
    values = np.linspace(-500, 5000, 50, dtype=np.float32)  # beyond the knots too
    np.testing.assert_allclose(mapped.inverse(mapped.forward(values)), values, rtol=1e-4, atol=0.5)
    assert np.all(np.diff(mapped.forward(values)) > 0)  # monotone: no intensity folds onto another


def test_harmonised_map_uses_only_known_voxels():
    image, labels = tissue_image({1: 300.0, 2: 2100.0, 3: 2600.0})
    known = np.ones(labels.shape, bool)
    corrupted = image.copy()
    corrupted[:, 4:20, 9:12] = 9000.0  # the region (in grey matter): whatever is there must not count
    known[:, 4:20, 9:12] = False
    fallback = intensity_map_for(norm(), corrupted)
    partly = harmonised_map(norm(), fallback, corrupted, labels, known)
    assert partly.harmonised
    assert not harmonised_map(norm(), fallback, corrupted, labels).harmonised  # counted, grey would pass white
    grey_known = known & (labels == 2)
    assert np.median(partly.forward(corrupted[grey_known])) == pytest.approx(LEVELS["2"], abs=0.02)


def test_harmonised_map_falls_back_when_the_contrast_is_reversed_or_unknown():
    t2_like, labels = tissue_image({1: 2500.0, 2: 1200.0, 3: 800.0})  # CSF bright: a T2 on a T1 model
    fallback = intensity_map_for(norm(), t2_like)
    assert harmonised_map(norm(), fallback, t2_like, labels) == fallback
    assert harmonised_map(norm(None), fallback, t2_like, labels) == fallback  # a card without levels
    only_csf = np.where(labels == 1, 1, 0).astype(np.uint8)
    assert harmonised_map(norm(), fallback, t2_like, only_csf) == fallback  # one tissue: no map to fit
    ct = IntensityNormalization(kind="ct_window", window_min=-100, window_max=200, label_levels=LEVELS)
    assert harmonised_map(ct, IntensityMap(-100, 200), t2_like, labels) == IntensityMap(-100, 200)


def test_region_thickness_is_how_far_the_fill_reaches_from_the_known_image():
    shape, spacing = (20, 40, 40), (1.0, 1.0, 1.0)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    ball = (((zz - 10) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2) <= 36).astype(np.uint8)  # 12 mm across
    stripe = np.zeros(shape, np.uint8)
    stripe[:, 18:22, :] = 1  # 4 mm thick, 40 mm long
    assert region_thickness_mm(Volume(ball, spacing, (0, 0, 0), IDENTITY)) == pytest.approx(12, abs=2.5)
    assert region_thickness_mm(Volume(stripe, spacing, (0, 0, 0), IDENTITY)) == pytest.approx(4, abs=2.5)
    coarse = Volume(stripe, (2.0, 2.0, 2.0), (0, 0, 0), IDENTITY)
    assert region_thickness_mm(coarse) == pytest.approx(2 * region_thickness_mm(Volume(stripe, spacing, (0, 0, 0), IDENTITY)))


def test_matched_to_border_removes_the_step_at_the_seam_and_keeps_the_inside_detail():
    known = np.tile(np.linspace(100, 300, 32, dtype=np.float32), (2, 32, 1))
    region = np.zeros(known.shape, bool)
    region[:, 8:24, 8:24] = True
    detail = np.zeros_like(known)
    detail[:, 14:18, 14:18] = 80.0  # a structure the network put deep inside
    generated = known + 40.0 + detail  # the network's scale is off by 40 everywhere
    corrected = matched_to_border(generated, known, region)
    inner_ring = region & ~np.stack([binary_erosion(s) for s in region])
    assert np.abs(corrected - known)[inner_ring].mean() < 8.0  # was 40: no step at the seam
    np.testing.assert_array_equal(corrected[~region], generated[~region])  # outside: untouched here
    centre_contrast = corrected[:, 15, 15] - corrected[:, 15, 12]
    assert np.all(centre_contrast > 60.0)  # the inner structure's contrast survives


def test_near_the_border_the_fill_follows_the_known_tissue_and_deep_inside_the_network():
    # Known tissue: a smooth ramp. The network's estimate is 50 too bright everywhere inside the region.
    known = np.tile(np.linspace(100, 300, 40, dtype=np.float32), (1, 40, 1))
    region = np.zeros(known.shape, bool)
    region[:, 8:32, 8:32] = True
    estimate = known + 50.0
    garbage = known.copy()
    garbage[region] = 1e6  # what the image held inside the region must never be used
    blended = interpolated_near_border(estimate, garbage, region, (2.0, 2.0), reach_mm=2.0)
    outer = region & ~np.stack([binary_erosion(s) for s in region])
    assert np.abs(blended - known)[outer].max() < 1.0  # the ramp's continuation, not the estimate's offset
    np.testing.assert_allclose(blended[:, 20, 20], estimate[:, 20, 20], atol=0.5)  # 24 mm in: the network's
    np.testing.assert_array_equal(blended[~region], estimate[~region])

    # Air beyond the anatomy on one side says nothing of the tissue next to it.
    background = np.zeros(known.shape, bool)
    background[:, :, :8] = True
    air = known.copy()
    air[background] = 0.0
    beside_air = interpolated_near_border(estimate, air, region, (2.0, 2.0), 2.0, background)
    assert beside_air[0, 20, 8] > 0.9 * known[0, 20, 8]  # not pulled towards the air's 0
    ignoring = interpolated_near_border(estimate, air, region, (2.0, 2.0), 2.0)
    assert ignoring[0, 20, 8] < beside_air[0, 20, 8]


def test_the_mean_records_and_applies_its_border_interpolation(tmp_path, scan_and_labels):
    model = load_model(v_model(tmp_path / "v"))
    image, labels = scan_and_labels
    region = ball_region(image, 5)
    common = dict(seed=2, preview_every=0, inpaint_estimate="mean")
    plain = run(inpaint(model, image, region, labels, border_interpolation_mm=0.0, **common))[0]
    blended = run(inpaint(model, image, region, labels, **common))[0]
    assert blended.metadata["provenance"]["border_interpolation_mm"] == 2.0
    assert plain.metadata["provenance"]["border_interpolation_mm"] == 0.0
    inside = region.array > 0
    np.testing.assert_array_equal(blended.array[~inside], image.array[~inside])
    truth = image.array[inside]
    # The tiny random network knows nothing of the tissue; next to it the interpolation does.
    assert np.abs(blended.array[inside] - truth).mean() < np.abs(plain.array[inside] - truth).mean()
    sample = run(inpaint(model, image, region, labels, seed=2, steps=2, preview_every=0, inpaint_estimate="sample"))[0]
    assert "border_interpolation_mm" not in sample.metadata["provenance"]  # a draw keeps its own texture


def test_a_negative_border_interpolation_is_refused(scan_and_labels):
    image, labels = scan_and_labels
    with pytest.raises(MedgenError, match="border_interpolation_mm"):
        inpaint(None, image, ball_region(image, 3), labels, border_interpolation_mm=-1.0)


def v_model(folder: Path) -> Path:
    card = tiny_card(name="tiny-v", spacing_mm=2.0)
    card.scheduler.prediction_type = "v_prediction"
    torch.manual_seed(0)
    networks = build_networks(card)
    for network in networks.values():
        randomize_zero_layers(network)
    return save_model(card, networks, folder)


@pytest.fixture(scope="module")
def scan_and_labels() -> tuple[Volume, Volume]:
    image, labels = tissue_image({1: 300.0, 2: 2100.0, 3: 2600.0}, shape=(3, 32, 32))
    geometry = ((2.0, 2.0, 2.0), (10.0, -5.0, 3.0), IDENTITY)
    return Volume(image, *geometry), Volume(labels, *geometry)


def ball_region(image: Volume, radius_voxels: float) -> Volume:
    _, yy, xx = np.mgrid[: image.shape[0], : image.shape[1], : image.shape[2]]
    return image.with_array((((yy - 16) ** 2 + (xx - 16) ** 2) <= radius_voxels**2).astype(np.uint8), metadata={})


def run(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_thin_regions_get_the_posterior_mean_and_say_so(tmp_path, scan_and_labels):
    model = load_model(v_model(tmp_path / "v"))
    image, labels = scan_and_labels
    small = ball_region(image, 3)  # 12 mm across at 2 mm
    result = run(inpaint(model, image, small, labels, seed=3, preview_every=0))[0]
    record = result.metadata["provenance"]
    assert record["inpaint_estimate"] == "mean" and record["mean_draws"] == 4
    assert record["steps"] == 1 and record["sampler"] == "ddim"  # one call per draw for a v-predicting model
    np.testing.assert_array_equal(result.array[small.array == 0], image.array[small.array == 0])
    again = run(inpaint(model, image, small, labels, seed=3, preview_every=0))[0]
    np.testing.assert_array_equal(again.array, result.array)  # the same seed, the same fill
    # 56 mm across, thicker than small_region_mm (45 mm): a draw keeps the scan's texture in so large a fill
    large = run(inpaint(model, image, ball_region(image, 14), labels, seed=3, steps=3, preview_every=0))[0]
    assert large.metadata["provenance"]["inpaint_estimate"] == "sample"
    assert large.metadata["provenance"]["steps"] == 3


def test_the_mean_is_the_average_of_its_draws(tmp_path, scan_and_labels):
    model = load_model(v_model(tmp_path / "v"))
    image, labels = scan_and_labels
    region = ball_region(image, 4)
    common = dict(seed=5, preview_every=0, feather_mm=0.0)
    mean = run(inpaint(model, image, region, labels, inpaint_estimate="mean", mean_draws=2, **common))[0]
    draws = run(inpaint(model, image, region, labels, inpaint_estimate="mean", mean_draws=1, variants=2, **common))
    inside = region.array > 0
    # Variant v of draw d uses seed + v + d * variants: the two one-draw variants are the mean's two draws;
    # the border matching is linear in the estimate, so the mean's result is the average of theirs.
    np.testing.assert_allclose(mean.array[inside], (draws[0].array[inside] + draws[1].array[inside]) / 2, rtol=1e-4,
                               atol=1e-2)
    assert not np.allclose(draws[0].array[inside], draws[1].array[inside])


def test_an_unknown_estimate_is_refused_before_any_work(scan_and_labels):
    image, labels = scan_and_labels
    with pytest.raises(MedgenError, match="inpainting estimate"):
        inpaint(None, image, ball_region(image, 3), labels, inpaint_estimate="median")


def test_auto_draws_a_sample_where_the_mean_would_cost_whole_walks(tmp_path, scan_and_labels):
    from tiny_models import make_tiny_model

    model = load_model(make_tiny_model(tmp_path / "eps", spacing_mm=2.0))  # noise-predicting
    image, labels = scan_and_labels
    result = run(inpaint(model, image, ball_region(image, 3), labels, seed=1, steps=3, preview_every=0))[0]
    assert result.metadata["provenance"]["inpaint_estimate"] == "sample"
    assert result.metadata["provenance"]["steps"] == 3  # as asked: no 4 whole walks behind the user's back
