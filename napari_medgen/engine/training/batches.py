"""Training batches: random augmented slices with their conditioning, as network input stacks, each batch
drawn from its own seed so that worker processes make them ahead of use and a resumed run draws the same ones."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ..diffusion.denoiser import conditioning_stack
from ..model.card import ModelCard
from .augmentation import augmentation, paste_tissue, random_region, scanner_look
from .config import TrainingConfig
from .data import TrainingSlices


class TrainingBatches:
    """Random batches of augmented slices with their conditioning, as network input stacks.

    Batch `step` draws all its randomness from a generator seeded by (seed, step) (MONAI's transforms
    are reseeded from it): any batch can be made alone, in any process and order, so batches are made
    in parallel worker processes (`batch_stream`) and a resumed run draws exactly the batches it would have.
    """

    def __init__(self, card: ModelCard, data: TrainingSlices, config: TrainingConfig, seed: int) -> None:
        self.card, self.data, self.config, self.seed = card, data, config, int(seed)
        # Fractions travel with every sample when some are to be given them, so each draw is the same whether
        # or not this sample's label channels end up carrying them.
        self.fractions = data.fractions if config.fraction_share > 0 else None
        self.augment = augmentation(config.warp_fraction, config.warp_interpolation, self.fractions is not None)
        self.scanner_look = scanner_look()
        divisor = card.downsampling_factor
        height, width = data.images.shape[1:]
        self.padded = (int(math.ceil(height / divisor) * divisor), int(math.ceil(width / divisor) * divisor))
        self.crop = config.crop_size

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch `step`: (clean images (B, 1, H, W), conditioning (B, C, H, W), each slice's plane (B,), the
        index in the card's `orientations`, 0 where it has none)."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, int(step)])
        # Which samples get fractions is drawn apart, so the slices, warps, crops and regions of a batch are the
        # same whatever the share (and the same as a run on hard labels alone).
        fraction_rng = np.random.default_rng([self.seed, int(step), 1])
        self.augment.set_random_state(seed=int(rng.integers(2**32)))
        self.scanner_look.set_random_state(seed=int(rng.integers(2**32)))
        crop = self.crop
        if cfg.field_of_view_fraction and rng.random() < cfg.field_of_view_fraction:
            # A smaller field of view for the whole batch: a scan that shows part of the anatomy (a block,
            # a slab) must not look foreign to a network trained on whole slices.
            divisor = self.card.downsampling_factor
            sizes = np.arange(cfg.field_of_view_px[0] // divisor, cfg.field_of_view_px[1] // divisor + 1) * divisor
            crop = int(rng.choice(sizes))
        images, labels, regions, positions, planes = [], [], [], [], []
        for _ in range(cfg.batch_size):
            i = int(rng.integers(len(self.data.images)))
            sample = {"image": (self.data.images[i][None] + 1.0) / 2.0, "label": self.data.labels[i][None].astype(np.float32)}
            if self.fractions is not None:
                sample["fractions"] = self.fractions[i]
            sample = self.augment(sample)
            image = np.asarray(sample["image"])[0] * 2.0 - 1.0
            label = np.rint(np.asarray(sample["label"])[0]).astype(np.int64)
            fractions = None
            if self.fractions is not None:
                # Outside the warped slice the padding is background: all of the voxel is class 0.
                fractions = np.clip(np.asarray(sample["fractions"], np.float32), 0.0, 1.0)
                fractions[0] = np.clip(1.0 - fractions[1:].sum(axis=0), 0.0, 1.0)
            image, label, fractions = self._pad_and_crop(image, label, rng, crop, fractions)
            if rng.random() < cfg.paste_fraction:
                for _ in range(int(rng.integers(1, 4))):
                    j = int(rng.integers(len(self.data.images)))
                    diameter = rng.uniform(*cfg.paste_mm) / self.card.spacing_mm[0]
                    pair = None if fractions is None else (fractions, self.fractions[j])
                    image, label, fractions = paste_tissue(
                        image, label, self.data.images[j], self.data.labels[j], diameter, rng, pair)
            condition = label
            if fractions is not None and fraction_rng.random() < cfg.fraction_share:
                condition = fractions
            if rng.random() < cfg.generation_fraction:
                region = np.ones(image.shape, bool)
            else:
                region = random_region(image.shape, self.card.spacing_mm[0], cfg.region_mm, rng)
                if rng.random() < cfg.scanner_fraction:
                    looked = self.scanner_look({"image": np.clip(image, -1, 1)[None] * 0.5 + 0.5})
                    image = np.asarray(looked["image"])[0] * 2.0 - 1.0
            if rng.random() < cfg.condition_dropout:
                condition = None
            images.append(np.clip(image, -1, 1).astype(np.float32))
            labels.append(condition)
            regions.append(region)
            positions.append(self.data.positions[i])
            planes.append(0 if self.data.orientations is None else int(self.data.orientations[i]))
        stacks = []
        for image, label, region, position in zip(images, labels, regions, positions, strict=True):
            stack = conditioning_stack(
                self.card,
                None if label is None else label[None],
                image[None],
                region[None].astype(np.float32),
                np.array([position], np.float32),
            )
            stacks.append(stack)
        return (
            torch.from_numpy(np.stack(images)[:, None]),
            torch.from_numpy(np.concatenate(stacks)),
            torch.tensor(planes, dtype=torch.long),
        )

    def _pad_and_crop(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator, crop: int | None,
        fractions: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        height, width = self.padded
        pad = ((0, height - image.shape[0]), (0, width - image.shape[1]))
        image = np.pad(image, pad, constant_values=-1.0)
        label = np.pad(label, pad)
        if fractions is not None:
            fractions = np.pad(fractions, ((0, 0),) + pad)
            fractions[0] = 1.0 - fractions[1:].sum(axis=0)  # the padding is background
        if crop is None or crop >= min(height, width):
            return image, label, fractions
        # Crops centred on the brain more often than not: background-only crops teach little.
        foreground = np.argwhere(label > 0)
        if len(foreground) and rng.random() < 0.9:
            cy, cx = foreground[int(rng.integers(len(foreground)))]
        else:
            cy, cx = rng.integers(height), rng.integers(width)
        y0 = int(np.clip(cy - crop // 2, 0, height - crop))
        x0 = int(np.clip(cx - crop // 2, 0, width - crop))
        window = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        return image[window], label[window], None if fractions is None else fractions[(slice(None),) + window]


class _Batches(torch.utils.data.Dataset):
    """Batches start..stop-1 as a map-style data set, for a DataLoader's worker processes."""

    def __init__(self, batches: TrainingBatches, start: int, stop: int) -> None:
        self.batches, self.start, self.stop = batches, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.batches.batch(self.start + index)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # each worker is one process of many: no oversubscription


def batch_stream(
    batches: TrainingBatches, start: int, stop: int, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Batches `start` .. `stop` - 1 in order; made by `workers` processes ahead of use when > 0 (a GPU
    outruns one core's augmentation), in this process otherwise. The same batches either way."""
    if workers <= 0:
        return (batches.batch(step) for step in range(start, stop))
    loader = torch.utils.data.DataLoader(
        _Batches(batches, start, stop),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=4,
        worker_init_fn=_one_thread,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(loader)
