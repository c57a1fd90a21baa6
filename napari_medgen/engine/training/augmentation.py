"""What training does to a slice before the network sees it: geometric and intensity augmentation (MONAI),
another scanner's look for inpainting samples, random inpainting regions, and tissue pasted from another
slice (label layouts no training slice had, with images that truly match them)."""

from __future__ import annotations

import numpy as np


def augmentation(warp_fraction: float = 0.7, warp_interpolation: str = "bicubic", fractions: bool = False):
    """Geometric augmentation of image and labels (and tissue fractions, resampled linearly) together, then a
    mild intensity jitter (MONAI); seeded by `TrainingBatches` before each batch."""
    from monai.transforms import Compose, Rand2DElasticd, RandAdjustContrastd, RandFlipd, RandScaleIntensityd

    keys, modes = ["image", "label"], [warp_interpolation, "nearest"]
    if fractions:
        keys, modes = keys + ["fractions"], modes + ["bilinear"]
    transforms = Compose(
        [
            RandFlipd(keys=keys, spatial_axis=1, prob=0.5),  # left-right
            RandFlipd(keys=keys, spatial_axis=0, prob=0.1),  # anterior-posterior
            Rand2DElasticd(
                keys=keys,
                spacing=(16, 16),
                magnitude_range=(0.0, 2.0),
                prob=warp_fraction,
                rotate_range=0.2,
                scale_range=0.1,
                translate_range=8,
                mode=modes,
                padding_mode="zeros",
            ),
            RandScaleIntensityd(keys=["image"], factors=0.05, prob=0.5),
            RandAdjustContrastd(keys=["image"], gamma=(0.9, 1.1), prob=0.3),
        ]
    )
    return transforms


def scanner_look():
    """Another scanner's look (MONAI), for inpainting samples: a smooth bias field, another contrast
    (gamma), a coarser resolution (blur) and noise. The known image shows the look, and the network learns
    to fill the region in it, so a scan from another scanner is not filled with the template's look.
    Generation samples keep the training images' own look: that is what a generated image should have."""
    from monai.transforms import Compose, RandAdjustContrastd, RandBiasFieldd, RandGaussianNoised, RandGaussianSmoothd

    return Compose(
        [
            RandBiasFieldd(keys=["image"], coeff_range=(0.0, 0.3), degree=3, prob=0.5),
            RandAdjustContrastd(keys=["image"], gamma=(0.6, 1.6), prob=0.5),
            RandGaussianSmoothd(keys=["image"], sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), prob=0.4),
            RandGaussianNoised(keys=["image"], mean=0.0, std=0.03, prob=0.4),
        ]
    )


def random_region(shape: tuple[int, int], spacing_mm: float, size_mm: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """A random inpainting region: one to three boxes or ellipses of `size_mm`."""
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    region = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 4))):
        ry, rx = rng.uniform(*size_mm, size=2) / spacing_mm / 2
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        if rng.random() < 0.5:
            region |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            region |= (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    return region


def paste_tissue(
    image: np.ndarray,
    label: np.ndarray,
    source_image: np.ndarray,
    source_label: np.ndarray,
    diameter_px: float,
    rng: np.random.Generator,
    fractions: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Copy a disc of tissue (image and labels together, and the tissue fractions given as (target, source))
    from a random place in the source slice into a random place inside the target's anatomy: new label
    layouts with images that truly match them."""
    inside, donors = np.argwhere(label > 0), np.argwhere(source_label > 0)
    if not len(inside) or not len(donors):
        return image, label, None if fractions is None else fractions[0]
    (ty, tx), (sy, sx) = inside[rng.integers(len(inside))], donors[rng.integers(len(donors))]
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    disc = (yy - ty) ** 2 + (xx - tx) ** 2 <= (diameter_px / 2) ** 2
    src_y, src_x = yy + (sy - ty), xx + (sx - tx)
    disc &= (src_y >= 0) & (src_y < source_image.shape[0]) & (src_x >= 0) & (src_x < source_image.shape[1])
    image, label = image.copy(), label.copy()
    image[disc] = source_image[src_y[disc], src_x[disc]]
    label[disc] = source_label[src_y[disc], src_x[disc]]
    if fractions is None:
        return image, label, None
    target = fractions[0].copy()
    target[:, disc] = fractions[1][:, src_y[disc], src_x[disc]]
    return image, label, target
