"""Step distillation: a student that samples in a few DDIM steps what its teacher samples in many.

The method is progressive distillation's step (Salimans & Ho, 2022, "Progressive Distillation for Fast
Sampling of Diffusion Models"), taken in one stage: the student's timesteps are the ones DDIM uses at
`student_steps` (`NoiseSchedule.timesteps`, evenly spaced), and between two of them, t and s, the teacher
walks its own sampling path: the deterministic form of its card's sampler (DPM-Solver++ 2M, or DDIM) on the
timesteps that sampler takes at the card's steps, cut at t and s: by default the student learns the path the
teacher ships with. (The first brain-t1-demo-fast learned its teacher's DDIM path, 6 steps per student step, which
`teacher_sampler="ddim"` at 19 steps still gives: its grey matter came out flat, 0.62x the real T1's texture,
where the DPM-Solver++ path gives 0.91x; docs/models.md, "The fast model".) The student learns the one prediction at t
whose DDIM step lands exactly where the teacher's steps landed:

    x0~ = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)

turned into the card's prediction type (v, noise or image). So the student is the same network, card and
schedule as its teacher with new weights, and runs through the existing sampling loops unchanged: its card
says `sampling: {steps, sampler: ddim}`. Noisy inputs x_t are drawn as in training (a training slice noised
to t), with the teacher's conditioning mixes (labels dropped, generation or inpainting, pasted tissue), so
labels, slice position and the inpainting inputs keep their meaning; classifier-free guidance, when asked
for (`guidance` != 1), is folded in: the teacher's targets are guided, and the student needs one pass.
Each update trains one of the student's steps (a batch shares its interval, so the teacher's multistep
solver runs batched). The last timestep of the student's grid (t = 0, the final clean-up call) is not
trained: there the teacher and the student both return x_t less a 1 % noise estimate.

`distill` is a generator like `train`: `TrainingEvent`s, checkpoints (safetensors + JSON, resumable as
the same run), a loss curve, and the student's model folder at the end.
"""

from __future__ import annotations

import copy
import datetime as _dt
import itertools
import time
from collections.abc import Generator
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from ..diffusion.methods import TIMESTEP_SPACING
from ..diffusion.samplers import ddim_update, dpmpp_2m_update
from ..diffusion.schedule import NoiseSchedule
from ..errors import MedgenError
from ..model.card import ModelCard
from ..model.card_sections import SamplingDefaults
from ..model.device import resolve_device
from ..model.loading import LoadedModel
from ..model.weights import save_model
from .batches import TrainingBatches, batch_stream
from .checkpoint import has_checkpoint, load_checkpoint, save_run_checkpoint
from .config import TrainingConfig
from .data import TrainingSlices, load_training_slices
from .distill_config import DistillationConfig
from .loop import CHECKPOINT_DIR, TrainingEvent, save_loss_curve
from .optimizer import build_lr_schedule, build_optimizer, resume_lr_schedule, update

METHOD = ("progressive distillation step (Salimans & Ho 2022), one stage: the teacher's own sampler path between two "
          "student timesteps -> one DDIM student step")
# The deterministic path a teacher's sampler follows: a stochastic sampler's is its ODE form.
TEACHER_PATHS = {"ddim": "ddim", "ddpm": "ddim", "dpm++2m": "dpm++2m", "dpm++2m-sde": "dpm++2m"}
# Batch settings taken from the teacher's own training (its card's provenance) unless the config sets them.
_BATCH_SETTINGS = ("crop_size", "generation_fraction", "region_mm", "paste_fraction", "paste_mm", "scanner_fraction",
                   "field_of_view_fraction", "field_of_view_px")


def student_intervals(schedule: NoiseSchedule, student_steps: int, teacher_steps: int, teacher_sampler: str) -> list[list[int]]:
    """For each student step but the last, the teacher's path from its timestep t to the next one s: the
    timesteps `teacher_sampler` takes at `teacher_steps` that lie between them, t first and s last."""
    grid = schedule.timesteps(student_steps)
    if len(grid) < 2:
        raise MedgenError("a student needs at least 2 steps (the last one only cleans up)")
    if teacher_steps <= student_steps:
        raise MedgenError(f"a teacher path of {teacher_steps} steps is no longer than the student's {student_steps}; "
                          "give the teacher more steps")
    teacher_grid = schedule.timesteps(teacher_steps, TIMESTEP_SPACING.get(teacher_sampler, "even"))
    paths = [[t, *(u for u in teacher_grid if s < u < t), s] for t, s in itertools.pairwise(grid)]
    for path in paths:
        if len(path) < 3:  # one teacher step is the student's own DDIM step: nothing to learn there
            raise MedgenError(
                f"the teacher's {teacher_sampler} path of {teacher_steps} steps takes no step between the student's "
                f"timesteps {path[0]} and {path[-1]}; give more teacher steps or fewer student steps"
            )
    return paths


