"""The settings of a training run, without torch: the command line builds its --help from them, and the
data, optimiser and loop modules all read them (the card says what the model is; this, how it is trained)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainingConfig:
    """Optimisation settings (the card says what the model is; this says how it is trained)."""

    steps: int = 3000
    batch_size: int = 12
    learning_rate: float = 3e-4
    warmup_steps: int = 100  # linear warm-up from learning_rate / warmup_steps, then a cosine decay
    final_lr_fraction: float = 0.1  # ... down to this fraction of learning_rate at the last step
    ema_decay: float = 0.998
    crop_size: int | None = 64  # random square crops (px) of the slices; None: whole slices
    # The fraction of batches cut to a smaller square field of view (px, drawn from this range), so that a
    # network trained on whole slices still fills a region of a scan that shows only part of the anatomy.
    field_of_view_fraction: float = 0.0
    field_of_view_px: tuple[int, int] = (32, 96)
    condition_dropout: float = 0.15
    generation_fraction: float = 0.5  # samples with the image fully voided (plain generation)
    region_mm: tuple[float, float] = (5.0, 40.0)  # sizes of the random inpainting regions
    # Copy-paste: the fraction of samples given one to three discs of tissue (image and labels
    # together) from elsewhere in the data, and their diameters: label layouts no training slice had,
    # with images that truly match them, so the labels rather than the place set the intensity.
    paste_fraction: float = 0.5
    paste_mm: tuple[float, float] = (6.0, 24.0)
    # The share of samples whose label channels carry the data's tissue fractions (partial volume: each voxel's
    # share of every class) instead of the one-hot of its hard labels; needs slices with fractions. Both kinds
    # train the same network, so it takes painted labels and fractions alike.
    fraction_share: float = 0.0
    # Inpainting samples given another scanner's look (bias field, gamma, blur, noise; see augmentation.scanner_look).
    scanner_fraction: float = 0.5
    # Geometric augmentation (elastic warp, rotation, scaling): the fraction of samples warped, and how the image
    # is resampled ("bicubic", "bilinear"; labels always by nearest neighbour). Bilinear resampling is a low-pass
    # filter: on the demo's slices it cut the gradient inside tissues to 0.92x and darkened the brain's edge,
    # and a network trained on it renders smooth tissues; bicubic keeps the texture (1.01x).
    warp_fraction: float = 0.7
    warp_interpolation: str = "bicubic"
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    workers: int = 0  # processes making batches ahead of use (0: in this process)
    mixed_precision: bool = False  # bfloat16 autocast on a GPU (weights and optimiser stay float32)
    time_limit_s: float | None = None  # stop early, model written, when a lease of machine time runs out
