"""The judge of an inpainted fill (issue 33): does it look like the scan around it, not only score on PSNR?

Per region, each against the real scan in the same voxels:
- level: the fill's mean minus the scan's, as a share of the brain's 1-99 % intensity range (a darker blob: < 0);
- texture: the gradient energy (mean squared gradient) inside the region, away from its border (eroded by 3
  voxels), over the scan's there (1 = as the scan; a smooth fill or an interpolation: well below 1);
- seam: the gradient energy on the region's border ring (a voxel either side), over the scan's there
  (a visible edge: above 1; a blurred border: below);
- PSNR and SSIM inside the region (peak: the brain's 99.5th percentile).
A volume of one slice is judged in-plane.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _gradient_energy(image: np.ndarray, spacing_zyx: tuple[float, ...]) -> np.ndarray:
    if image.shape[0] == 1:
        return sum(g**2 for g in np.gradient(image[0].astype(np.float64), *spacing_zyx[1:]))[None]
    return sum(g**2 for g in np.gradient(image.astype(np.float64), *spacing_zyx))


def _structure(region: np.ndarray) -> np.ndarray:
    """The neighbourhood erosion and dilation use: in-plane for a single slice."""
    structure = ndimage.generate_binary_structure(3, 1)
    if region.shape[0] == 1:
        structure[0] = structure[2] = False
    return structure


def judge(fill: np.ndarray, truth: np.ndarray, region: np.ndarray, brain: np.ndarray,
          spacing_zyx: tuple[float, ...]) -> dict[str, float]:
    """The figures of one fill (arrays z, y, x on the scan's grid; `region` and `brain` boolean)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    low, high = np.percentile(truth[brain], [1, 99])
    span = max(float(high - low), 1e-6)
    structure = _structure(region)
    interior = ndimage.binary_erosion(region, structure, iterations=3)
    if not interior.any():
        interior = region
    ring = ndimage.binary_dilation(region, structure) & ~ndimage.binary_erosion(region, structure)
    ours, theirs = _gradient_energy(fill, spacing_zyx), _gradient_energy(truth, spacing_zyx)
    peak = float(np.percentile(truth[brain], 99.5))
    zs = np.flatnonzero(region.any((1, 2)))
    ys, xs = np.nonzero(region.any(0))
    box = (slice(zs[0], zs[-1] + 1), slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    window = 3 if min(truth[box].shape[1:]) >= 3 else 1
    ssim = np.stack([structural_similarity(truth[box][z].astype(np.float64), fill[box][z].astype(np.float64),
                                           data_range=peak, full=True, win_size=window)[1] for z in range(len(zs))])
    return {
        "level": float((fill[region].mean() - truth[region].mean()) / span),
        "texture": float(ours[interior].mean() / max(theirs[interior].mean(), 1e-12)),
        "seam": float(ours[ring].mean() / max(theirs[ring].mean(), 1e-12)),
        "psnr": float(peak_signal_noise_ratio(truth[region], fill[region], data_range=peak)),
        "ssim": float(ssim[region[box]].mean()),
    }


def biharmonic(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """scikit-image's biharmonic inpainting of the region, slice by slice (axial), the classical baseline."""
    from skimage.restoration import inpaint_biharmonic

    out = image.astype(np.float32, copy=True)
    voided = np.where(region, 0, image).astype(np.float64)
    for z in np.flatnonzero(region.any((1, 2))):
        out[z] = inpaint_biharmonic(voided[z], region[z])
    return out
