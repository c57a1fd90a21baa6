"""Reproduce the shipped demo models: `brain-t1-demo` (the teacher) and `brain-t1-demo-fast` (its 4-step student).

    pip install nilearn && python scripts/train_demo_model.py --device cuda --workers 14 --mixed-precision

Three stages, each skipped when its output is given or exists:

1. **Data** (needs nilearn and SimpleITK): the ICBM152 2009 template that nilearn ships, at 1 mm, resampled to
   the model's 2 mm grid eight times, moved by 0 or 1 mm along each axis (the first is the shipped sample
   brain exactly). Each is a true partial-volume sampling of the same brain: eight times the distinct slices
   of the sample alone, and the relation between hard tissue labels and the blended intensities at their
   boundaries seen eight ways. Written as image / label pairs and as prepared slices (``slices.npz``, which
   a GPU machine without the image readers can train from).
2. **Teacher**: `napari_medgen.engine.training.train` with the preset's card (whole slices, no crops).
3. **Student**: `napari_medgen.engine.training.distill.distill` to 4 DDIM steps.

`--budget-minutes` (for a lease of GPU time) measures the speed of a few steps first and sets the steps to fit;
the card's provenance records the steps taken, so the run can be repeated with ``--steps``.

The shipped teacher (card 2.0.0) was made in three stages, each starting from the one before (``--initial``),
because a GPU lease here is 15 minutes and one command 10 (the card's provenance nests each stage's settings):

    python scripts/train_demo_model.py --device cuda --workers 14 --mixed-precision --batch-size 48 \
        --steps 2822 --field-of-view-fraction 0 --updates 0 --warp-interpolation bilinear --out runs/stage1  # H200, 340 s
    python scripts/train_demo_model.py --slices runs/brain-t1-demo-data/slices.npz --initial runs/stage1 \
        --device cuda --workers 15 --mixed-precision --batch-size 48 --learning-rate 2e-4 --warmup-steps 50 \
        --steps 1191 --field-of-view-fraction 0 --updates 0 --warp-interpolation bilinear --out runs/stage2  # H200, 141 s
    python scripts/train_demo_model.py --slices runs/brain-t1-demo-data/slices.npz --initial runs/stage2 \
        --device cpu --threads 2 --batch-size 12 --learning-rate 1e-4 --warmup-steps 20 --ema-decay 0.995 \
        --steps 508 --field-of-view-fraction 0.5 --updates 0 --warp-interpolation bilinear  # 2-core CPU, 22 min

and the student by ``napari-medgen distill`` on the 2-core CPU (docs/models.md gives the command).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_medgen.engine.model.presets import preset_card  # noqa: E402
from napari_medgen.engine.training import TrainingConfig, train  # noqa: E402
from napari_medgen.engine.training.data import load_slices, load_training_slices, save_slices  # noqa: E402

DESCRIPTION = (
    "ICBM152 2009a symmetric T1 template and its tissue labels (nilearn's 1 mm copy), resampled to 2 mm eight "
    "times with 0 / 1 mm shifts along each axis (the first is the shipped sample brain)"
)


def demo_card(planes: str):
    """The preset's card; with ``planes == "tri"`` the 3.0.0 teacher: one network for axial, coronal and sagittal
    slices, the plane given as its class embedding (added at zero to a 2.x network, so it starts as that model)."""
    card = preset_card("brain-t1-demo")
    if planes == "tri":
        card.version = "3.0.0"
        card.description = (
            "T1 brain MRI generator and inpainter conditioned on CSF / grey / white matter labels, slice plane and "
            "position: one 2-D network for axial, coronal and sagittal slices, sampled tri-planar; trained on the "
            "ICBM152 2009 template at 2 mm."
        )
        card.conditioning.orientations = ["axial", "coronal", "sagittal"]
        card.network.kwargs["num_class_embeds"] = 3
    return card


def prepare(folder: Path, card) -> Path:
    """Write the eight shifted 2 mm pairs and their prepared slices (cut in the card's planes) into `folder`;
    returns ``slices.npz``."""
    sys.path.insert(0, str(REPO / "scripts"))
    from make_sample_brain import template_pair

    from napari_medgen.engine.io import write_volume

    folder.mkdir(parents=True, exist_ok=True)
    pairs, fractions = [], []
    for shift in itertools.product((0.0, 1.0), repeat=3):
        name = "icbm152_2mm_shift" + "".join(str(int(v)) for v in shift)
        image, label_map, shares = template_pair(2.0, shift)
        pairs.append((write_volume(image, folder / f"{name}_image.nii.gz"), write_volume(label_map, folder / f"{name}_label.nii.gz")))
        fractions.append(shares)
    slices = load_training_slices(card, pairs, fractions)
    return save_slices(slices, folder / "slices.npz")


def _drive(run, label: str, every: int = 200):
    started = time.perf_counter()
    while True:
        try:
            event = next(run)
        except StopIteration as stop:
            return stop.value
        if event.step % every == 0 or event.step == event.total:
            print(f"{label} {event.step}/{event.total} {event.message} {time.perf_counter() - started:.0f} s", flush=True)


def seconds_per_step(card, slices, config: TrainingConfig, steps: int = 40) -> float:
    """The speed of this machine on this configuration: a short throw-away run, first steps not counted."""
    with tempfile.TemporaryDirectory() as scratch:
        trial = TrainingConfig(**{**config.__dict__, "steps": steps, "checkpoint_every": 10**9, "time_limit_s": None})
        run = train(card, slices, Path(scratch) / "model", trial, checkpoint_dir=Path(scratch) / "checkpoint")
        marks = []
        for _event in run:
            marks.append(time.perf_counter())
    warm = max(1, steps // 3)
    return (marks[-1] - marks[warm - 1]) / (len(marks) - warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "brain-t1-demo-data", help="where the training pairs go")
    parser.add_argument("--slices", type=Path, default=None, help="prepared slices (skips the data stage)")
    parser.add_argument("--out", type=Path, default=REPO / "resources" / "models" / "brain-t1-demo")
    parser.add_argument("--fast-out", type=Path, default=REPO / "resources" / "models" / "brain-t1-demo-fast")
    parser.add_argument("--checkpoints", type=Path, default=REPO / "runs" / "brain-t1-demo-checkpoints")
    parser.add_argument("--steps", type=int, default=12000, help="teacher optimiser steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=4e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--updates", type=int, default=1500, help="student optimiser updates (0: no student)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="processes making batches")
    parser.add_argument("--mixed-precision", action="store_true", help="bfloat16 autocast (a GPU, or a CPU with native bf16)")
    parser.add_argument("--initial", type=Path, default=None,
                        help="a model folder whose weights the teacher starts from (a further training stage)")
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--field-of-view-fraction", type=float, default=0.5,
                        help="batches cut to a smaller field of view (32-96 px)")
    parser.add_argument("--warp-interpolation", default="bicubic", choices=("bicubic", "bilinear"),
                        help="how warped training images are resampled (card 2.0.0's stages: bilinear)")
    parser.add_argument("--warp-fraction", type=float, default=0.7, help="training samples warped")
    parser.add_argument("--fraction-share", type=float, default=0.0,
                        help="share of samples conditioned on the template's tissue fractions instead of hard labels")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--planes", default="axial", choices=("axial", "tri"),
                        help="tri: train on axial, coronal and sagittal slices with the plane as an input (card 3.0.0)")
    parser.add_argument("--resume", action="store_true", help="continue the teacher run from its checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--time-limit-minutes", type=float, default=None,
                        help="stop the teacher after this time (the model folder is written from its EMA weights)")
    parser.add_argument("--budget-minutes", type=float, default=None, help="fit the teacher's steps to this time")
    parser.add_argument("--student-budget-minutes", type=float, default=None, help="stop the student after this time")
    args = parser.parse_args()

    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # whole slices: one input shape throughout
    card = demo_card(args.planes)
    slices_path = args.slices or prepare(args.data, card)
    slices = load_slices(slices_path)
    print(f"{len(slices.images)} training slices of {slices.images.shape[1:]} from {slices_path}", flush=True)
    config = TrainingConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay, crop_size=None, checkpoint_every=args.checkpoint_every, device=args.device, workers=args.workers,
        mixed_precision=args.mixed_precision, field_of_view_fraction=args.field_of_view_fraction, threads=args.threads,
        warp_interpolation=args.warp_interpolation, warp_fraction=args.warp_fraction, fraction_share=args.fraction_share,
    )
    if args.time_limit_minutes:
        config.time_limit_s = args.time_limit_minutes * 60
    updates = args.updates
    if args.budget_minutes:
        per_step = seconds_per_step(card, slices, config)
        config.steps = max(100, int(args.budget_minutes * 60 / per_step))
        config.time_limit_s = args.budget_minutes * 60 * 1.1
        print(f"{per_step * 1000:.1f} ms per step: {config.steps} steps fit {args.budget_minutes} minutes", flush=True)
        if args.student_budget_minutes:  # an update costs about 3 training steps (7 teacher passes on average, no gradients)
            updates = min(updates, max(50, int(args.student_budget_minutes * 60 / (3.2 * per_step))))
    if not args.resume:
        shutil.rmtree(args.checkpoints / "teacher", ignore_errors=True)
    teacher_folder = _drive(
        train(card, slices, args.out, config, data_description=DESCRIPTION, checkpoint_dir=args.checkpoints / "teacher",
              initial=args.initial, resume=args.resume),
        "teacher",
    )
    print(f"teacher written to {teacher_folder}", flush=True)
    if updates <= 0:
        return
    from napari_medgen.engine.model.loading import load_model
    from napari_medgen.engine.training.distill import DistillationConfig, distill

    teacher = load_model(str(teacher_folder), device=args.device)
    student_config = DistillationConfig(
        student_steps=4, steps=updates, batch_size=args.batch_size, learning_rate=1e-4, ema_decay=0.995,
        checkpoint_every=500, device=args.device, workers=args.workers,
        time_limit_s=args.student_budget_minutes * 60 if args.student_budget_minutes else None,
    )
    shutil.rmtree(args.checkpoints / "student", ignore_errors=True)
    student = _drive(
        distill(teacher, slices, args.fast_out, student_config, name="brain-t1-demo-fast", data_description=DESCRIPTION,
                checkpoint_dir=args.checkpoints / "student"),
        "student",
        every=100,
    )
    print(f"student written to {student}", flush=True)


if __name__ == "__main__":
    main()
