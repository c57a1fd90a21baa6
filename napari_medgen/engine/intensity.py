"""Intensity normalisation between scan units and the network's [-1, 1], as the card describes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model.card import IntensityNormalization


@dataclass(frozen=True)
class IntensityMap:
    """A linear map: scan intensity `low` -> -1 and `high` -> +1."""

    low: float
    high: float

    def forward(self, array: np.ndarray) -> np.ndarray:
        return (2.0 * (np.asarray(array, dtype=np.float32) - self.low) / (self.high - self.low) - 1.0).astype(np.float32)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        return ((np.asarray(array, dtype=np.float32) + 1.0) / 2.0 * (self.high - self.low) + self.low).astype(np.float32)


def intensity_map_for(norm: IntensityNormalization, image: np.ndarray | None = None) -> IntensityMap:
    """The map for an image (its own percentiles for MRI) or, with no image, the card's output range."""
    if norm.kind == "ct_window":
        return IntensityMap(float(norm.window_min), float(norm.window_max))
    if image is None:
        return IntensityMap(norm.output_min, norm.output_max)
    foreground = image[image > norm.background]
    if foreground.size < 16:
        return IntensityMap(norm.output_min, norm.output_max)
    # The background maps to -1 (as in training); the bright end to the image's high percentile.
    high = float(np.percentile(foreground, norm.high_percentile))
    low = float(norm.background)
    if high <= low:
        high = low + 1.0
    return IntensityMap(low, high)
