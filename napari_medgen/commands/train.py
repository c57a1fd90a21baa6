"""`napari-medgen train`: a slice-wise model trained on image / label-map pairs, resumable from its checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter, add_progress_argument, drive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="folder (imagesTr/labelsTr, or <case>_image / <case>_label files), JSON manifest, or prepared "
                             "slices (.npz); default with --preset brain-t1-demo: the shipped sample brain")
    parser.add_argument("--out", required=True, type=Path, help="model folder to write (card, weights, loss curve)")
    parser.add_argument("--preset", default="brain-t1-demo", help="model card preset (architecture, spacing, labels)")
    parser.add_argument("--name", default=None, help="model name in the card (default: the preset's)")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--crop", type=int, default=64, help="random crop size in pixels (0: whole slices)")
    parser.add_argument("--field-of-view-fraction", type=float, default=0.0,
                        help="fraction of batches cut to a smaller field of view (32-96 px), for whole-slice training")
    parser.add_argument("--fraction-share", type=float, default=0.0,
                        help="share of samples conditioned on tissue fractions instead of hard labels (0-1); needs each "
                        "label map's fraction maps, <label map name>_fraction_<k> beside it (the sample brain has them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="processes making batches ahead of use (for a GPU)")
    parser.add_argument("--mixed-precision", action="store_true", help="bfloat16 autocast on a GPU")
    parser.add_argument("--time-limit-minutes", type=float, default=None,
                        help="stop early (the model is written) after this many minutes")
    parser.add_argument("--initial", type=Path, default=None,
                        help="a model folder of the same network whose weights training starts from")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="where checkpoints go (default: OUT/checkpoint)")
    add_progress_argument(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.errors import MedgenError
    from ..engine.model.presets import preset_card
    from ..engine.training import TrainingConfig, find_training_pairs, train
    from ..engine.training.data import TrainingSlices, demo_training_pairs, load_slices

    card = preset_card(args.preset)
    if args.name:
        card = card.model_copy(update={"name": args.name})
    if args.data is None:
        if args.preset != "brain-t1-demo":
            raise MedgenError("give the training data with --data")
        pairs = demo_training_pairs()
        description = "ICBM152 2009a symmetric T1 template and its tissue labels at 2 mm (the shipped sample brain)"
    elif args.data.suffix == ".npz":
        pairs = load_slices(args.data)
        description = f"prepared slices {args.data.name}"
    else:
        pairs = find_training_pairs(args.data)
        description = f"{len(pairs)} image / label pairs from {args.data}"
    if args.fraction_share > 0 and not isinstance(pairs, TrainingSlices):
        description += ", with their tissue fraction maps"
    config = TrainingConfig(
        fraction_share=args.fraction_share,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        crop_size=args.crop or None,
        field_of_view_fraction=args.field_of_view_fraction,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        mixed_precision=args.mixed_precision,
        time_limit_s=args.time_limit_minutes * 60 if args.time_limit_minutes else None,
    )
    run = train(card, pairs, args.out, config, resume=args.resume, data_description=description,
                checkpoint_dir=args.checkpoint_dir, initial=args.initial)
    return [str(drive(run, reporter))]
