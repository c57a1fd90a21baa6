"""Training data: image / label-map pairs found on disk, loaded as slices on the model's grid, augmented in batches.

Data layout (`find_training_pairs`): a folder with nnU-Net's ``imagesTr/<case>_0000.ext`` and
``labelsTr/<case>.ext``; or a flat folder of ``<case>_image.ext`` / ``<case>_label.ext`` (also
``_labels``, ``_seg``); or a JSON manifest ``[{"image": ..., "label": ...}, ...]`` (paths relative to
the manifest).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..diffusion.denoiser import conditioning_stack
from ..errors import MedgenError, VolumeReadError
from ..intensity import intensity_map_for
from ..io import read_volume, volume_extension
from ..label_tools import check_fraction_values, fractions_on_grid
from ..model.card import ModelCard
from ..orientation import to_canonical
from ..resample import grid_at_spacing, resample
from ..volume import Volume

if TYPE_CHECKING:
    from .loop import TrainingConfig


@dataclass
class TrainingSlices:
    """Training slices on the model's grid: images in [-1, 1], integer labels, positions in [0, 1], and
    optionally each voxel's tissue fractions (partial volume; the labels are their argmax)."""

    images: np.ndarray  # (N, H, W) float32
    labels: np.ndarray  # (N, H, W) int64
    positions: np.ndarray  # (N,)
    description: dict[str, Any] = field(default_factory=dict)
    fractions: np.ndarray | None = None  # (N, classes, H, W) float32, summing to 1 over classes


def demo_training_pairs() -> list[tuple[Path, Path]]:
    """The shipped sample brain as the demo preset's training data."""
    from ..._paths import sample_dir

    return [(sample_dir() / "mni152_t1_2mm.nii.gz", sample_dir() / "mni152_tissue_labels_2mm.nii.gz")]


def fraction_paths(label_path: Path, classes: int) -> list[Path]:
    """Where a label map's tissue fraction maps lie: beside it, ``<label map name>_fraction_<k><ext>`` for each
    class k from 1 (the sample brain's ``mni152_tissue_labels_2mm_fraction_1.nii.gz`` ...)."""
    ext = volume_extension(label_path) or ""
    stem = label_path.name[: -len(ext)] if ext else label_path.name
    return [label_path.parent / f"{stem}_fraction_{k}{ext}" for k in range(1, classes)]


def find_training_fractions(pairs: list[tuple[Path, Path]], classes: int) -> list[list[Path]]:
    """Each pair's tissue fraction maps (classes 1 .. classes - 1), the files `fraction_paths` names beside its
    label map. Every case needs all of them."""
    found = []
    for _, label_path in pairs:
        paths = fraction_paths(label_path, classes)
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise MedgenError(
                f"case {label_path.name}: training on tissue fractions needs its {classes - 1} fraction maps beside the "
                f"label map; missing {', '.join(missing)}"
            )
        found.append(paths)
    return found


# -- data -----------------------------------------------------------------------------------------
def find_training_pairs(data: str | Path) -> list[tuple[Path, Path]]:
    """Image / label-map file pairs from a folder or a JSON manifest (see the module docstring)."""
    data = Path(data)
    if data.is_file() and data.suffix == ".json":
        try:
            entries = json.loads(data.read_text())
            pairs = [(data.parent / e["image"], data.parent / e["label"]) for e in entries]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise MedgenError(f"{data}: a manifest is a JSON list of {{\"image\": ..., \"label\": ...}} ({error})") from None
    elif (data / "imagesTr").is_dir() and (data / "labelsTr").is_dir():
        pairs = []
        for image in sorted((data / "imagesTr").iterdir()):
            ext = volume_extension(image)
            stem = image.name[: -len(ext)] if ext else ""
            if not ext or not stem.endswith("_0000"):
                continue
            label = data / "labelsTr" / f"{stem[:-5]}{ext}"
            if label.exists():
                pairs.append((image, label))
    elif data.is_dir():
        pairs = []
        for image in sorted(data.iterdir()):
            ext = volume_extension(image)
            stem = image.name[: -len(ext)] if ext else ""
            if not stem.endswith("_image"):
                continue
            case = stem[: -len("_image")]
            for suffix in ("_label", "_labels", "_seg"):
                label = data / f"{case}{suffix}{ext}"
                if label.exists():
                    pairs.append((image, label))
                    break
    else:
        raise VolumeReadError(f"{data}: no such training data folder or manifest")
    missing = [str(p) for pair in pairs for p in pair if not p.exists()]
    if missing:
        raise VolumeReadError(f"training files missing: {', '.join(missing[:3])}")
    if not pairs:
        raise MedgenError(
            f"{data}: no image / label pairs found; name them <case>_image.nii.gz and <case>_label.nii.gz, "
            "use nnU-Net's imagesTr/labelsTr layout, or give a JSON manifest"
        )
    return pairs


