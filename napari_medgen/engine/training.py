"""Training a slice-wise (2-D) anatomy-conditioned diffusion model on image / label-map pairs.

One network serves both tasks with one pass per step: its input channels are the noisy slice, the
label map one-hot, a known image with a random region voided plus that region's mask (a fully voided
image is plain generation), and a sinusoidal embedding of the slice's position along the scan axis.
The label map is dropped (zeroed) in a fraction of samples, so classifier-free guidance works.
Augmentation (MONAI): flips, small rotations, scaling and elastic deformation applied to the image
and the labels together, and a mild intensity jitter. Weights are averaged (EMA) and the EMA weights
are what the model folder gets.

`train` is a generator like the samplers: it yields `TrainingEvent`s and returns the model folder.
Checkpoints (safetensors + JSON, no pickle) let a run resume where it stopped.

Data layout (`find_training_pairs`): a folder with nnU-Net's ``imagesTr/<case>_0000.ext`` and
``labelsTr/<case>.ext``; or a flat folder of ``<case>_image.ext`` / ``<case>_label.ext`` (also
``_labels``, ``_seg``); or a JSON manifest ``[{"image": ..., "label": ...}, ...]`` (paths relative to
the manifest).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .card import ModelCard
from .denoiser import conditioning_stack
from .errors import MedgenError, VolumeReadError
from .intensity import intensity_map_for
from .io import read_volume, volume_extension
from .labels import TISSUE_SCHEMA
from .models import build_networks, resolve_device, save_model
from .orientation import to_canonical
from .resample import grid_at_spacing, resample
from .sampling import NoiseSchedule

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainingConfig:
    """Optimisation settings (the card says what the model is; this says how it is trained)."""

    steps: int = 3000
    batch_size: int = 12
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    ema_decay: float = 0.998
    crop_size: int | None = 64  # random square crops (px) of the slices; None: whole slices
    condition_dropout: float = 0.15
    generation_fraction: float = 0.5  # samples with the image fully voided (plain generation)
    region_mm: tuple[float, float] = (5.0, 40.0)  # sizes of the random inpainting regions
    # Copy-paste: the fraction of samples given one to three discs of tissue (image and labels
    # together) from elsewhere in the data, and their diameters: label layouts no training slice had,
    # with images that truly match them, so the labels rather than the place set the intensity.
    paste_fraction: float = 0.5
    paste_mm: tuple[float, float] = (6.0, 24.0)
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"
    threads: int | None = None


@dataclass
class TrainingEvent:
    step: int
    total: int
    loss: float
    message: str = ""


@dataclass
class TrainingSlices:
    """Training slices on the model's grid: images in [-1, 1], integer labels, positions in [0, 1]."""

    images: np.ndarray  # (N, H, W) float32
    labels: np.ndarray  # (N, H, W) int64
    positions: np.ndarray  # (N,)
    description: dict[str, Any] = field(default_factory=dict)


# -- presets --------------------------------------------------------------------------------------
def brain_t1_demo_card() -> ModelCard:
    """The shipped demo model: 2-D, 2 mm, T1 brain with CSF / grey / white matter labels."""
    n_labels = TISSUE_SCHEMA.max_index + 1
    return ModelCard.model_validate(
        {
            "name": "brain-t1-demo",
            "version": "1.1.0",
            "description": "Slice-wise T1 brain MRI generator and inpainter conditioned on CSF / grey / white "
            "matter labels and slice position; trained on the ICBM152 2009 template at 2 mm.",
            "license": "BSD-3-Clause (weights); training data: ICBM152 2009 licence, see resources/sample",
            "network": {
                "class_name": "DiffusionModelUNet",
                "kwargs": {
                    "spatial_dims": 2,
                    "in_channels": 1 + n_labels + 2 + 8,
                    "out_channels": 1,
                    # Small enough to train on a 2-core CPU in under an hour, and to run at
                    # interactive speed there; attention only at the coarsest level.
                    "channels": [16, 32, 64],
                    "attention_levels": [False, False, True],
                    "num_res_blocks": 2,
                    "norm_num_groups": 8,
                    "num_head_channels": 16,
                },
            },
            "spatial_dims": 2,
            "tile_size": [64, 64],  # the training crops (set from the config when training)
            "spacing_mm": [2.0, 2.0],
            "modality": "MR",
            "normalization": {"kind": "mri_percentile", "high_percentile": 99.5, "output_min": 0.0, "output_max": 1000.0},
            "label_schema": {"classes": TISSUE_SCHEMA.to_json()},
            "conditioning": {
                "label_map": "channels",
                "known_image": True,
                "slice_position": True,
                "position_frequencies": 4,
                "condition_dropout": 0.15,
                # Measured with benchmarks/quality.py: guidance 2 follows the painted anatomy
                # markedly better than none at the same steps.
                "default_guidance": 2.0,
            },
            "scheduler": {
                "class_name": "DDPMScheduler",
                "num_train_timesteps": 1000,
                "schedule": "linear_beta",
                "beta_start": 0.0001,
                "beta_end": 0.02,
                # v-prediction: an epsilon model's image estimate at high noise is its noise error
                # divided by sqrt(alpha_bar) (x60 at t=900); brain-t1-demo 1.0 trained for epsilon had an
                # RMS error of 0.86 there, and its 20-step samples kept that as speckle (Dice 0.55).
                "prediction_type": "v_prediction",
            },
            "tasks": ["generate", "inpaint"],
        }
    )


