"""Fine detail at the scan's own resolution for a fill made on a coarser model grid: the scan's grain (the
anatomy's edges, where a label map says where they are, come from `anatomy_edges`).

A 2 mm model fills a region of a 1 mm scan with an image that holds nothing finer than 2 mm: brought back to
the scan's grid it reads as a smooth patch (issue 33 measured 0.1-0.55x the scan's texture inside). The scan
itself shows what its finer detail looks like around the region: its high-pass part (the scan minus its
low-pass at the model's spacing), with its own power spectrum (grain size and direction) and its own strength
per intensity (white matter's grain is not grey matter's). This module draws a new patch of that detail for the
region: white noise shaped by the high-pass part's amplitude spectrum (a random-phase texture: the same
spectrum, new phases; Galerne, Gousseau and Morel 2011), scaled voxel by voxel to the high-pass part's standard
deviation at the fill's intensity. Only voxels outside the region feed it: what the region held is never used
(the structure a user removes must not come back as texture). Seeded: the same seed, the same detail.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .anatomy_edges import MIN_FACTOR, tissue_interiors

# Intensity bins (quantiles of the known tissue) over which the detail's strength is measured.
BINS = 8
MIN_VOXELS = 200


def fine_detail(
    known: np.ndarray,
    region: np.ndarray,
    fill: np.ndarray,
    spacing_zyx: tuple[float, ...],
    model_spacing_zyx: tuple[float, ...],
    seed: int,
    outside_anatomy: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> np.ndarray | None:
    """The detail to add to `fill` inside `region` (zero elsewhere), on the crop's grid (z, y, x); None where the
    scan is no finer than the model or too little known tissue is there to learn its detail from.

    With `labels` (the crop's label map, whose edges `anatomy_edges` already put in the fill) the detail is learnt
    only inside each tissue, two voxels from its edges, and its strength is each tissue's own: an edge's step is
    not grain (on the 1 mm template, deep white matter's grain is far weaker than white-matter-bright voxels'
    next to grey matter)."""
    factor = np.asarray(model_spacing_zyx, float) / np.asarray(spacing_zyx, float)
    if known.shape[0] == 1:
        factor[0] = 1.0
    if not (factor >= MIN_FACTOR).any() or not region.any():
        return None
    tissue = ~region if outside_anatomy is None else ~region & ~outside_anatomy
    # The source: known tissue not next to the region or the anatomy's edge (whose step is not texture).
    source = ndimage.binary_erosion(tissue, iterations=2, border_value=1)  # the crop's edge is no boundary
    if labels is not None:
        source &= tissue_interiors(labels)
    if source.sum() < MIN_VOXELS:
        return None
    high = _high_pass(known.astype(np.float64), tissue, np.maximum(factor, 1.0))
    if labels is not None:
        return _by_tissue(high, source, region, labels, seed)
    values = known[source].astype(np.float64)
    detail = high[source]
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)))
    if len(edges) < 3:
        return None
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    centres = np.array([np.median(values[which == b]) if (which == b).any() else np.nan for b in range(len(edges) - 1)])
    strength = np.array([detail[which == b].std() if (which == b).sum() > 10 else np.nan for b in range(len(edges) - 1)])
    keep = np.isfinite(centres) & np.isfinite(strength)
    if keep.sum() < 2:
        return None
    noise = _random_phase(np.where(source, high, 0.0), source, seed)
    sigma = np.interp(fill, centres[keep], strength[keep])
    return np.where(region, noise * sigma, 0.0).astype(np.float32)


def _by_tissue(high: np.ndarray, source: np.ndarray, region: np.ndarray, labels: np.ndarray, seed: int
               ) -> np.ndarray | None:
    """The detail for `region` with each tissue's own strength (its high-pass part's spread in `source`); a tissue
    with too few source voxels gets the weakest known tissue's."""
    strength = {int(t): float(high[source & (labels == t)].std()) for t in np.unique(labels[source])
                if (source & (labels == t)).sum() > MIN_VOXELS // 4}
    if not strength:
        return None
    sigma = np.full(labels.shape, min(strength.values()))
    for tissue, value in strength.items():
        sigma[labels == tissue] = value
    noise = _random_phase(np.where(source, high, 0.0), source, seed)
    return np.where(region, noise * sigma, 0.0).astype(np.float32)


def _high_pass(image: np.ndarray, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """The image minus its low-pass at the model's spacing (a Gaussian whose width matches linear resampling to
    a grid `factor` times coarser), normalised so that voxels outside `weight` do not leak in."""
    sigma = 0.5 * factor * (factor > 1)
    w = weight.astype(np.float64)
    low = ndimage.gaussian_filter(image * w, sigma) / np.maximum(ndimage.gaussian_filter(w, sigma), 1e-6)
    return np.where(weight, image - low, 0.0)


def _random_phase(sample: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """Unit-variance noise with the amplitude spectrum of `sample` (zero outside `mask`) and random phases."""
    power = np.abs(np.fft.rfftn(sample)) ** 2 / max(float(mask.mean()), 1e-6)
    white = np.random.default_rng(seed).standard_normal(sample.shape)
    shaped = np.fft.irfftn(np.fft.rfftn(white) * np.sqrt(power), s=sample.shape)
    return shaped / max(float(shaped.std()), 1e-12)
