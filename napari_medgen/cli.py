"""The `napari-medgen` command line: a thin driver over the engine.

    napari-medgen demo                      napari with the sample brain and the plugin's widgets
    napari-medgen models                    the models found, and where
    napari-medgen generate --labels L --out O [--model M] [sampling options]
    napari-medgen inpaint --image I --region R [--labels L] --out O [sampling options]
    napari-medgen train --out MODEL_DIR [--data DIR] [--preset brain-t1-demo] [--steps --batch-size --device --resume]
    napari-medgen import-weights --checkpoint C --card CARD.json --out MODEL_DIR

Progress goes to stderr as a bar on a terminal and nowhere in a pipe; ``--progress jsonl`` prints one
JSON object per line on stdout for every progress event and a last line with the result paths or the
error, so another program (a 3D Slicer module, a notebook) can follow and cancel by ending the
process. Errors are one line on stderr and a non-zero exit status; nothing is written on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

EXIT_ERROR = 1
EXIT_CANCELLED = 130


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    from .engine.diffusion.methods import SAMPLERS
    from .engine.model.device import PRECISION_NAMES
    from .engine.synthesis.options import SamplingOptions

    default = SamplingOptions()

    parser.add_argument("--model", default=None, help="model name or folder (default: the shipped demo model)")
    parser.add_argument("--steps", type=int, default=default.steps, help="sampling steps (network calls per slice batch)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=default.sampler, help="sampling method")
    parser.add_argument("--eta", type=float, default=default.eta, help="DDIM noise (0 = deterministic)")
    parser.add_argument("--seed", type=int, default=default.seed, help="random seed; variant k uses seed + k")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance weight (1 = none; default: the model card's)")
    parser.add_argument("--variants", type=int, default=default.variants, help="number of results, with seeds seed, seed+1, ...")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per network call (default: from memory)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", choices=PRECISION_NAMES, default=PRECISION_NAMES[0])
    parser.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .engine.synthesis.options import SamplingOptions

    default = SamplingOptions()
    parser = argparse.ArgumentParser(prog="napari-medgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"napari-medgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="open napari with the sample brain, ready to paint and generate")
    demo.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the window here and exit")

    commands.add_parser("models", help="list the models found and where they came from")

    gen = commands.add_parser("generate", help="synthesize an image from an anatomy label map")
    gen.add_argument("--labels", required=True, type=Path, help="label map file or DICOM folder")
    gen.add_argument("--out", required=True, type=Path, help="output file (.nii.gz, .mha, .nrrd)")
    _sampling_arguments(gen)

    inp = commands.add_parser("inpaint", help="regenerate a region of a scan, keeping everything outside it")
    inp.add_argument("--image", required=True, type=Path, help="the scan")
    inp.add_argument("--region", required=True, type=Path, help="mask of the region to regenerate (non-zero voxels)")
    inp.add_argument("--labels", type=Path, default=None, help="optional anatomy label map to follow inside the region")
    inp.add_argument("--out", required=True, type=Path, help="output file (.nii.gz, .mha, .nrrd)")
    inp.add_argument("--context-mm", type=float, default=default.context_mm, help="context margin around the region, in mm")
    inp.add_argument("--feather-mm", type=float, default=default.feather_mm, help="width of the seam blend inside the region, in mm")
    inp.add_argument("--jump-length", type=int, default=default.jump_length, help="RePaint jump length (models without inpainting inputs)")
    inp.add_argument("--jump-count", type=int, default=default.jump_count, help="RePaint resampling count")
    _sampling_arguments(inp)

    tr = commands.add_parser("train", help="train a slice-wise model on image / label-map pairs")
    tr.add_argument("--data", type=Path, default=None,
                    help="folder (imagesTr/labelsTr, or <case>_image / <case>_label files) or JSON manifest; "
                         "default with --preset brain-t1-demo: the shipped sample brain")
    tr.add_argument("--out", required=True, type=Path, help="model folder to write (card, weights, loss curve)")
    tr.add_argument("--preset", default="brain-t1-demo", help="model card preset (architecture, spacing, labels)")
    tr.add_argument("--name", default=None, help="model name in the card (default: the preset's)")
    tr.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    tr.add_argument("--batch-size", type=int, default=12)
    tr.add_argument("--learning-rate", type=float, default=3e-4)
    tr.add_argument("--crop", type=int, default=64, help="random crop size in pixels (0: whole slices)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    tr.add_argument("--checkpoint-dir", type=Path, default=None, help="where checkpoints go (default: OUT/checkpoint)")
    tr.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto")

    imp = commands.add_parser("import-weights", help="convert a PyTorch state dict into a safe model folder")
    imp.add_argument("--checkpoint", required=True, type=Path)
    imp.add_argument("--card", required=True, type=Path, help="model.json describing the network")
    imp.add_argument("--out", required=True, type=Path, help="model folder to create")
    return parser


class Reporter:
    """Progress as a bar (terminal), JSON lines (machines) or nothing (pipes)."""

    def __init__(self, mode: str) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode = mode
        self.bar: Any = None

    def progress(self, step: int, total: int, message: str = "", notice: str = "") -> None:
        """One progress event; `notice` (a retry after running out of memory, a fall back to the CPU)
        is also said once on stderr, whatever the mode."""
        if self.mode == "jsonl":
            event = {"event": "progress", "step": step, "total": total, "message": message}
            if notice:
                event["notice"] = notice
            print(json.dumps(event), flush=True)
        elif self.mode == "bar":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
            if self.bar.total != total:  # a run that retries with smaller batches makes more calls
                self.bar.total = total
            self.bar.set_description(message)
            self.bar.update(step - self.bar.n)
        if notice:
            if self.bar is not None:
                self.bar.write(f"napari-medgen: note: {notice}", file=sys.stderr)
            else:
                print(f"napari-medgen: note: {notice}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def result(self, paths: list[str]) -> None:
        self.close()
        if self.mode == "jsonl":
            print(json.dumps({"event": "result", "paths": paths}), flush=True)
        else:
            for path in paths:
                print(path)

    def error(self, message: str, cancelled: bool = False) -> None:
        self.close()
        if self.mode == "jsonl":
            print(json.dumps({"event": "cancelled" if cancelled else "error", "message": message}), flush=True)
        print(f"napari-medgen: {'cancelled' if cancelled else 'error'}: {message}", file=sys.stderr)


def _drive(run: Generator, reporter: Reporter) -> Any:
    """Run an engine generator to the end, reporting its progress; returns its result."""
    try:
        while True:
            event = next(run)
            reporter.progress(event.step, event.total, event.message, getattr(event, "notice", ""))
    except StopIteration as stop:
        return stop.value
    finally:
        run.close()


def _output_paths(out: Path, variants: int, seed: int) -> list[Path]:
    from .engine.io import volume_extension

    if variants == 1:
        return [out]
    ext = volume_extension(out)
    stem = out.name[: -len(ext)] if ext else out.stem
    return [out.with_name(f"{stem}_seed{seed + k}{ext}") for k in range(variants)]


def _sampling_options(args: argparse.Namespace) -> Any:
    from .engine.synthesis import SamplingOptions

    return SamplingOptions(
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        guidance=args.guidance,
        eta=args.eta,
        variants=args.variants,
        batch_size=args.batch_size,
        preview_every=0,  # nobody looks at previews on the command line
        **(
            {"jump_length": args.jump_length, "jump_count": args.jump_count, "context_mm": args.context_mm,
             "feather_mm": args.feather_mm}
            if hasattr(args, "jump_length") else {}
        ),
    )


def _write_results(results: list, paths: list[Path]) -> list[str]:
    from .engine.io import write_volumes

    # All variants or none: a failure on the last one puts back what the first ones replaced.
    return [str(path) for path in write_volumes(results, paths)]


def cmd_generate(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from .engine.io import read_volume
    from .engine.model.loading import load_model
    from .engine.synthesis import generate

    from .engine.io import check_writable_output

    paths = _output_paths(args.out, args.variants, args.seed)
    check_writable_output(paths)
    options = _sampling_options(args)
    options.check()
    label_map = read_volume(args.labels)
    model = load_model(args.model, device=args.device, precision=args.precision)
    results = _drive(generate(model, label_map, options), reporter)
    return _write_results(results, paths)


def cmd_inpaint(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from .engine.io import read_volume
    from .engine.model.loading import load_model
    from .engine.synthesis import inpaint

    from .engine.io import check_writable_output

    paths = _output_paths(args.out, args.variants, args.seed)
    check_writable_output(paths)
    options = _sampling_options(args)
    options.check()
    image = read_volume(args.image)
    region = read_volume(args.region)
    label_map = read_volume(args.labels) if args.labels else None
    model = load_model(args.model, device=args.device, precision=args.precision)
    run = inpaint(model, image, region, label_map, options)
    return _write_results(_drive(run, reporter), paths)


def cmd_train(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from .engine.model.presets import preset_card
    from .engine.training import TrainingConfig, find_training_pairs, train
    from .engine.training.data import demo_training_pairs

    card = preset_card(args.preset)
    if args.name:
        card = card.model_copy(update={"name": args.name})
    if args.data is None:
        if args.preset != "brain-t1-demo":
            from .engine.errors import MedgenError

            raise MedgenError("give the training data with --data")
        pairs = demo_training_pairs()
        description = "ICBM152 2009a symmetric T1 template and its tissue labels at 2 mm (the shipped sample brain)"
    else:
        pairs = find_training_pairs(args.data)
        description = f"{len(pairs)} image / label pairs from {args.data}"
    config = TrainingConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        crop_size=args.crop or None,
        seed=args.seed,
        device=args.device,
    )
    run = train(card, pairs, args.out, config, resume=args.resume, data_description=description, checkpoint_dir=args.checkpoint_dir)
    folder = _drive(run, reporter)
    return [str(folder)]


def cmd_models() -> None:
    from .engine.model.registry import list_models, model_search_path

    entries, problems = list_models()
    rows = [("NAME", "VERSION", "DIMS", "TASKS", "CONDITIONING", "SOURCE", "FOLDER")]
    for e in entries:
        card = e.card
        source = e.source + (f" (shadows {len(e.shadows)})" if e.shadows else "")
        rows.append((card.name, card.version, f"{card.spatial_dims}-D", ",".join(card.tasks), card.conditioning_summary(), source, str(e.folder)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for e in entries:
        for shadowed in e.shadows:
            print(f"note: {e.card.name} from {e.source} shadows the one in {shadowed}")
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not entries:
        print("no models found; searched: " + ", ".join(f"{s}: {p}" for s, p in model_search_path()))


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(screenshot=args.screenshot)


def cmd_import_weights(args: argparse.Namespace) -> list[str]:
    from .engine.model.card import load_card
    from .engine.model.weights import import_state_dict

    card = load_card(args.card.parent) if args.card.name == "model.json" else None
    if card is None:
        from .engine.model.card import parse_card

        try:
            raw = json.loads(args.card.read_text())
        except (OSError, ValueError, RecursionError) as error:  # unreadable, not UTF-8, not JSON
            from .engine.errors import ModelCardError

            raise ModelCardError(f"{args.card}: cannot read the card ({error})") from None
        card = parse_card(raw, str(args.card))
    return [str(import_state_dict(args.checkpoint, card, args.out))]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .engine.errors import MedgenError

    reporter = Reporter(getattr(args, "progress", "none"))
    previous_handler = _handle_terminate() if args.command != "demo" else None
    try:
        if args.command == "demo":
            cmd_demo(args)
            return 0
        if args.command == "models":
            cmd_models()
            return 0
        handler = {"generate": cmd_generate, "inpaint": cmd_inpaint, "train": cmd_train}.get(args.command)
        paths = handler(args, reporter) if handler else cmd_import_weights(args)
        reporter.result(paths)
        return 0
    except MedgenError as error:
        reporter.error(str(error))
        return EXIT_ERROR
    except KeyboardInterrupt:
        reporter.error("stopped by the user; nothing was written", cancelled=True)
        return EXIT_CANCELLED
    except Exception as error:  # noqa: BLE001 - a bug, but still one line and a last JSON event
        if os.environ.get("NAPARI_MEDGEN_DEBUG"):
            import traceback

            traceback.print_exc()
        reporter.error(
            f"unexpected {type(error).__name__}: {str(error)[:300]}; nothing was written. This is a bug in "
            "napari-medgen: please report it with the command line (NAPARI_MEDGEN_DEBUG=1 shows the traceback)"
        )
        return EXIT_ERROR
    finally:
        _restore_terminate(previous_handler)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (how another program cancels a run) stops like Ctrl-C: cleanly, writing nothing."""
    raise KeyboardInterrupt


def _handle_terminate() -> Any:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminate)


def _restore_terminate(previous: Any) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
