"""The scan made to look like the atlas, for demons: its brain, bias-corrected, intensities mapped onto the atlas's.

Demons compares intensities directly, so the image it registers the atlas to must have the atlas's intensities
and nothing outside the brain. The first mixture fit (affine-warped atlas as prior) gives the three things
needed: the scan's bias field, each voxel's probability of being brain (the brain extraction: skull, scalp and
neck get the non-brain class), and the order of the tissues' intensities. The bias-corrected scan is then
mapped onto the atlas's intensities by matching quantiles inside the brain (rising for a T1-like contrast,
falling for a T2-like one) and weighted by the brain probability. Unlike painting the tissue posteriors with the
atlas's means (what this replaced), the quantile map keeps the scan's own partial volume and edges, so demons
follows the anatomy rather than the atlas's guess of it: on the sample T1 under a 2 mm deformation the warped
atlas alone went from 0.65 to 0.80 mean tissue Dice. A contrast whose tissue order is neither (a FLAIR, a PD)
falls back to the painted posteriors.
"""

from __future__ import annotations

import numpy as np

QUANTILES = np.linspace(1, 99, 50)


def tissue_order(scan_means: np.ndarray, atlas_means: np.ndarray) -> int:
    """+1 when the scan's tissue means rise with the atlas's, -1 when they fall, 0 otherwise."""
    scan_rank, atlas_rank = np.argsort(np.argsort(scan_means)), np.argsort(np.argsort(atlas_means))
    if np.array_equal(scan_rank, atlas_rank):
        return 1
    if np.array_equal(scan_rank, len(scan_rank) - 1 - atlas_rank):
        return -1
    return 0


def atlas_like(
    intensity: np.ndarray,
    bias: np.ndarray,
    posteriors: np.ndarray,
    scan_log_means: np.ndarray,
    atlas_values: np.ndarray,
    atlas_means: np.ndarray,
) -> np.ndarray:
    """The scan on the atlas's intensity scale, brain only (float32, same shape as `intensity`).

    `posteriors` (classes, ...; zero outside the fitted region) and `bias` come from a mixture fit, background first; `scan_log_means` are its
    brain classes' log-intensity means, `atlas_means` the atlas's mean intensity per brain class (same order), and
    `atlas_values` the atlas's brain intensities (for its quantiles).
    """
    brain = np.clip(posteriors[1:].sum(axis=0), 0.0, 1.0)  # 0 outside the fitted region
    order = tissue_order(np.asarray(scan_log_means), np.asarray(atlas_means))
    sure = brain > 0.5
    if order == 0 or sure.sum() < 100:
        return (np.tensordot(atlas_means, posteriors[1:], axes=1) * (brain > 0)).astype(np.float32)
    corrected = np.asarray(intensity, np.float64) / np.maximum(bias, 1e-6)
    scan_q = np.percentile(corrected[sure], QUANTILES)
    atlas_q = np.percentile(atlas_values, QUANTILES if order > 0 else QUANTILES[::-1])
    scan_q = np.maximum.accumulate(scan_q + np.arange(len(scan_q)) * 1e-9)  # strictly rising for np.interp
    mapped = np.interp(corrected, scan_q, atlas_q)
    return (mapped * brain).astype(np.float32)
