"""The noise schedule of a model (from MONAI's scheduler) and the maths on it, for sampling and training."""

from __future__ import annotations

import numpy as np
import torch

from ..model.card_sections import SchedulerSpec
from ..model.networks import monai_module


class NoiseSchedule:
    """The training noise schedule of a model (from MONAI's scheduler) and the maths on it."""

    def __init__(self, spec: SchedulerSpec) -> None:
        schedulers = monai_module("monai.networks.schedulers")  # MONAI's lean import where the process asked for it

        args = {} if spec.schedule == "cosine" else {"beta_start": spec.beta_start, "beta_end": spec.beta_end}
        scheduler = getattr(schedulers, spec.class_name)(
            num_train_timesteps=spec.num_train_timesteps,
            schedule=spec.schedule,
            prediction_type=spec.prediction_type,
            **args,
        )
        self.scheduler = scheduler
        self.num_train_timesteps = spec.num_train_timesteps
        self.prediction_type = spec.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.double().cpu().numpy()

    def alpha_bar(self, t: int) -> float:
        """Signal fraction at timestep t; t < 0 is the clean image (1.0)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def timesteps(self, steps: int, spacing: str = "even") -> list[int]:
        """`steps` timesteps from T-1 down to 0 (unique, descending), evenly spaced in t or in log-SNR.

        Log-SNR spacing is DPM-Solver's own for pixel-space models: its steps are in log-SNR, and evenly
        spaced t crowds them at high noise (brain-t1-demo, DPM-Solver++ 20 steps: Dice 0.892 -> 0.959).
        """
        steps = int(max(1, min(steps, self.num_train_timesteps)))
        if spacing == "log_snr":
            log_snr = 0.5 * np.log(self.alphas_cumprod / (1 - self.alphas_cumprod))  # decreasing in t
            targets = np.linspace(log_snr[-1], log_snr[0], steps)
            values = np.abs(log_snr[None, :] - targets[:, None]).argmin(1)
        else:
            values = np.linspace(self.num_train_timesteps - 1, 0, steps).round().astype(int)
        return sorted(set(values.tolist()), reverse=True)

    def split(self, output: torch.Tensor, x_t: torch.Tensor, t: int, clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's output at t as (x0 estimate, noise estimate), x0 clipped to [-1, 1]."""
        a = self.alpha_bar(t)
        sa, sb = a**0.5, (1 - a) ** 0.5
        if self.prediction_type == "epsilon":
            x0 = (x_t - sb * output) / sa
        elif self.prediction_type == "v_prediction":
            x0 = sa * x_t - sb * output
        else:
            x0 = output
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        eps = (x_t - sa * x0) / sb
        return x0, eps

    def output_for(self, x0: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """The network output at t that `split` turns into the clean estimate `x0` (in [-1, 1]) for `x_t`."""
        a = self.alpha_bar(t)
        sa, sb = a**0.5, (1 - a) ** 0.5
        if self.prediction_type == "sample":
            return x0.clone()
        eps = (x_t - sa * x0) / sb
        if self.prediction_type == "epsilon":
            return eps
        return sa * eps - sb * x0  # v

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        a = self.alpha_bar(t)
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise

    def renoise(self, x_s: torch.Tensor, noise: torch.Tensor, s: int, t: int) -> torch.Tensor:
        """Forward diffusion from timestep s up to t > s (RePaint's jump back)."""
        ratio = self.alpha_bar(t) / self.alpha_bar(s)
        return ratio**0.5 * x_s + (1 - ratio) ** 0.5 * noise

    # -- training: one timestep per sample, MONAI's own maths ---------------------------------------
    def training_input(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The noisy batch x_t the network sees in training, one timestep per sample (MONAI's `add_noise`)."""
        return self.scheduler.add_noise(x0, noise.to(x0), timesteps)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the network learns to predict at `timesteps`: the noise, the velocity v (MONAI's
        `get_velocity`) or the clean image, by the card's prediction type; `split` inverts it."""
        if self.prediction_type == "epsilon":
            return noise.to(x0)
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(x0, noise.to(x0), timesteps)
        if self.prediction_type == "sample":
            return x0
        raise ValueError(f"unknown prediction type {self.prediction_type!r}")
