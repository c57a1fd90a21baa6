"""A Gaussian mixture on the scan's own log-intensities with the warped atlas as its spatial prior, and a bias field.

The classic unified model (Wells et al. 1996; Van Leemput et al. 1999; Ashburner & Friston 2005, much
simplified): voxel i of class k has log-intensity y_i = b_i + N(mu_k, sigma_k^2), where b is a smooth
multiplicative bias field (additive after the log) and the prior probability of class k at voxel i is
the atlas's, warped onto the scan. EM alternates posteriors (prior x likelihood), the class means and
variances, and the bias field (the posterior-weighted residual, Gaussian-smoothed). Class 0, everything
that is not brain (skull, scalp, dura, air, neck), has no single intensity, so it is a mixture of its own
(`BACKGROUND_COMPONENTS` Gaussians); the bias field is fitted on the brain classes only.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BACKGROUND_COMPONENTS = 3
MIN_VARIANCE = 1e-4  # of a log-intensity class (a 1 % spread)
COARSE_MM = 6.0  # the bias field is smoothed on a grid this coarse (then interpolated back)


@dataclass
class MixtureFit:
    """Posteriors (classes first, float32, zero outside the region), class means/variances (log), bias field (x)."""

    posteriors: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    bias: np.ndarray
    iterations: int


def fit_mixture(
    intensity: np.ndarray,
    priors: np.ndarray,
    region: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    iterations: int,
    bias_sigma_mm: float,
    mrf_strength: float = 0.0,
    likelihood_weight: float = 1.0,
) -> Generator[int, None, MixtureFit]:
    """EM over the voxels of `region` (bool); `priors` is (classes, *shape), class 0 the background.

    `mrf_strength` > 0 adds a mean-field Potts term: a class is favoured by exp(strength x the share of the
    26 neighbours that had it at the last iteration), which keeps noise from scattering single voxels.
    `likelihood_weight` < 1 tempers the intensity likelihood against the prior (prior x likelihood^weight):
    neighbouring voxels of a real scan are not independent observations (partial volume, interpolation),
    so full weight over-trusts intensities at tissue borders. ANTs Atropos' prior weighting does the same.
    Yields the iteration number before each iteration (a place to cancel), returns the fit.
    """
    region = np.asarray(region, bool)
    values = np.asarray(intensity, np.float64)[region]
    floor = max(1e-6, 1e-3 * float(np.percentile(values, 99)) if values.size else 1.0)
    y = np.log(np.maximum(values, floor))
    prior = np.asarray(priors, np.float64)[:, region]
    prior = prior / np.maximum(prior.sum(axis=0, keepdims=True), 1e-12)
    classes = prior.shape[0]
    bias = np.zeros_like(y)
    means, variances = _initial_tissue_stats(y, prior)
    bg_means, bg_vars, bg_weights = _initial_background(y, prior[0])
    post = prior
    for iteration in range(iterations):
        yield iteration
        corrected = y - bias
        likelihood = np.empty_like(prior)
        likelihood[0] = _mixture_density(corrected, bg_means, bg_vars, bg_weights)
        for k in range(1, classes):
            likelihood[k] = _normal(corrected, means[k], variances[k])
        post_new = prior * (likelihood if likelihood_weight == 1 else likelihood**likelihood_weight)
        if mrf_strength > 0 and iteration > 0:
            post_new *= np.exp(mrf_strength * _neighbour_share(post, region))
        post = post_new / np.maximum(post_new.sum(axis=0, keepdims=True), 1e-300)
        # M-step: brain classes, then the background's own mixture.
        for k in range(1, classes):
            weight = post[k].sum()
            if weight > 1e-6:
                means[k] = float((post[k] * corrected).sum() / weight)
                variances[k] = max(MIN_VARIANCE, float((post[k] * (corrected - means[k]) ** 2).sum() / weight))
        bg_means, bg_vars, bg_weights = _update_background(corrected, post[0], bg_means, bg_vars, bg_weights)
        if iteration >= 1 and classes > 1:
            bias = _bias_field(y, post, means, variances, region, spacing_zyx, bias_sigma_mm)
    posteriors = np.zeros((classes, *region.shape), np.float32)
    posteriors[:, region] = post
    field = np.ones(region.shape, np.float32)
    field[region] = np.exp(bias)
    means[0] = float(np.dot(bg_weights, bg_means))
    return MixtureFit(posteriors, means, variances, field, iterations)


def _neighbour_share(post: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per class and region voxel, the mean posterior over its 3x3x3 neighbourhood (itself excluded)."""
    share = np.empty_like(post)
    volume = np.zeros(region.shape, np.float32)
    for k in range(post.shape[0]):
        volume[region] = post[k]
        mean = ndimage.uniform_filter(volume, size=3, mode="constant")
        share[k] = (mean[region] * 27 - post[k]) / 26
    return share


