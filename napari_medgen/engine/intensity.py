"""Intensity normalisation between scan units and the network's [-1, 1], as the card describes.

MR intensities have no absolute scale, and another scanner's contrast differs from the training data's.
Inpainting knows part of the image and its tissue labels, so it can harmonise: the known voxels' median
per tissue are mapped onto the levels the network learned for that tissue (the card's `label_levels`),
piecewise linearly, and the generated values go back through the same map's inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model.card_sections import IntensityNormalization

# A tissue's median is trusted from this many known voxels up.
MIN_VOXELS_PER_LEVEL = 20


@dataclass(frozen=True)
class IntensityMap:
    """A monotone piecewise-linear map: `scan_points[i]` -> `network_points[i]`, straight lines beyond the
    ends. Two points (the default) are the linear map `low` -> -1, `high` -> +1."""

    low: float
    high: float
    scan_points: tuple[float, ...] = ()
    network_points: tuple[float, ...] = ()

    def _points(self) -> tuple[np.ndarray, np.ndarray]:
        if self.scan_points:
            return np.asarray(self.scan_points, np.float64), np.asarray(self.network_points, np.float64)
        return np.asarray([self.low, self.high], np.float64), np.asarray([-1.0, 1.0])

    def forward(self, array: np.ndarray) -> np.ndarray:
        scan, network = self._points()
        return _interpolate(np.asarray(array, dtype=np.float32), scan, network)

    def inverse(self, array: np.ndarray) -> np.ndarray:
        scan, network = self._points()
        return _interpolate(np.asarray(array, dtype=np.float32), network, scan)

    @property
    def harmonised(self) -> bool:
        return bool(self.scan_points)


def _interpolate(values: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """np.interp with the end segments extended as straight lines (generated values may leave the range)."""
    out = np.interp(values, xs, ys)
    below, above = values < xs[0], values > xs[-1]
    if below.any():
        out[below] = ys[0] + (values[below] - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    if above.any():
        out[above] = ys[-1] + (values[above] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return out.astype(np.float32)


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


def harmonised_map(
    norm: IntensityNormalization,
    fallback: IntensityMap,
    image: np.ndarray,
    label_map: np.ndarray | None,
    known: np.ndarray | None = None,
) -> IntensityMap:
    """The map for an image whose tissue labels are known: each labelled tissue's median intensity among the
    `known` voxels -> the level the network learned for it (`norm.label_levels`), the background value -> -1.

    Falls back to `fallback` (e.g. the image's percentiles) for CT windows, cards without levels, fewer
    than two tissues with enough known voxels, or medians whose order differs from the levels' (another
    contrast, e.g. a T2 given to a T1 model: a piecewise map would fold it)."""
    base = fallback
    if norm.kind != "mri_percentile" or not norm.label_levels or label_map is None:
        return base
    usable = np.ones(image.shape, bool) if known is None else np.asarray(known, bool)
    pairs = []
    for label, level in norm.label_levels.items():
        values = image[usable & (label_map == int(label))]
        if values.size >= MIN_VOXELS_PER_LEVEL:
            pairs.append((float(np.median(values)), float(level)))
    if len(pairs) < 2:
        return base
    pairs.sort(key=lambda pair: pair[1])
    scan = [p[0] for p in pairs]
    network = [p[1] for p in pairs]
    if any(b <= a for a, b in zip(scan, scan[1:])):
        return base
    if float(norm.background) < scan[0] and network[0] > -1.0:
        scan.insert(0, float(norm.background))
        network.insert(0, -1.0)
    return IntensityMap(base.low, base.high, tuple(scan), tuple(network))


def label_levels(image_normalised: np.ndarray, label_map: np.ndarray, background_label: int | None) -> dict[str, float]:
    """Each label's median normalised intensity (the card's `label_levels`, measured on training data)."""
    levels = {}
    for label in np.unique(label_map):
        if background_label is not None and int(label) == background_label:
            continue
        levels[str(int(label))] = round(float(np.median(image_normalised[label_map == label])), 4)
    return levels


def tissue_classes_by_intensity(image: np.ndarray, known: np.ndarray, norm: IntensityNormalization) -> np.ndarray | None:
    """Where no label map is given: the known anatomy's voxels split by intensity into as many classes as the card
    has tissue levels (scikit-image's multi-Otsu thresholds, classes in the levels' order), the rest background,
    so that `harmonised_map` can bring the scan's tissue levels onto the network's all the same (on the 1 mm
    template a fill without anatomy otherwise came out up to 0.075 of the brain's range off, a darker blob).
    None where the card has no levels or the known anatomy is too small or too uniform to split."""
    if norm.kind != "mri_percentile" or not norm.label_levels:
        return None
    classes = sorted(norm.label_levels, key=lambda label: norm.label_levels[label])
    anatomy = np.asarray(known, bool) & (image > norm.background)
    values = image[anatomy]
    if values.size < MIN_VOXELS_PER_LEVEL * len(classes) or np.ptp(values) <= 0:
        return None
    from skimage.filters import threshold_multiotsu

    try:
        thresholds = threshold_multiotsu(values, classes=len(classes))
    except ValueError:  # fewer distinct intensities than classes
        return None
    labels = np.full(image.shape, -1 if norm.background_label is None else norm.background_label, np.int64)
    labels[anatomy] = np.asarray([int(c) for c in classes])[np.digitize(image[anatomy], thresholds)]
    return labels
