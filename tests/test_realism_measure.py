"""The realism measure (benchmarks/realism.py) sees what a whole-brain average hides.

A synthetic "scan" of three tissues with texture; a "generated" copy whose white matter is rougher and whose
grey matter is smoother than the scan's, tuned so that the whole-brain inside-tissue gradient stays near 1x:
the per-tissue figures must show both faults, and the per-tissue histogram distances must say which tissue a
brightness shift sits in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from realism import figures, meets, relative  # noqa: E402

SPACING = (2.0, 2.0, 2.0)


def phantom(rng: np.random.Generator, texture_sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Nested shells: CSF outside, grey matter, white matter inside; tissue levels plus smooth texture."""
    z, y, x = np.mgrid[:24, :40, :40]
    radius = np.sqrt((z - 12) ** 2 + (y - 20) ** 2 + (x - 20) ** 2)
    labels = np.select([radius < 7, radius < 13, radius < 16], [3, 2, 1], 0).astype(np.uint8)
    levels = np.array([0.0, 300.0, 600.0, 900.0])
    texture = ndimage.gaussian_filter(rng.normal(0, 1, labels.shape), texture_sigma) * 120 * texture_sigma
    image = np.where(labels > 0, levels[labels] + texture, 0.0)
    return image, labels


def test_per_tissue_gradients_show_a_rough_tissue_hidden_behind_a_smooth_one():
    rng = np.random.default_rng(0)
    real, labels = phantom(rng)
    generated = real.copy()
    wm, gm = labels == 3, labels == 2
    generated[wm] += rng.normal(0, 40, wm.sum())  # speckle in white matter
    smoother, _ = phantom(np.random.default_rng(0), texture_sigma=1.5)  # the same levels, broader texture
    generated[gm] = smoother[gm]  # flattened grey matter
    row = relative(figures(generated, labels, SPACING, 0.0), figures(real, labels, SPACING, None))
    assert 0.9 <= row["gradient_inside_tissue"] <= 1.1  # the whole-brain figure looks right
    assert row["inside_in_plane_WM"] > 1.3 and row["inside_through_plane_WM"] > 1.3
    assert row["inside_in_plane_GM"] < 0.7 and row["inside_through_plane_GM"] < 0.7
    assert not meets(row, "sample")


def test_the_scan_against_itself_meets_every_target_and_a_shift_is_found_in_its_tissue():
    rng = np.random.default_rng(1)
    real, labels = phantom(rng)
    row = relative(figures(real, labels, SPACING, 0.0), figures(real, labels, SPACING, None))
    assert meets(row, "sample")
    assert row["histogram_w1"] == 0.0
    # Grey matter sits between the percentiles the measure rescales by, so only its own histogram moves.
    brighter_gm = real.copy()
    brighter_gm[labels == 2] += 60
    row = relative(figures(brighter_gm, labels, SPACING, 0.0), figures(real, labels, SPACING, None))
    assert row["histogram_w1"] > 0.01
    assert row["histogram_w1_GM"] > 5 * max(row["histogram_w1_CSF"], row["histogram_w1_WM"])