def load_training_slices(
    card: ModelCard, pairs: list[tuple[Path, Path]], fractions: list[list[Path | Volume]] | None = None
) -> TrainingSlices:
    """Read each pair, bring it to canonical orientation and the model's in-plane spacing, normalise.

    `fractions`, per pair, the fraction of each voxel that is each class from 1 on (probability maps on the
    pair's grid, as files or volumes; read one case at a time); the background takes the rest. They are
    resampled linearly beside the labels.
    """
    if fractions is not None and len(fractions) != len(pairs):
        raise MedgenError(f"tissue fractions for {len(fractions)} cases, but {len(pairs)} image / label pairs")
    images, labels, positions, shares = [], [], [], []
    shapes = []
    for case, (image_path, label_path) in enumerate(pairs):
        image, label_map = read_volume(image_path), read_volume(label_path)
        image.require_same_grid(label_map, what=f"label map {label_path.name}", ref=f"image {image_path.name}")
        card.label_schema.validate_label_map(label_map.array, what=f"label map {label_path.name}")
        image, label_map = to_canonical(image), to_canonical(label_map)
        grid = grid_at_spacing(image, (card.spacing_mm[0], card.spacing_mm[1], image.spacing[2]))
        image_w = resample(image, grid, "linear").array
        labels_w = resample(label_map, grid, "nearest").array.astype(np.int64)
        normalised = intensity_map_for(card.normalization, image.array.astype(np.float32)).forward(image_w)
        shares_w = None
        if fractions is not None:
            shares_w = _fractions_on(fractions[case], label_map, grid, card.num_label_channels, label_path.name)
        count = labels_w.shape[0]
        for z in range(count):
            if labels_w[z].any():
                images.append(normalised[z])
                labels.append(labels_w[z])
                positions.append(z / max(count - 1, 1))
                if shares_w is not None:
                    shares.append(shares_w[:, z])
        shapes.append(labels_w.shape)
    height = max(a.shape[0] for a in images)
    width = max(a.shape[1] for a in images)
    pad = lambda a, value: np.pad(a, ((0, height - a.shape[0]), (0, width - a.shape[1])), constant_values=value)
    padded_shares = None
    if shares:
        padded_shares = np.zeros((len(shares), card.num_label_channels, height, width), np.float32)
        padded_shares[:, 0] = 1.0
        for n, share in enumerate(shares):
            padded_shares[n, :, : share.shape[1], : share.shape[2]] = share
    return TrainingSlices(
        fractions=padded_shares,
        images=np.stack([pad(a, -1.0) for a in images]).astype(np.float32),
        labels=np.stack([pad(a, 0) for a in labels]),
        positions=np.asarray(positions, np.float32),
        description={
            "pairs": [[str(i.name), str(label.name)] for i, label in pairs],
            "slices": len(images),
            "grid_shapes": [list(s) for s in shapes],
            "spacing_mm": card.spacing_mm,
        },
    )


def _fractions_on(maps: list[Path | Volume], label_map: Volume, grid: Any, channels: int, name: str) -> np.ndarray:
    """(channels, z, y, x) fractions on `grid` from the maps of classes 1.. on the (canonical) label map's grid."""
    canonical = []
    for k, tissue in enumerate(maps, start=1):
        what = f"tissue fraction map {tissue.name if isinstance(tissue, Path) else k} of {name}"
        tissue = to_canonical(read_volume(tissue) if isinstance(tissue, Path) else tissue)
        check_fraction_values(tissue, what)
        tissue.require_same_grid(label_map, what=what, ref=f"label map {name}")
        canonical.append(tissue)
    return fractions_on_grid(canonical, grid, channels)


# -- augmentation and masks -----------------------------------------------------------------------
def _augmentation(warp_fraction: float = 0.7, warp_interpolation: str = "bicubic", fractions: bool = False):
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


def _scanner_look():
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
        self.augment = _augmentation(config.warp_fraction, config.warp_interpolation, self.fractions is not None)
        self.scanner_look = _scanner_look()
        divisor = card.downsampling_factor
        height, width = data.images.shape[1:]
        self.padded = (int(math.ceil(height / divisor) * divisor), int(math.ceil(width / divisor) * divisor))
        self.crop = config.crop_size

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `step`: (clean images (B, 1, H, W), conditioning (B, C, H, W))."""
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
        images, labels, regions, positions = [], [], [], []
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
        return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.concatenate(stacks))

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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches.batch(self.start + index)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # each worker is one process of many: no oversubscription


def batch_stream(batches: TrainingBatches, start: int, stop: int, workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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


def save_slices(data: TrainingSlices, path: str | Path) -> Path:
    """Prepared training slices to one ``.npz`` file (arrays, and the description as JSON): read, resampled
    and normalised once, trained on many times (and carried to a GPU machine without the image readers)."""
    path = Path(path)
    extra = {} if data.fractions is None else {"fractions": data.fractions.astype(np.float16)}
    np.savez_compressed(
        path, images=data.images, labels=data.labels.astype(np.int32), positions=data.positions,
        description=np.array(json.dumps(data.description)), **extra,
    )
    return path


def load_slices(path: str | Path) -> TrainingSlices:
    """Training slices saved by `save_slices`."""
    try:
        with np.load(Path(path), allow_pickle=False) as saved:
            return TrainingSlices(
                images=saved["images"].astype(np.float32),
                labels=saved["labels"].astype(np.int64),
                positions=saved["positions"].astype(np.float32),
                description=json.loads(str(saved["description"])),
                fractions=saved["fractions"].astype(np.float32) if "fractions" in saved.files else None,
            )
    except (OSError, KeyError, ValueError) as error:
        raise VolumeReadError(f"{path}: not a file of prepared training slices ({error})") from None
