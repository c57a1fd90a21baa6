"""What comes with the label map: islands removed, a plausibility check, and the record of how it was made."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any

import numpy as np

from ..model.card import ModelCard
from ..volume import Volume
from .atlas import Atlas
from .options import AnatomyOptions

# Brain volume found / the atlas's outside this range: say so (adult brains vary about +-25 %).
PLAUSIBLE_BRAIN = (0.6, 1.6)


def brain_ml(labels: Volume) -> float:
    return float(np.count_nonzero(labels.array) * np.prod(labels.spacing)) / 1000


def plausibility(ratio: float) -> str:
    """A word for the user when the brain found is far from the atlas's size (a failed registration, or a scan
    that holds part of a brain)."""
    if PLAUSIBLE_BRAIN[0] <= ratio <= PLAUSIBLE_BRAIN[1]:
        return ""
    return (
        f"the brain found is {ratio:.1f} times the atlas's volume: the registration may have failed (or the scan "
        "holds only part of the brain); check the labels before using them"
    )


def largest_brain(labels: np.ndarray) -> np.ndarray:
    """Labels with every brain voxel outside the largest connected brain set to background (islands in the scalp)."""
    from scipy import ndimage

    parts, count = ndimage.label(labels > 0)
    if count <= 1:
        return labels
    sizes = np.bincount(parts.ravel())
    sizes[0] = 0
    return np.where(parts == np.argmax(sizes), labels, 0)


def class_shares(labels: np.ndarray, posteriors: np.ndarray | None, classes: list[int]) -> np.ndarray:
    """Per voxel its share of background and of each class in `classes` (1 + len(classes), ...; float32, sums to 1),
    consistent with `labels`: the posteriors where their most probable class is the label, the label's one-hot
    elsewhere (outside the fitted region, islands removed, no mixture model)."""
    lookup = np.zeros(max([0, *classes]) + 1, np.int64)
    lookup[classes] = np.arange(1, len(classes) + 1)
    index = lookup[labels]
    one_hot = (index[None] == np.arange(len(classes) + 1).reshape(-1, *([1] * labels.ndim))).astype(np.float32)
    if posteriors is None:
        return one_hot
    shares = posteriors / np.maximum(posteriors.sum(axis=0, keepdims=True), 1e-12)
    agrees = (posteriors.sum(axis=0) > 0) & (np.argmax(posteriors, axis=0) == index)
    return np.where(agrees[None], shares, one_hot).astype(np.float32)


def metadata_of(
    scan: Volume,
    card: ModelCard,
    atlas: Atlas,
    options: AnatomyOptions,
    placement: str,
    mixture: bool,
    seconds: dict[str, float],
) -> dict[str, Any]:
    from ... import __version__

    return {
        "label_map": True,
        "label_names": {str(c.index): c.name for c in card.label_schema.classes},
        "anatomy": {
            "method": "atlas registration (Mattes MI: similarity, affine; "
            + {"demons": "demons on the scan made atlas-like", "bspline": "B-spline", "none": "no deformable"}[
                options.deformable
            ]
            + ")"
            + (" + Gaussian mixture with atlas priors and bias field" if mixture else ""),
            "generator": f"napari-medgen {__version__}",
            "model": card.name,
            "model_version": card.version,
            "atlas": {"image": atlas.image.name, "labels": atlas.labels.name, "named_by": atlas.source},
            "placement": placement,
            "options": dataclasses.asdict(options),
            "seconds": seconds,
            "scan_sha256": scan.content_hash(),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    }