PRESETS = {"brain-t1-demo": brain_t1_demo_card}


def preset_card(name: str) -> ModelCard:
    if name not in PRESETS:
        raise MedgenError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


def demo_training_pairs() -> list[tuple[Path, Path]]:
    """The shipped sample brain as the demo preset's training data."""
    from .._paths import sample_dir

    return [(sample_dir() / "mni152_t1_2mm.nii.gz", sample_dir() / "mni152_tissue_labels_2mm.nii.gz")]


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


def load_training_slices(card: ModelCard, pairs: list[tuple[Path, Path]]) -> TrainingSlices:
    """Read each pair, bring it to canonical orientation and the model's in-plane spacing, normalise."""
    images, labels, positions = [], [], []
    shapes = []
    for image_path, label_path in pairs:
        image, label_map = read_volume(image_path), read_volume(label_path)
        image.require_same_grid(label_map, what=f"label map {label_path.name}", ref=f"image {image_path.name}")
        card.label_schema.validate_label_map(label_map.array, what=f"label map {label_path.name}")
        image, label_map = to_canonical(image), to_canonical(label_map)
        grid = grid_at_spacing(image, (card.spacing_mm[0], card.spacing_mm[1], image.spacing[2]))
        image_w = resample(image, grid, "linear").array
        labels_w = resample(label_map, grid, "nearest").array.astype(np.int64)
        normalised = intensity_map_for(card.normalization, image.array.astype(np.float32)).forward(image_w)
        count = labels_w.shape[0]
        for z in range(count):
            if labels_w[z].any():
                images.append(normalised[z])
                labels.append(labels_w[z])
                positions.append(z / max(count - 1, 1))
        shapes.append(labels_w.shape)
    height = max(a.shape[0] for a in images)
    width = max(a.shape[1] for a in images)
    pad = lambda a, value: np.pad(a, ((0, height - a.shape[0]), (0, width - a.shape[1])), constant_values=value)  # noqa: E731
    return TrainingSlices(
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


# -- augmentation and masks -----------------------------------------------------------------------
def _augmentation(seed: int):
    """Geometric augmentation of image and labels together, then a mild intensity jitter (MONAI)."""
    from monai.transforms import Compose, Rand2DElasticd, RandAdjustContrastd, RandFlipd, RandScaleIntensityd

    transforms = Compose(
        [
            RandFlipd(keys=["image", "label"], spatial_axis=1, prob=0.5),  # left-right
            RandFlipd(keys=["image", "label"], spatial_axis=0, prob=0.1),  # anterior-posterior
            Rand2DElasticd(
                keys=["image", "label"],
                spacing=(16, 16),
                magnitude_range=(0.0, 2.0),
                prob=0.7,
                rotate_range=0.2,
                scale_range=0.1,
                translate_range=8,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            ),
            RandScaleIntensityd(keys=["image"], factors=0.05, prob=0.5),
            RandAdjustContrastd(keys=["image"], gamma=(0.9, 1.1), prob=0.3),
        ]
    )
    transforms.set_random_state(seed=seed)
    return transforms


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
) -> tuple[np.ndarray, np.ndarray]:
    """Copy a disc of tissue (image and labels together) from a random place in the source slice into
    a random place inside the target's anatomy: new label layouts with images that truly match them."""
    inside, donors = np.argwhere(label > 0), np.argwhere(source_label > 0)
    if not len(inside) or not len(donors):
        return image, label
    (ty, tx), (sy, sx) = inside[rng.integers(len(inside))], donors[rng.integers(len(donors))]
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    disc = (yy - ty) ** 2 + (xx - tx) ** 2 <= (diameter_px / 2) ** 2
    src_y, src_x = yy + (sy - ty), xx + (sx - tx)
    disc &= (src_y >= 0) & (src_y < source_image.shape[0]) & (src_x >= 0) & (src_x < source_image.shape[1])
    image, label = image.copy(), label.copy()
    image[disc] = source_image[src_y[disc], src_x[disc]]
    label[disc] = source_label[src_y[disc], src_x[disc]]
    return image, label


