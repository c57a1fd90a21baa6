"""Rectified-flow sampling (MAISI's) with MONAI's `RFlowScheduler`: its timesteps and its Euler step.

Rectified flow moves on the straight line x_t = (1 - t/T) x0 + (t/T) noise; the network predicts the
velocity v = x0 - noise, so the clean estimate at t is x_t + v t/T and a step to t' is x_t + v (t - t')/T.
The timesteps and the step are MONAI's own (`set_timesteps` with the latent's voxel count for the
resolution-dependent timestep transform MAISI uses; `step` with the next timestep, 0 after the last), called
exactly as MAISI's inference does, so a seed gives MAISI's trajectory; the network sees each timestep as
``torch.Tensor((t,))``, as there.

The loop is a generator like the other samplers: it yields ``(step, total, x0_estimate)`` after every
network call and returns the final latent; closing it stops before the next call. For inpainting, the kept
part is put back on its own straight line (the known latent and the starting noise) after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch

from ..model.card_sections import SchedulerSpec
from ..model.networks import monai_module

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RectifiedFlowSchedule:
    """A card's RFlowScheduler (MONAI's class, built from the card's literal arguments)."""

    def __init__(self, spec: SchedulerSpec, spatial_dims: int = 3) -> None:
        schedulers = monai_module("monai.networks.schedulers")
        self.scheduler = schedulers.RFlowScheduler(
            num_train_timesteps=spec.num_train_timesteps,
            use_discrete_timesteps=spec.use_discrete_timesteps,
            sample_method="uniform",
            use_timestep_transform=spec.use_timestep_transform,
            transform_scale=spec.transform_scale,
            base_img_size_numel=spec.base_img_size_numel,
            spatial_dim=spatial_dims,
        )
        self.num_train_timesteps = spec.num_train_timesteps

    def timesteps(self, steps: int, latent_numel: int) -> list[torch.Tensor]:
        """The `steps` timesteps MONAI schedules for a latent of `latent_numel` voxels (0-d tensors, descending)."""
        steps = int(max(1, min(steps, self.num_train_timesteps)))
        self.scheduler.set_timesteps(num_inference_steps=steps, input_img_size_numel=int(latent_numel))
        return list(self.scheduler.timesteps)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The point of the straight line at t (MONAI's `add_noise` for one timestep)."""
        fraction = float(t) / self.num_train_timesteps
        return (1.0 - fraction) * x0 + fraction * noise


def sample_rflow(
    velocity: VelocityFn,
    x_t: torch.Tensor,
    schedule: RectifiedFlowSchedule,
    steps: int,
    known: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> Generator[tuple[int, int, torch.Tensor], None, torch.Tensor]:
    """Euler steps of MONAI's RFlowScheduler from the noise `x_t` (its `known`/`keep`: inpainting, where keep is
    1 the known latent's own line is restored after every step). `velocity(x, t)` is the network's output."""
    noise = x_t
    spatial = tuple(x_t.shape[2:])
    numel = 1
    for size in spatial:
        numel *= int(size)
    timesteps = schedule.timesteps(steps, numel)
    following = timesteps[1:] + [torch.tensor(0, dtype=timesteps[0].dtype)]
    x0 = x_t
    for i, (t, next_t) in enumerate(zip(timesteps, following, strict=True)):
        v = velocity(x_t, t)
        x_t, x0 = schedule.scheduler.step(v, t, x_t, next_t)
        if known is not None and keep is not None:
            x_t = keep * schedule.add_noise(known, noise, next_t) + (1 - keep) * x_t
            x0 = keep * known + (1 - keep) * x0
        yield i + 1, len(timesteps), x0
    return x_t


def rflow_calls(schedule: RectifiedFlowSchedule, steps: int, latent_numel: int) -> int:
    """Network calls of `sample_rflow` (one per timestep)."""
    return len(schedule.timesteps(steps, latent_numel))
