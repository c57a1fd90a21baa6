"""The optimiser and its learning-rate schedule: AdamW; a linear warm-up, then a cosine decay to a floor.

The schedule is torch's own (`LinearLR` then `CosineAnnealingLR`, joined by `SequentialLR`): at step s
(from 0) the rate is ``lr * (s + 1) / warmup`` during the warm-up, then falls along a half cosine from
``lr`` to ``final_lr_fraction * lr`` at the last step. Its state is checkpointed with the optimiser's.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from .config import TrainingConfig

# The settings that shape the learning-rate schedule: a resumed run whose settings differ follows its own.
SCHEDULE_SETTINGS = ("steps", "learning_rate", "warmup_steps", "final_lr_fraction")


def build_optimizer(network: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=1e-4)


def update(loss: torch.Tensor, network: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_schedule: LRScheduler,
           ema: Any) -> float:
    """One optimiser update, as training and distillation both make it: gradients clipped to norm 1, the
    learning-rate schedule stepped, the weights' moving average (what ships) updated. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
    optimizer.step()
    lr_schedule.step()
    ema.update_parameters(network)
    return loss.item()


def build_lr_schedule(optimizer: torch.optim.Optimizer, config: TrainingConfig, start_step: int = 0) -> LRScheduler:
    """The warm-up + cosine schedule of `config`, set to the rate of step `start_step`."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = config.learning_rate
    warmup = max(0, int(config.warmup_steps))
    cosine_steps = max(1, config.steps - warmup)
    floor = config.final_lr_fraction * config.learning_rate
    if warmup == 0:
        schedule: LRScheduler = CosineAnnealingLR(optimizer, T_max=cosine_steps, eta_min=floor)
    else:
        linear = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
        cosine = CosineAnnealingLR(optimizer, T_max=cosine_steps, eta_min=floor)
        schedule = SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    with warnings.catch_warnings():  # stepping the schedule alone warns that the optimiser has not stepped
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start_step):
            schedule.step()
    return schedule


def resume_lr_schedule(
    schedule: LRScheduler, optimizer: torch.optim.Optimizer, config: TrainingConfig, record: dict[str, Any], start_step: int
) -> LRScheduler:
    """The schedule of a run resumed from `record` (whose optimiser state, rates included, is loaded):
    the checkpoint's own when its schedule settings are this config's; otherwise (more steps, another
    rate, a checkpoint of an earlier version) this config's schedule from `start_step`."""
    saved = record.get("config", {})
    if "lr_schedule" in record and all(saved.get(k) == getattr(config, k) for k in SCHEDULE_SETTINGS):
        schedule.load_state_dict(record["lr_schedule"])
        return schedule
    return build_lr_schedule(optimizer, config, start_step)
