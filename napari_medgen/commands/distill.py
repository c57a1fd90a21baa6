"""`napari-medgen distill`: a few-step student of a trained model (step distillation), resumable like `train`.

    napari-medgen distill --teacher MODEL --out DIR [--steps 4] [--teacher-steps N] [--teacher-sampler S] [--updates 2000] [--data DATA]
                          [--name NAME] [--guidance W] [--batch-size 12] [--learning-rate 5e-5] [--threads N]
                          [--checkpoint-dir DIR] [--checkpoint-every 100] [--resume]

A thin driver over `engine.training.distill.distill`: progress per student update (a bar, JSON lines or
nothing), checkpoints in OUT/checkpoint (or --checkpoint-dir), the student's model folder at the end with
its card saying its steps and sampler, so generate / inpaint / the widgets use them when asked for nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter, add_progress_argument, drive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.training.distill_config import DistillationConfig

    default = DistillationConfig()
    parser.add_argument("--teacher", required=True, help="the trained model to distil (name or folder)")
    parser.add_argument("--out", required=True, type=Path, help="the student's model folder (card, weights, loss curve)")
    parser.add_argument("--steps", type=int, default=default.student_steps, help="the student's sampling steps (DDIM)")
    from ..engine.diffusion.methods import SAMPLERS

    parser.add_argument("--teacher-steps", type=int, default=default.teacher_steps,
                        help="steps of the teacher's path the student learns (default: the teacher card's)")
    parser.add_argument("--teacher-sampler", choices=SAMPLERS, default=default.teacher_sampler,
                        help="the teacher's sampler along that path, taken deterministically (default: the teacher card's)")
    parser.add_argument("--updates", type=int, default=default.steps, help="student optimiser updates")
    parser.add_argument("--data", type=Path, default=None,  # also prepared slices (.npz)
                        help="training image / label pairs or prepared slices (.npz), as for train (default for brain-t1-demo: the shipped sample brain)")
    parser.add_argument("--name", default=None, help="the student's model name (default: TEACHER-fast)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance folded into the student (default: the teacher card's)")
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--learning-rate", type=float, default=default.learning_rate)
    parser.add_argument("--ema-decay", type=float, default=default.ema_decay, help="decay of the weights' moving average (what ships)")
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint-every", type=int, default=default.checkpoint_every, help="updates between checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="bfloat16 autocast (a GPU, or a CPU that runs bf16 natively: about 1.9x on one with AVX512-BF16)")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="where checkpoints go (default: OUT/checkpoint)")
    add_progress_argument(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.errors import MedgenError
    from ..engine.model.loading import load_model
    from ..engine.training import find_training_pairs
    from ..engine.training.data import demo_training_pairs
    from ..engine.training.distill import DistillationConfig, distill

    teacher = load_model(args.teacher, device=args.device)
    if args.data is None:
        if teacher.card.name != "brain-t1-demo":
            raise MedgenError(f"give the training data of {teacher.card.name} with --data (the pairs it was trained on)")
        pairs = demo_training_pairs()
        # Only the shipped sample brain: the first of the grids the teacher's card may list as its training data.
        description = "the shipped sample brain (ICBM152 2009a symmetric T1 and its tissue labels at 2 mm)"
    elif args.data.suffix == ".npz":
        from ..engine.training.data import load_slices

        pairs = load_slices(args.data)
        description = teacher.card.provenance.get("training_data", f"prepared slices {args.data.name}")
    else:
        pairs = find_training_pairs(args.data)
        description = f"{len(pairs)} image / label pairs from {args.data}"
    config = DistillationConfig(
        student_steps=args.steps,
        teacher_steps=args.teacher_steps,
        teacher_sampler=args.teacher_sampler,
        guidance=args.guidance,
        steps=args.updates,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        ema_decay=args.ema_decay,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        mixed_precision=args.mixed_precision,
    )
    run = distill(teacher, pairs, args.out, config, resume=args.resume, name=args.name,
                  data_description=description, checkpoint_dir=args.checkpoint_dir)
    return [str(drive(run, reporter))]