def _normal(y: np.ndarray, mean: float, variance: float) -> np.ndarray:
    return np.exp(-0.5 * (y - mean) ** 2 / variance) / np.sqrt(2 * np.pi * variance)


def _mixture_density(y: np.ndarray, means: np.ndarray, variances: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return sum(w * _normal(y, m, v) for m, v, w in zip(means, variances, weights, strict=True))


def _initial_tissue_stats(y: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = prior.shape[0]
    means, variances = np.zeros(classes), np.full(classes, 0.1)
    for k in range(1, classes):
        # The voxels the atlas is sure of: their intensities start the class (a whole-brain mean would mix tissues).
        sure = prior[k] > 0.9 * prior[k].max()
        weights = prior[k] * sure if sure.sum() > 20 else prior[k]
        total = weights.sum()
        if total > 1e-6:
            means[k] = float((weights * y).sum() / total)
            variances[k] = max(MIN_VARIANCE, float((weights * (y - means[k]) ** 2).sum() / total))
    return means, variances


def _initial_background(y: np.ndarray, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sure = prior > 0.5
    values = y[sure] if sure.sum() > 30 else y
    quantiles = np.quantile(values, np.linspace(0, 1, BACKGROUND_COMPONENTS + 2)[1:-1])
    spread = max(MIN_VARIANCE, float(np.var(values)) / BACKGROUND_COMPONENTS)
    return (
        quantiles.astype(float),
        np.full(BACKGROUND_COMPONENTS, spread),
        np.full(BACKGROUND_COMPONENTS, 1 / BACKGROUND_COMPONENTS),
    )


def _update_background(
    y: np.ndarray, post: np.ndarray, means: np.ndarray, variances: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = np.stack([w * _normal(y, m, v) for m, v, w in zip(means, variances, weights, strict=True)])
    parts /= np.maximum(parts.sum(axis=0, keepdims=True), 1e-300)
    parts *= post
    totals = parts.sum(axis=1)
    if totals.sum() <= 1e-6:
        return means, variances, weights
    new_means, new_vars = means.copy(), variances.copy()
    for j, total in enumerate(totals):
        if total > 1e-6:
            new_means[j] = float((parts[j] * y).sum() / total)
            new_vars[j] = max(MIN_VARIANCE, float((parts[j] * (y - new_means[j]) ** 2).sum() / total))
    return new_means, new_vars, np.maximum(totals / totals.sum(), 1e-3)


def _bias_field(
    y: np.ndarray,
    post: np.ndarray,
    means: np.ndarray,
    variances: np.ndarray,
    region: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    sigma_mm: float,
) -> np.ndarray:
    """The smooth log-field that best explains the brain voxels' residuals (weighted by precision)."""
    inverse = post[1:] / variances[1:, None]
    weight = inverse.sum(axis=0)
    predicted = (inverse * means[1:, None]).sum(axis=0) / np.maximum(weight, 1e-12)
    residual = y - predicted
    numerator, denominator = np.zeros(region.shape), np.zeros(region.shape)
    numerator[region], denominator[region] = weight * residual, weight
    field = smooth_ratio(numerator, denominator, spacing_zyx, sigma_mm)[region]
    brain = post[1:].sum(axis=0)
    return field - float((brain * field).sum() / max(brain.sum(), 1e-12))


def smooth_ratio(
    numerator: np.ndarray, denominator: np.ndarray, spacing_zyx: tuple[float, ...], sigma_mm: float
) -> np.ndarray:
    """Gaussian-smoothed numerator / smoothed denominator, computed on a coarse grid and interpolated back."""
    factors = [max(1, int(COARSE_MM // s)) for s in spacing_zyx]
    coarse_n, coarse_d = _block_sum(numerator, factors), _block_sum(denominator, factors)
    sigma = [sigma_mm / (s * f) for s, f in zip(spacing_zyx, factors, strict=True)]
    ratio = ndimage.gaussian_filter(coarse_n, sigma, mode="constant") / np.maximum(
        ndimage.gaussian_filter(coarse_d, sigma, mode="constant"), 1e-12
    )
    zoom = [n / c for n, c in zip(numerator.shape, ratio.shape, strict=True)]
    fine = ndimage.zoom(ratio, zoom, order=1, mode="nearest", grid_mode=True)
    out = np.zeros(numerator.shape)
    slices = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, fine.shape, strict=True))
    out[slices] = fine[slices]
    return out


def _block_sum(array: np.ndarray, factors: list[int]) -> np.ndarray:
    pad = [(0, (-n) % f) for n, f in zip(array.shape, factors, strict=True)]
    padded = np.pad(array, pad)
    shape = []
    for n, f in zip(padded.shape, factors, strict=True):
        shape += [n // f, f]
    return padded.reshape(shape).sum(axis=tuple(range(1, 2 * array.ndim, 2)))