class _Batches:
    """Random batches of augmented slices with their conditioning, as network input stacks."""

    def __init__(self, card: ModelCard, data: TrainingSlices, config: TrainingConfig, seed: int) -> None:
        self.card, self.data, self.config = card, data, config
        self.rng = np.random.default_rng(seed)
        self.augment = _augmentation(seed)
        divisor = 2 ** (len(card.network.kwargs["channels"]) - 1)
        height, width = data.images.shape[1:]
        self.padded = (int(math.ceil(height / divisor) * divisor), int(math.ceil(width / divisor) * divisor))
        self.crop = config.crop_size

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean images (B, 1, H, W), conditioning (B, C, H, W))."""
        cfg = self.config
        images, labels, regions, positions = [], [], [], []
        for _ in range(cfg.batch_size):
            i = int(self.rng.integers(len(self.data.images)))
            sample = self.augment(
                {"image": (self.data.images[i][None] + 1.0) / 2.0, "label": self.data.labels[i][None].astype(np.float32)}
            )
            image = np.asarray(sample["image"])[0] * 2.0 - 1.0
            label = np.rint(np.asarray(sample["label"])[0]).astype(np.int64)
            image, label = self._pad_and_crop(image, label)
            if self.rng.random() < cfg.paste_fraction:
                for _ in range(int(self.rng.integers(1, 4))):
                    j = int(self.rng.integers(len(self.data.images)))
                    diameter = self.rng.uniform(*cfg.paste_mm) / self.card.spacing_mm[0]
                    image, label = paste_tissue(image, label, self.data.images[j], self.data.labels[j], diameter, self.rng)
            if self.rng.random() < cfg.generation_fraction:
                region = np.ones(image.shape, bool)
            else:
                region = random_region(image.shape, self.card.spacing_mm[0], cfg.region_mm, self.rng)
            if self.rng.random() < cfg.condition_dropout:
                label = None
            images.append(np.clip(image, -1, 1))
            labels.append(label)
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

    def _pad_and_crop(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = self.padded
        image = np.pad(image, ((0, height - image.shape[0]), (0, width - image.shape[1])), constant_values=-1.0)
        label = np.pad(label, ((0, height - label.shape[0]), (0, width - label.shape[1])))
        if self.crop is None or self.crop >= min(height, width):
            return image, label
        # Crops centred on the brain more often than not: background-only crops teach little.
        foreground = np.argwhere(label > 0)
        if len(foreground) and self.rng.random() < 0.9:
            cy, cx = foreground[int(self.rng.integers(len(foreground)))]
        else:
            cy, cx = self.rng.integers(height), self.rng.integers(width)
        y0 = int(np.clip(cy - self.crop // 2, 0, height - self.crop))
        x0 = int(np.clip(cx - self.crop // 2, 0, width - self.crop))
        return image[y0 : y0 + self.crop, x0 : x0 + self.crop], label[y0 : y0 + self.crop, x0 : x0 + self.crop]


# -- checkpoints ----------------------------------------------------------------------------------
def _save_checkpoint(folder: Path, network, ema, optimizer, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"network.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()})
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tmp = folder / ".training_state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "training_state.safetensors")
    (folder / "training_state.json").write_text(json.dumps(state, indent=1))


def _load_checkpoint(folder: Path, network, ema, optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "training_state.safetensors"))
    state = json.loads((folder / "training_state.json").read_text())
    network.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("network.")})
    ema.module.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    ema.n_averaged.fill_(state["step"])
    optimizer_state = optimizer.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    optimizer_state["state"] = per_param
    optimizer.load_state_dict(optimizer_state)
    return state


_TARGET_NAMES = {"epsilon": "noise", "v_prediction": "velocity v", "sample": "clean image"}


def _loss_curve(losses: list[float], path: Path, target: str = "network") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(losses) + 1)
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, alpha=0.3, lw=0.8, label="loss")
    ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"MSE of the predicted {_TARGET_NAMES.get(target, target)}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- the loop -------------------------------------------------------------------------------------
def train(
    card: ModelCard,
    pairs: list[tuple[Path, Path]],
    out: str | Path,
    config: TrainingConfig | None = None,
    resume: bool = False,
    data_description: str = "",
    checkpoint_dir: str | Path | None = None,
) -> Generator[TrainingEvent, None, Path]:
    """Train `card`'s network on `pairs`; yields progress and returns the model folder `out`.

    Checkpoints go to `checkpoint_dir` (default ``out/checkpoint``); keep them out of a model folder
    that is shipped inside the package.
    """
    config = config or TrainingConfig()
    out = Path(out)
    if card.spatial_dims != 2 or card.network.class_name != "DiffusionModelUNet" or card.conditioning.label_map != "channels":
        raise MedgenError(
            "training supports 2-D DiffusionModelUNet models with the label map as input channels; "
            f"the card asks for a {card.spatial_dims}-D {card.network.class_name} with label_map={card.conditioning.label_map!r}"
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    card = card.model_copy(deep=True)
    card.conditioning.condition_dropout = config.condition_dropout
    device = resolve_device(config.device)
    data = load_training_slices(card, pairs)
    # The card records the frame the network saw in training: inpainting never hands it a smaller one.
    divisor = 2 ** (len(card.network.kwargs["channels"]) - 1)
    padded = [int(math.ceil(size / divisor) * divisor) for size in data.images.shape[1:]]
    if config.crop_size is not None and config.crop_size < min(padded):
        card.tile_size = [int(config.crop_size)] * 2
    else:
        card.tile_size = [padded[1], padded[0]]  # (x, y)
    torch.manual_seed(config.seed)
    network = build_networks(card)["network"].to(device)
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = NoiseSchedule(card.scheduler)
    alphas = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32)
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else out / CHECKPOINT_DIR
    start_step, losses, seconds = 0, [], 0.0
    if resume:
        if not (checkpoint / "training_state.json").exists():
            raise MedgenError(f"{out}: no checkpoint to resume from; start without --resume")
        state = _load_checkpoint(checkpoint, network, ema, optimizer)
        start_step, losses, seconds = state["step"], state["losses"], state.get("seconds", 0.0)
    batches = _Batches(card, data, config, seed=config.seed + start_step)
    generator = torch.Generator().manual_seed(config.seed + start_step)

    def learning_rate(step: int) -> float:
        if step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    network.train()
    started = time.perf_counter() - seconds
    for step in range(start_step, config.steps):
        clean, conditioning = batches.next()
        clean, conditioning = clean.to(device), conditioning.to(device)
        t = torch.randint(0, schedule.num_train_timesteps, (clean.shape[0],), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * clean + (1 - a).sqrt() * noise.to(device)
        target = {"epsilon": noise, "sample": clean.cpu(), "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * clean.cpu()}[
            card.scheduler.prediction_type
        ].to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        prediction = network(torch.cat([noisy, conditioning], 1), t.to(device))
        loss = torch.nn.functional.mse_loss(prediction.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        ema.update_parameters(network)
        losses.append(loss.item())
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            elapsed = time.perf_counter() - started
            _save_checkpoint(checkpoint, network, ema, optimizer, {"step": done, "losses": losses, "seconds": elapsed, "config": asdict(config)})
            # The curve so far goes beside the checkpoint: the model folder is written only at the end.
            _loss_curve(losses, checkpoint / "loss_curve.png", card.scheduler.prediction_type)
        yield TrainingEvent(done, config.steps, float(np.mean(losses[-25:])), f"loss {np.mean(losses[-25:]):.4f}")
    elapsed = time.perf_counter() - started
    card.provenance = {
        **card.provenance,
        "training_data": data_description or "image / label pairs",
        "training_slices": data.description,
        "trained": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": f"napari-medgen {__version__}",
        "training": {
            **{k: v for k, v in asdict(config).items() if k not in ("device", "threads")},
            "device": str(device),
            "seconds": round(elapsed, 1),
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
        },
    }
    save_model(card, {"network": ema.module}, out)
    _loss_curve(losses, out / "loss_curve.png", card.scheduler.prediction_type)
    return out
