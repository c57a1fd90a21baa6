"""Training a slice-wise (2-D) anatomy-conditioned diffusion model on image / label-map pairs.

One network serves both tasks with one pass per step: its input channels are the noisy slice, the
label map one-hot, a known image with a random region voided plus that region's mask (a fully voided
image is plain generation), and a sinusoidal embedding of the slice's position along the scan axis.
The label map is dropped (zeroed) in a fraction of samples, so classifier-free guidance works.
Augmentation (MONAI): flips, small rotations, scaling and elastic deformation applied to the image
and the labels together, and a mild intensity jitter. Weights are averaged (EMA) and the EMA weights
are what the model folder gets.

`train` is a generator like the samplers: it yields `TrainingEvent`s and returns the model folder.
Checkpoints (safetensors + JSON, no pickle; see `checkpoint`) hold the weights, the optimiser, the
learning-rate schedule and the random generators, so a resumed run continues the very same run.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from ..diffusion.schedule import NoiseSchedule
from ..errors import MedgenError
from ..model.card import ModelCard
from ..model.device import resolve_device
from ..model.networks import build_networks
from ..model.weights import save_model
from .checkpoint import has_checkpoint, load_checkpoint, save_run_checkpoint
from ..intensity import label_levels
from .batches import TrainingBatches, batch_stream
from .config import TrainingConfig
from .data import TrainingSlices, find_training_fractions, load_training_slices
from .optimizer import build_lr_schedule, build_optimizer, resume_lr_schedule, update

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainingEvent:
    step: int
    total: int
    loss: float
    message: str = ""


_TARGET_NAMES = {"epsilon": "noise", "v_prediction": "velocity v", "sample": "clean image"}


def save_loss_curve(losses: list[float], path: Path, target: str = "network") -> None:
    """A plot of the losses so far (and their running mean) against the step, on a log scale, as a PNG: written
    beside each checkpoint and into the model folder, by training and distillation alike."""
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


def _new_plane_embedding(card: ModelCard, earlier: ModelCard) -> tuple[str, ...]:
    """The weights a fine-tune adds to the earlier model: the plane embedding when the earlier one had none."""
    if card.conditioning.orientations and not earlier.conditioning.orientations:
        return ("network.class_embedding.weight",)
    return ()


# -- the loop -------------------------------------------------------------------------------------
def train(
    card: ModelCard,
    pairs: list[tuple[Path, Path]] | TrainingSlices,
    out: str | Path,
    config: TrainingConfig | None = None,
    resume: bool = False,
    data_description: str = "",
    checkpoint_dir: str | Path | None = None,
    initial: str | Path | None = None,
) -> Generator[TrainingEvent, None, Path]:
    """Train `card`'s network on `pairs` (or slices prepared from them); yields progress and returns the
    model folder `out`. `initial`: a model folder of the same network whose weights training starts from
    (a further stage of a run whose checkpoint is gone, e.g. on a GPU machine given back); its card's
    training record is kept in the new card's provenance.

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
    if config.warp_interpolation not in ("bicubic", "bilinear", "nearest") or not 0.0 <= config.warp_fraction <= 1.0:
        raise MedgenError(
            f"warp_interpolation must be bicubic, bilinear or nearest and warp_fraction between 0 and 1; got "
            f"{config.warp_interpolation!r} and {config.warp_fraction}"
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    card = card.model_copy(deep=True)
    card.conditioning.condition_dropout = config.condition_dropout
    device = resolve_device(config.device)
    if not 0.0 <= config.fraction_share <= 1.0:
        raise MedgenError(f"fraction_share is the share of samples given tissue fractions, 0..1; got {config.fraction_share}")
    if isinstance(pairs, TrainingSlices):
        data = pairs
    else:  # fraction maps, when asked for, lie beside each label map (found before any image is read)
        fractions = find_training_fractions(pairs, card.num_label_channels) if config.fraction_share > 0 else None
        data = load_training_slices(card, pairs, fractions)
    if config.fraction_share > 0 and data.fractions is None:
        raise MedgenError(
            "fraction_share > 0 needs prepared slices that hold tissue fractions (these have none); prepare them from "
            "image / label pairs whose label maps have their fraction maps beside them, or set fraction_share to 0"
        )
    if data.fractions is not None and config.fraction_share > 0 and data.fractions.shape[1] != card.num_label_channels:
        raise MedgenError(
            f"the prepared slices hold fractions of {data.fractions.shape[1]} classes; the card has "
            f"{card.num_label_channels} (background included)"
        )
    card.conditioning.tissue_fractions = card.conditioning.tissue_fractions or config.fraction_share > 0
    if card.normalization.kind == "mri_percentile":  # each tissue's learned level: inpainting harmonises to it
        card.normalization.label_levels = label_levels(data.images, data.labels, card.normalization.background_label)
    # The card records the frame the network saw in training: inpainting never hands it a smaller one.
    divisor = card.downsampling_factor
    padded = [int(math.ceil(size / divisor) * divisor) for size in data.images.shape[1:]]
    if config.crop_size is not None and config.crop_size < min(padded):
        card.tile_size = [int(config.crop_size)] * 2
    else:
        card.tile_size = [padded[1], padded[0]]  # (x, y)
    torch.manual_seed(config.seed)
    network = build_networks(card)["network"]
    earlier = None
    if initial is not None:
        from ..model.card import load_card
        from ..model.weights import load_weights, weights_sha256

        initial = Path(initial)
        earlier_card = load_card(initial)
        # raises if the networks differ, but for a plane embedding the earlier one lacks: it starts at zero,
        # so the fine-tune begins as the earlier model on every plane
        load_weights(earlier_card, initial, {"network": network}, new_at_zero=_new_plane_embedding(card, earlier_card))
        earlier = {
            "version": earlier_card.version,
            "weights_sha256": weights_sha256(initial / earlier_card.weights),
            "training": earlier_card.provenance.get("training"),
        }
    network = network.to(device)
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    optimizer = build_optimizer(network, config)
    lr_schedule = build_lr_schedule(optimizer, config)
    schedule = NoiseSchedule(card.scheduler)
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else out / CHECKPOINT_DIR
    batches = TrainingBatches(card, data, config, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    start_step, losses, seconds = 0, [], 0.0
    if resume:
        if not has_checkpoint(checkpoint):
            raise MedgenError(f"{out}: no checkpoint to resume from; start without --resume")
        record = load_checkpoint(checkpoint, network, ema, optimizer, ("lr_schedule", "rng"))
        start_step, losses, seconds = record["step"], record["losses"], record.get("seconds", 0.0)
        lr_schedule = resume_lr_schedule(lr_schedule, optimizer, config, record, start_step)
        if "rng" in record:
            generator.set_state(record["rng"]["torch"])
        else:  # a checkpoint of an earlier version: a fresh generator, seeded as it did
            generator.manual_seed(config.seed + start_step)

    # bf16 autocast: on a GPU, and on a CPU that runs bf16 natively (about 1.9x on the AVX512-BF16 EPYC)
    autocast = config.mixed_precision and device.type in ("cuda", "cpu")
    network.train()
    started = time.perf_counter() - seconds
    done = start_step
    stream = batch_stream(batches, start_step, config.steps, config.workers)
    for step, (clean, conditioning, planes) in enumerate(stream, start_step):
        clean, conditioning = clean.to(device, non_blocking=True), conditioning.to(device, non_blocking=True)
        planes = planes.to(device) if card.conditioning.orientations else None
        t = torch.randint(0, schedule.num_train_timesteps, (clean.shape[0],), generator=generator)
        noise = torch.randn(clean.shape, generator=generator).to(device)
        noisy = schedule.training_input(clean, noise, t)
        target = schedule.training_target(clean, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            prediction = network(torch.cat([noisy, conditioning], 1), t.to(device), class_labels=planes)
        loss = torch.nn.functional.mse_loss(prediction.float(), target)
        losses.append(update(loss, network, optimizer, lr_schedule, ema))
        done = step + 1
        out_of_time = config.time_limit_s is not None and time.perf_counter() - started > config.time_limit_s
        if done % config.checkpoint_every == 0 or done == config.steps or out_of_time:
            record = {"step": done, "losses": losses, "seconds": time.perf_counter() - started, "config": asdict(config)}
            save_run_checkpoint(checkpoint, network, ema, optimizer, lr_schedule, generator, record)
            # The curve so far goes beside the checkpoint: the model folder is written only at the end.
            save_loss_curve(losses, checkpoint / "loss_curve.png", card.scheduler.prediction_type)
        yield TrainingEvent(done, config.steps, float(np.mean(losses[-25:])), f"loss {np.mean(losses[-25:]):.4f}")
        if out_of_time:
            break
    elapsed = time.perf_counter() - started
    card.provenance = {
        **card.provenance,
        "training_data": data_description or "image / label pairs",
        "training_slices": data.description,
        "trained": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "code_version": f"napari-medgen {__version__}",
        "training": {
            **{k: v for k, v in asdict(config).items() if k not in ("device", "threads", "workers", "time_limit_s")},
            "steps_done": done,
            "device": str(device),
            "seconds": round(elapsed, 1),
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
            **({"started_from": earlier} if earlier else {}),
        },
    }
    save_model(card, {"network": ema.module}, out)
    save_loss_curve(losses, out / "loss_curve.png", card.scheduler.prediction_type)
    return out
