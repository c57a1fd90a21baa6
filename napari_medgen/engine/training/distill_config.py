"""The settings of a step distillation, without torch: the command line builds its --help from them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DistillationConfig:
    """How a student is distilled (the teacher's card says what the model is)."""

    student_steps: int = 4  # the student's DDIM steps (network calls per sample)
    # The path the student learns: the teacher's sampler at these steps; None: the teacher card's sampling defaults.
    teacher_steps: int | None = None
    teacher_sampler: str | None = None
    guidance: float | None = None  # folded into the student; None: the teacher card's default_guidance
    steps: int = 2000  # student updates
    batch_size: int = 12
    learning_rate: float = 5e-5  # the student starts from the teacher's weights: a gentle rate
    warmup_steps: int = 50
    final_lr_fraction: float = 0.1
    ema_decay: float = 0.995
    # Batches as in the teacher's training; None: the teacher's own setting (its card's provenance).
    crop_size: int | None = None
    generation_fraction: float | None = None
    region_mm: tuple[float, float] | None = None
    paste_fraction: float | None = None
    paste_mm: tuple[float, float] | None = None
    scanner_fraction: float | None = None
    field_of_view_fraction: float | None = None
    field_of_view_px: tuple[int, int] | None = None
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    workers: int = 0  # processes making batches ahead of use (0: in this process)
    mixed_precision: bool = False  # bfloat16 autocast (a GPU, or a CPU with native bf16); weights stay float32
    time_limit_s: float | None = None  # stop early, student written, when a lease of machine time runs out
