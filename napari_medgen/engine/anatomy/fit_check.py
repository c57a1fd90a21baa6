"""Did the registration work? Two measures of how well the warped atlas fits the scan, and one line when it does not.

A registration can end without an error and still be wrong (the atlas upside down, in the neck, half outside the
head, or stuck on a scan that is not a brain). Two numbers catch that, whatever the contrast:

- **tissue fit**: the correlation ratio of the scan's intensities inside the warped atlas brain, grouped by the
  atlas's tissue labels (the share of their variance that the labels explain, 0-1). Where the atlas's tissues lie
  on the scan's tissues each label holds one intensity and the ratio is high; where they lie across them, every
  label holds a mixture and it falls towards 0. It needs no order of intensities, so a T2 is measured as a T1.
  It is judged relative to the atlas's own (its image by its labels: 1 is as good a fit as the atlas to itself),
  since a blurred or coarse atlas explains less of any scan.
- **brain inside the head**: the share of the warped atlas brain that lies in the scan's head mask.

Thresholds (see `POOR_FIT`, `POOR_INSIDE`) were set between good and failed cases of
`benchmarks/anatomy_accuracy.py` and the tests' mismatched scans.
"""

from __future__ import annotations

import numpy as np

POOR_FIT = 0.45  # tissue fit relative to the atlas's own
POOR_INSIDE = 0.85


def tissue_fit(intensity: np.ndarray, labels: np.ndarray) -> float:
    """Correlation ratio of the ranks of `intensity` by `labels` over the voxels where labels > 0 (0 where undefined).

    Ranks, not intensities: a few very bright voxels (vessels, eyes, a T2's CSF) would otherwise hold most of the
    variance and decide the measure alone."""
    inside = labels > 0
    if inside.sum() < 50:
        return 0.0
    values = np.asarray(intensity, np.float64)[inside]
    values = np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(
        np.float64
    )  # ranks: outliers weigh little
    groups = labels[inside].astype(np.int64)
    total = float(((values - values.mean()) ** 2).sum())
    if total <= 0:
        return 0.0
    counts = np.bincount(groups)
    sums = np.bincount(groups, weights=values)
    present = counts > 0
    between = float((sums[present] ** 2 / counts[present]).sum() - values.sum() ** 2 / values.size)
    return round(max(0.0, min(1.0, between / total)), 3)


def inside_share(brain: np.ndarray, head: np.ndarray) -> float:
    """Share of the `brain` voxels (bool) that lie in `head` (bool, same grid)."""
    count = int(brain.sum())
    return round(float((brain & head).sum()) / count, 3) if count else 0.0


def verdict(fit: float, inside: float) -> str:
    """One line for the user when the fit is poor, else "" (`fit`: relative tissue fit; `inside`: `inside_share`)."""
    if fit >= POOR_FIT and inside >= POOR_INSIDE:
        return ""
    reasons = []
    if fit < POOR_FIT:
        reasons.append(
            f"the atlas's tissues fit the scan {fit:.0%} as well as they fit the atlas (good: over {POOR_FIT:.0%})"
        )
    if inside < POOR_INSIDE:
        reasons.append(f"{1 - inside:.0%} of the atlas brain lies outside the head")
    return (
        "the registration looks poor: "
        + " and ".join(reasons)
        + "; check the orientation header and that the scan shows a whole brain, and correct the labels before use"
    )
