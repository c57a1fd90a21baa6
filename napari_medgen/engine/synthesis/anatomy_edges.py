"""The anatomy's edges at the scan's own resolution, for a fill a coarser model grid made from a label map.

The network sees the label map at its own spacing (nearest) and its fill, brought back to the scan's grid
(linear), has every tissue edge where the coarse labels put it and as soft as the coarse grid is. On a 1 mm T1
filled by the 2 mm demo model with the 1 mm tissue labels given, that read as too little gradient energy inside a
20 mm ball (0.35-0.5x the scan's where the ball crosses tissue edges) and a ventricle's fill too bright (the
coarse grid's partial volume). The label map knows better where each edge is. This module paints the tissues'
levels on the crop's own label map, blurred as the scan's edges are blurred, and on the model grid's labels
brought back as the fill is; their difference, added to the fill, moves each edge to where the fine labels put
it with the step the scan shows. The levels are the scan's own: each tissue's mean among the known voxels near
each point (a ventricle's CSF is darker than a sulcus's), and the blur is the one that best turns the painted
labels into the known voxels around the region. Only voxels outside the region feed either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..resample import Grid, resample
from ..volume import Volume

if TYPE_CHECKING:
    from .model_grid import ModelGridProblem

# Finer than the model grid by less than this along every axis: no edge worth moving, no grain worth adding.
MIN_FACTOR = 1.25
# The reach (mm, a Gaussian's sigma) over which a tissue's level is averaged around each point, at least.
LEVEL_REACH_MM = 5.0
# Edge blurs tried (Gaussian sigma, in the scan's voxels), and the band around the region (mm) they are fitted on.
EDGE_BLURS = (0.0, 0.5, 0.75, 1.0)
FIT_BAND_MM = 8.0
MIN_KNOWN = 20


@dataclass
class AnatomyOnScanGrid:
    """The label map's tissues painted at the scan's resolution around an inpainted region (crop arrays z, y, x)."""

    labels: np.ndarray  # the crop's label map
    painted: np.ndarray  # each tissue's local level, blurred as the scan's edges are; NaN: a tissue with no known level
    edges: np.ndarray  # painted minus the same painting on the model grid's labels brought back; 0 outside the region
    # Per tissue, the spread of the scan around its painted level near the region, at the model grid's scale.
    spread: dict[int, float]
    interiors: np.ndarray  # voxels two or more from another label (`tissue_interiors`)

    def applied(self, fill: np.ndarray, region: np.ndarray) -> np.ndarray:
        """`fill` (the network's, on the crop) with its edges moved to the label map's, each tissue's mean inside
        `region` set to the scan's local level there, and each tissue's spread around it no wider than the scan's.

        Levels: the harmonisation's are the whole crop's, and a ventricle's CSF is darker than a sulcus's (on the
        1 mm template a fill over a ventricle came out 0.05 of the brain's range too bright). Spread: the demo
        model's tissues vary more than a real T1's (its CSF 1.3x), which showed as bright blotches inside a filled
        ventricle and twice the scan's gradient energy in a fill of white matter."""
        out = fill.astype(np.float32) + self.edges
        for tissue in np.unique(self.labels[region]):
            here = region & (self.labels == tissue) & np.isfinite(self.painted)
            if not here.any():
                continue
            out[here] += np.float32(np.mean(self.painted[here]) - np.mean(out[here]))
            deep = here & self.interiors
            scan_spread = self.spread.get(int(tissue))
            if scan_spread is None or deep.sum() < MIN_KNOWN:
                continue
            fill_spread = float(np.std(out[deep] - self.painted[deep]))
            if fill_spread > scan_spread:
                deviation = out[here] - self.painted[here]
                out[here] = self.painted[here] + deviation * np.float32(scan_spread / fill_spread)
        return out


def anatomy_on_scan_grid(labels: Volume, image: np.ndarray, region: np.ndarray, problem: ModelGridProblem,
                         background_label: int | None = None) -> AnatomyOnScanGrid | None:
    """The tissues of `labels` (the crop's label map) painted at the scan's resolution, to bring a fill made on the
    model grid to it (`AnatomyOnScanGrid.applied`). None where the scan is no finer than the model grid, no labels
    reached the model grid, or fewer than two tissues are known around the region.

    Meant for a label map the user gives (the inpainting task calls it only then): the tissue continued into a
    region without one (`continued_anatomy`) is a guess, and made sharp it was a sharp guess (on the 1 mm template a
    fill of white matter got 2-5x the scan's gradient energy and lost 1-2 dB)."""
    if problem.labels is None or not region.any():
        return None
    factor = np.asarray(problem.grid.spacing[::-1], float) / np.asarray(labels.spacing[::-1], float)
    if labels.shape[0] == 1:
        factor[0] = 1.0
    if not (factor >= MIN_FACTOR).any():
        return None
    fine_labels = np.asarray(labels.array).astype(np.int64)
    spacing = np.asarray(labels.spacing[::-1], float)
    fields = local_levels(fine_labels, image.astype(np.float32), ~region, spacing, region)
    if len(fields) < 2:
        return None
    from_region_mm = ndimage.distance_transform_edt(~region, sampling=spacing)  # 0 inside it
    interiors = tissue_interiors(fine_labels)
    fine = _blurred_as_scan(_painted(fine_labels, fields), image, region, from_region_mm <= FIT_BAND_MM, fine_labels,
                            background_label)
    coarse_labels = problem.labels[tuple(slice(0, s) for s in problem.unpadded_shape)].astype(np.int64)
    grid = Grid(tuple(coarse_labels.shape[::-1]), problem.grid.spacing, problem.grid.origin, problem.grid.direction)
    on_coarse = {t: resample(labels.with_array(f.astype(np.float32), metadata={}), grid, "linear").array
                 for t, f in fields.items()}
    painted = _painted(coarse_labels, on_coarse)
    coarse = resample(Volume(np.nan_to_num(painted).astype(np.float32), grid.spacing, grid.origin, grid.direction),
                      Grid.of(labels), "linear").array
    # Where a coarse voxel holds a tissue with no known level its blur reaches no further than one model voxel.
    unknown = resample(Volume((~np.isfinite(painted)).astype(np.float32), grid.spacing, grid.origin, grid.direction),
                       Grid.of(labels), "linear").array > 0
    keep = region & np.isfinite(fine) & ~unknown
    edges = np.where(keep, np.nan_to_num(fine) - coarse, 0.0).astype(np.float32)
    near = ~region & (from_region_mm <= 2 * FIT_BAND_MM) & interiors
    return AnatomyOnScanGrid(fine_labels, fine, edges, _spread(image, fine, fine_labels, near, factor), interiors)


def tissue_interiors(labels: np.ndarray) -> np.ndarray:
    """Voxels two or more voxels from any other label (in-plane for a single slice)."""
    structure = ndimage.generate_binary_structure(3, 1)
    if labels.shape[0] == 1:
        structure[0] = structure[2] = False
    interiors = np.zeros(labels.shape, bool)
    for tissue in np.unique(labels):
        interiors |= ndimage.binary_erosion(labels == tissue, structure, iterations=2, border_value=1)
    return interiors


def _spread(image: np.ndarray, painted: np.ndarray, labels: np.ndarray, near: np.ndarray, factor: np.ndarray
            ) -> dict[int, float]:
    """Per tissue, the spread of the known voxels deep in it `near` the region around its painted level, low-passed
    to the model grid's scale (a fill made there holds nothing finer; the scan's finer grain is `fine_detail`'s)."""
    residual = np.where(np.isfinite(painted), image - np.nan_to_num(painted), np.float32(0.0))
    near = near & np.isfinite(painted)
    smooth = ndimage.gaussian_filter(residual, 0.5 * factor * (factor > 1))
    return {int(t): float(np.std(smooth[near & (labels == t)])) for t in np.unique(labels[near])
            if (near & (labels == t)).sum() >= MIN_KNOWN}


def local_levels(labels: np.ndarray, image: np.ndarray, known: np.ndarray, spacing_zyx: np.ndarray,
                 region: np.ndarray) -> dict[int, np.ndarray]:
    """Per tissue with enough known voxels, its level at every voxel: the Gaussian-weighted mean of the tissue's
    known voxels around it (sigma half the region's depth, at least `LEVEL_REACH_MM`), the tissue's mean over
    the crop where none is near."""
    depth_mm = float(ndimage.distance_transform_edt(region, sampling=spacing_zyx).max())
    sigma = max(depth_mm / 2.0, LEVEL_REACH_MM) / spacing_zyx
    if labels.shape[0] == 1:
        sigma[0] = 0.0
    fields = {}
    for tissue in np.unique(labels):
        inside = known & (labels == tissue)
        if inside.sum() < MIN_KNOWN:
            continue
        # float32 throughout: a large region in a fine scan makes crops of tens of millions of voxels
        weight = ndimage.gaussian_filter(inside.astype(np.float32), sigma)
        total = ndimage.gaussian_filter(np.where(inside, image, np.float32(0.0)), sigma)
        overall = float(image[inside].mean())
        near = weight > 1e-3
        fields[int(tissue)] = np.where(near, total / np.maximum(weight, 1e-12), np.float32(overall))
    return fields


def _painted(labels: np.ndarray, fields: dict[int, np.ndarray]) -> np.ndarray:
    """Each voxel given its tissue's level there (NaN: a tissue with no known level)."""
    out = np.full(labels.shape, np.nan, np.float32)
    for tissue, field in fields.items():
        here = labels == tissue
        out[here] = field[here]
    return out


def _blurred_as_scan(painted: np.ndarray, image: np.ndarray, region: np.ndarray, within_band: np.ndarray,
                     labels: np.ndarray, background_label: int | None) -> np.ndarray:
    """`painted` blurred by the Gaussian (of `EDGE_BLURS`) that brings it closest to the scan on the known anatomy
    `within_band` (`FIT_BAND_MM`) of the region: the scan's own edge sharpness (partial volume, reconstruction)."""
    band = within_band & ~region & np.isfinite(painted)
    if background_label is not None:
        band &= labels != background_label
    if band.sum() < MIN_KNOWN:
        return painted
    filled = np.where(np.isfinite(painted), painted, np.nanmean(painted))
    best, best_error = painted, np.inf
    for blur in EDGE_BLURS:
        sigma = np.full(3, blur)
        if labels.shape[0] == 1:
            sigma[0] = 0.0
        candidate = ndimage.gaussian_filter(filled, sigma) if blur else filled
        error = float(np.mean((candidate[band] - image[band]) ** 2))
        if error < best_error:
            best, best_error = np.where(np.isfinite(painted), candidate, np.nan), error
    return best