class _ScheduleTensors:
    """Per-sample schedule maths (alpha_bar of a timestep tensor; -1 is the clean image)."""

    def __init__(self, schedule: NoiseSchedule, device: torch.device) -> None:
        alphas = torch.from_numpy(np.concatenate([schedule.alphas_cumprod, [1.0]])).float()  # index -1 -> 1.0
        self.alphas = alphas.to(device)
        self.prediction_type = schedule.prediction_type

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t), shaped (B, 1, 1, 1)."""
        a = self.alphas[t].view(-1, 1, 1, 1)
        return a.sqrt(), (1 - a).clamp_min(0).sqrt()

    def target(self, x_t: torch.Tensor, x_s: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """What the student predicts at t so that one DDIM step lands on x_s (in the card's prediction type)."""
        alpha_t, sigma_t = self.coefficients(t)
        alpha_s, sigma_s = self.coefficients(s)
        ratio = sigma_s / sigma_t
        x0 = (x_s - ratio * x_t) / (alpha_s - ratio * alpha_t)
        eps = (x_t - alpha_t * x0) / sigma_t
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "v_prediction":
            return alpha_t * eps - sigma_t * x0
        return x0


def _teacher_output(teacher: torch.nn.Module, x_t: torch.Tensor, conditioning: torch.Tensor, t: torch.Tensor,
                    guidance: float, label_channels: int, planes: torch.Tensor | None = None) -> torch.Tensor:
    stack = torch.cat([x_t, conditioning], 1)
    if guidance == 1.0:
        return teacher(stack, t, **_plane_codes(planes)).float()
    plain = stack.clone()
    plain[:, 1 : 1 + label_channels] = 0  # the unconditional pass, as the denoiser does it
    both = None if planes is None else torch.cat([planes, planes])
    conditional, unconditional = teacher(torch.cat([stack, plain]), torch.cat([t, t]), **_plane_codes(both)).float().chunk(2)
    return unconditional + guidance * (conditional - unconditional)


def _plane_codes(planes: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The network's keyword for each slice's plane, where the model was trained on several."""
    return {} if planes is None else {"class_labels": planes}


@torch.inference_mode()
def teacher_path(
    teacher: torch.nn.Module,
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    conditioning: torch.Tensor,
    path: list[int],
    sampler: str = "ddim",
    guidance: float = 1.0,
    label_channels: int = 0,
    planes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The teacher's deterministic steps along `path` (timesteps, descending), as the sampling loop of
    `sampler` takes them from path[0] (first order there, as at the start of sampling): x at path[-1].
    `planes`: each slice's plane (class labels) for a network trained on several orientations."""
    method = TEACHER_PATHS[sampler]
    history = None
    for t, s in itertools.pairwise(path):
        timestep = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        x0, eps = schedule.split(_teacher_output(teacher, x_t, conditioning, timestep, guidance, label_channels, planes), x_t, t)
        if method == "dpm++2m":
            x_t, history = dpmpp_2m_update(schedule, x_t, x0, t, s, history)
        else:
            x_t = ddim_update(schedule, x0, eps, t, s, 0.0, torch.randn_like, x_t)
    return x_t


def teacher_sampling(card: ModelCard, config: DistillationConfig) -> tuple[int, str]:
    """The teacher's steps and sampler for its path: the config's, else what a run of the teacher that asks for
    nothing takes (its card's sampling defaults, else the engine's)."""
    from ..synthesis.options import SamplingOptions, resolve_options

    if config.teacher_sampler is not None and config.teacher_sampler not in TEACHER_PATHS:
        raise MedgenError(f"unknown teacher sampler {config.teacher_sampler!r}; choose one of {', '.join(TEACHER_PATHS)}")
    options = resolve_options(SamplingOptions(sampler=config.teacher_sampler, steps=config.teacher_steps), {}, card)
    return int(options.steps), str(options.sampler)


def _batch_config(teacher_card: ModelCard, config: DistillationConfig) -> TrainingConfig:
    """The teacher's batch settings (from its provenance), with the config's where it gives them."""
    trained = teacher_card.provenance.get("training", {}) if isinstance(teacher_card.provenance, dict) else {}
    known = {f.name for f in fields(TrainingConfig)}
    settings = {k: (tuple(v) if isinstance(v, list) else v) for k, v in trained.items() if k in _BATCH_SETTINGS and k in known}
    settings.update({k: getattr(config, k) for k in _BATCH_SETTINGS if getattr(config, k) is not None})
    return TrainingConfig(
        batch_size=config.batch_size,
        condition_dropout=teacher_card.conditioning.condition_dropout,
        seed=config.seed,
        **settings,
    )


def student_card(teacher: LoadedModel, config: DistillationConfig, name: str | None, guidance: float) -> ModelCard:
    """The student's card: the teacher's, renamed, with its sampling defaults and (folded) guidance."""
    card = teacher.card.model_copy(deep=True)
    card.name = name or f"{teacher.card.name}-fast"
    card.description = (
        f"{config.student_steps}-step DDIM student of {teacher.card.name} {teacher.card.version} (step distillation): "
        + teacher.card.description
    )
    planes = teacher.card.sampling.planes if teacher.card.sampling is not None else "axial"
    card.sampling = SamplingDefaults(
        steps=config.student_steps, sampler="ddim", planes=planes,  # the teacher's planes: it learned all three
        reason=f"distilled for {config.student_steps} DDIM steps: other steps or samplers leave its training",
    )
    if guidance != 1.0:  # folded in: asking for it again would apply it twice
        card.conditioning.default_guidance = 1.0
    return card


def distill(
    teacher: LoadedModel,
    pairs: list[tuple[Path, Path]] | TrainingSlices,
    out: str | Path,
    config: DistillationConfig | None = None,
    resume: bool = False,
    name: str | None = None,
    data_description: str = "",
    checkpoint_dir: str | Path | None = None,
) -> Generator[TrainingEvent, None, Path]:
    """Distil `teacher` into a `config.student_steps`-step DDIM student trained on `pairs`; yields
    progress and returns the student's model folder `out` (checkpoints in `checkpoint_dir`, default
    ``out/checkpoint``)."""
    config = config or DistillationConfig()
    out = Path(out)
    card = teacher.card
    if card.spatial_dims != 2 or card.network.class_name != "DiffusionModelUNet" or card.conditioning.label_map != "channels":
        raise MedgenError(
            "distillation supports 2-D DiffusionModelUNet models with the label map as input channels (as `train` "
            f"makes them); {card.name} is a {card.spatial_dims}-D {card.network.class_name} with label_map="
            f"{card.conditioning.label_map!r}"
        )
    if config.student_steps < 2 or config.steps < 1:
        raise MedgenError("a student needs at least 2 steps and at least 1 update")
    guidance = float(config.guidance if config.guidance is not None else card.conditioning.default_guidance)
    if guidance != 1.0 and not card.supports_guidance:
        raise MedgenError(f"{card.name} was not trained for classifier-free guidance; distil with guidance 1")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    schedule = NoiseSchedule(card.scheduler)
    maths = _ScheduleTensors(schedule, device)
    teacher_steps, teacher_sampler = teacher_sampling(card, config)
    paths = student_intervals(schedule, config.student_steps, teacher_steps, teacher_sampler)
    label_channels = card.num_label_channels

    teacher_network = copy.deepcopy(teacher.networks["network"]).to(device=device, dtype=torch.float32).eval()
    teacher_network.requires_grad_(False)
    torch.manual_seed(config.seed)
    network = copy.deepcopy(teacher_network).train().requires_grad_(True)  # the student starts as the teacher
    for module in list(teacher_network.modules()) + list(network.modules()):
        if hasattr(module, "use_flash_attention") and not getattr(module, "save_attn", False):
            module.use_flash_attention = True  # fused attention: same maths, less time and memory
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    optimizer = build_optimizer(network, config)  # type: ignore[arg-type]  (the same schedule settings)
    lr_schedule = build_lr_schedule(optimizer, config)  # type: ignore[arg-type]

    data = pairs if isinstance(pairs, TrainingSlices) else load_training_slices(card, pairs)
    batch_config = _batch_config(card, config)
    batches = TrainingBatches(card, data, batch_config, seed=config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else out / CHECKPOINT_DIR
    start_step, losses, interval_losses, seconds = 0, [], [[] for _ in range(len(paths))], 0.0
    if resume:
        if not has_checkpoint(checkpoint):
            raise MedgenError(f"{checkpoint}: no checkpoint to resume from; start without --resume")
        record = load_checkpoint(checkpoint, network, ema, optimizer, ("lr_schedule", "rng"))
        if record.get("teacher_sha256") not in (None, teacher.weights_sha256):
            raise MedgenError(f"{checkpoint}: the checkpoint distils another teacher; give that one or start afresh")
        if record.get("teacher_paths") != paths:  # the same weights can ship with another sampler or steps
            raise MedgenError(
                f"{checkpoint}: the checkpoint learned another teacher path ({record.get('teacher_paths')}) than this "
                f"run's {teacher_sampler} at {teacher_steps} steps ({paths}); give the run's own --teacher-sampler, "
                "--teacher-steps and --steps, or start afresh"
            )
        start_step, losses, seconds = record["step"], record["losses"], record.get("seconds", 0.0)
        interval_losses = record.get("interval_losses", interval_losses)
        lr_schedule = resume_lr_schedule(lr_schedule, optimizer, config, record, start_step)  # type: ignore[arg-type]
        generator.set_state(record["rng"]["torch"])

    started = time.perf_counter() - seconds
    done = start_step
    autocast = config.mixed_precision and device.type in ("cuda", "cpu")
    stream = batch_stream(batches, start_step, config.steps, config.workers)
    for step, (clean, conditioning, planes) in enumerate(stream, start_step):
        clean, conditioning = clean.to(device, non_blocking=True), conditioning.to(device, non_blocking=True)
        planes = planes.to(device) if card.conditioning.orientations else None
        which = int(torch.randint(0, len(paths), (1,), generator=generator))
        path = paths[which]
        t, s = (torch.full((clean.shape[0],), u, dtype=torch.long, device=device) for u in (path[0], path[-1]))
        noise = torch.randn(clean.shape, generator=generator).to(device)
        alpha_t, sigma_t = maths.coefficients(t)
        x_t = alpha_t * clean + sigma_t * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            x_s = teacher_path(teacher_network, schedule, x_t, conditioning, path, teacher_sampler, guidance,
                               label_channels, planes).float()
        target = maths.target(x_t, x_s, t, s)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            prediction = network(torch.cat([x_t, conditioning], 1), t, **_plane_codes(planes)).float()
        per_sample = (prediction - target).pow(2).mean(dim=(1, 2, 3))
        loss = per_sample.mean()
        losses.append(update(loss, network, optimizer, lr_schedule, ema))
        interval_losses[which].extend(per_sample.detach().tolist())
        done = step + 1
        out_of_time = config.time_limit_s is not None and time.perf_counter() - started > config.time_limit_s
        if done % config.checkpoint_every == 0 or done == config.steps or out_of_time:
            record = {"step": done, "losses": losses, "interval_losses": interval_losses,
                      "seconds": time.perf_counter() - started, "config": asdict(config),
                      "teacher_sha256": teacher.weights_sha256, "teacher_paths": paths}
            save_run_checkpoint(checkpoint, network, ema, optimizer, lr_schedule, generator, record)
            save_loss_curve(losses, checkpoint / "loss_curve.png", card.scheduler.prediction_type)
        recent = float(np.mean(losses[-25:]))
        yield TrainingEvent(done, config.steps, recent, f"loss {recent:.4f}")
        if out_of_time:
            break
    elapsed = time.perf_counter() - started

    student = student_card(teacher, config, name, guidance)
    student.provenance = {
        **card.provenance,
        "training_data": data_description or card.provenance.get("training_data", "image / label pairs"),
        "training_slices": data.description,
        "trained": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "code_version": f"napari-medgen {__version__}",
        "teacher": {
            "name": card.name,
            "version": card.version,
            "weights_sha256": teacher.weights_sha256,
            "training": card.provenance.get("training"),
            "quality": card.provenance.get("quality"),
        },
        "distillation": {
            "method": METHOD,
            **{k: v for k, v in asdict(config).items() if k not in ("device", "threads", "workers", "time_limit_s")},
            "updates_done": done,
            "guidance_folded": guidance,
            "student_timesteps": schedule.timesteps(config.student_steps),
            "batch_settings": {k: getattr(batch_config, k) for k in _BATCH_SETTINGS + ("condition_dropout",)},
            "device": str(device),
            "seconds": round(elapsed, 1),
            "teacher_path": {"sampler": TEACHER_PATHS[teacher_sampler], "steps": teacher_steps, "intervals": paths},
            "teacher_calls_per_update": round(float(np.mean([len(p) - 1 for p in paths])) * (2 if guidance != 1.0 else 1), 2),
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
            "final_loss_per_student_step": [
                float(np.mean(v[-max(1, len(v) // 10):])) if v else None for v in interval_losses
            ],
        },
    }
    student.provenance.pop("training", None)  # the teacher's, kept under "teacher"
    student.provenance.pop("quality", None)  # measured on the teacher; the student's is measured anew
    save_model(student, {"network": ema.module}, out)
    save_loss_curve(losses, out / "loss_curve.png", card.scheduler.prediction_type)
    return out

