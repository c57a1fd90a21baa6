"""The `napari-medgen` command line: a thin driver over the engine.

    napari-medgen demo                      napari with the sample brain and the plugin's widgets
    napari-medgen models                    the models found, and where
    napari-medgen generate --labels L --out O [--model M] [sampling options]
    napari-medgen inpaint --image I --region R [--labels L] --out O [sampling options]
    napari-medgen train --out MODEL_DIR [--data DIR] [--preset brain-t1-demo] [--steps --batch-size --device --resume]
    napari-medgen import-weights --checkpoint C --card CARD.json --out MODEL_DIR
    napari-medgen serve [--preload MODEL]   a long-lived worker: generate / inpaint requests as JSON lines on stdin

Progress goes to stderr as a bar on a terminal and nowhere in a pipe; ``--progress jsonl`` prints one
JSON object per line on stdout for every progress event and a last line with the result paths or the
error, so another program (a 3D Slicer module, a notebook) can follow and cancel by ending the
process. `serve` speaks the same events for many requests in one process (napari_medgen/serve.py);
docs/protocol.md documents every event and field. Errors are one line on stderr and a non-zero exit
status; nothing is written on failure.

Start-up: a command imports only what it needs when it needs it. `--help`, every command's `--help`
and `models` import neither torch nor MONAI; generate / inpaint / serve import MONAI's network modules
without the rest of MONAI (`engine.model.networks.monai_module`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

EXIT_ERROR = 1
EXIT_CANCELLED = 130
PROTOCOL_VERSION = 1  # of the JSON-lines events (docs/protocol.md); raised when a field changes meaning or goes


class UsageError(Exception):
    """A command line (or a serve request's arguments) that the parser refuses, when it may not exit."""


class RunCancelled(Exception):
    """A run stopped on request (a serve `cancel`): before its next network call, nothing written."""


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises UsageError instead of printing usage and exiting (serve requests)."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


def _sampling_arguments(parser: argparse.ArgumentParser) -> None:
    from .engine.diffusion.methods import SAMPLERS
    from .engine.model.device import PRECISION_NAMES
    from .engine.synthesis.options import SamplingOptions

    default = SamplingOptions()

    parser.add_argument("--model", default=None, help="model name or folder (default: the shipped demo model)")
    parser.add_argument("--steps", type=int, default=default.steps, help="sampling steps (network calls per slice batch; default: the model card's, else 20)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=default.sampler, help="sampling method (default: the model card's, else ddim)")
    parser.add_argument("--eta", type=float, default=default.eta, help="DDIM noise (0 = deterministic)")
    parser.add_argument("--seed", type=int, default=default.seed, help="random seed; variant k uses seed + k")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance weight (1 = none; default: the model card's)")
    parser.add_argument("--variants", type=int, default=default.variants, help="number of results, with seeds seed, seed+1, ...")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per network call (default: from memory)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", choices=PRECISION_NAMES, default=PRECISION_NAMES[0])
    parser.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto")


def _demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the window here and exit")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _generate_arguments(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("--labels", required=True, type=Path, help="label map file or DICOM folder")
    gen.add_argument("--fractions", type=Path, nargs="+", default=None, metavar="MAP",
                     help="tissue fraction maps on the label map's grid, one per class from 1 in the schema's order "
                     "(a segmentation's probability maps, 0-1), for a model trained on them")
    gen.add_argument("--out", required=True, type=Path, help="output file (.nii.gz, .mha, .nrrd)")
    _sampling_arguments(gen)


def _inpaint_arguments(inp: argparse.ArgumentParser) -> None:
    from .engine.synthesis.options import SamplingOptions

    default = SamplingOptions()
    inp.add_argument("--image", required=True, type=Path, help="the scan")
    inp.add_argument("--region", required=True, type=Path, help="mask of the region to regenerate (non-zero voxels)")
    inp.add_argument("--labels", type=Path, default=None, help="optional anatomy label map to follow inside the region")
    inp.add_argument("--out", required=True, type=Path, help="output file (.nii.gz, .mha, .nrrd)")
    inp.add_argument("--context-mm", type=float, default=default.context_mm, help="context margin around the region, in mm")
    inp.add_argument("--feather-mm", type=float, default=default.feather_mm, help="width of the seam blend inside the region, in mm")
    inp.add_argument("--border-interpolation-mm", type=float, default=default.border_interpolation_mm,
                     help="with the mean: how far in from the region's border the biharmonic interpolation of the "
                     "surrounding voxels is blended in (its weight falls as exp(-depth/this)); 0: the mean alone")
    inp.add_argument("--inpaint-estimate", choices=("auto", "sample", "mean"), default=default.inpaint_estimate,
                     help="what fills the region: a draw from the model (sample: a scan's texture), the posterior mean "
                     "(mean: the most faithful fill, smooth), or auto: the mean where the region is at most "
                     f"{default.small_region_mm:g} mm thick")
    inp.add_argument("--jump-length", type=int, default=default.jump_length, help="RePaint jump length (models without inpainting inputs)")
    inp.add_argument("--jump-count", type=int, default=default.jump_count, help="RePaint resampling count")
    _sampling_arguments(inp)


def _train_arguments(tr: argparse.ArgumentParser) -> None:
    tr.add_argument("--data", type=Path, default=None,
                    help="folder (imagesTr/labelsTr, or <case>_image / <case>_label files), JSON manifest, or prepared "
                         "slices (.npz); default with --preset brain-t1-demo: the shipped sample brain")
    tr.add_argument("--out", required=True, type=Path, help="model folder to write (card, weights, loss curve)")
    tr.add_argument("--preset", default="brain-t1-demo", help="model card preset (architecture, spacing, labels)")
    tr.add_argument("--name", default=None, help="model name in the card (default: the preset's)")
    tr.add_argument("--steps", type=int, default=3000, help="optimiser steps")
    tr.add_argument("--batch-size", type=int, default=12)
    tr.add_argument("--learning-rate", type=float, default=3e-4)
    tr.add_argument("--crop", type=int, default=64, help="random crop size in pixels (0: whole slices)")
    tr.add_argument("--field-of-view-fraction", type=float, default=0.0,
                    help="fraction of batches cut to a smaller field of view (32-96 px), for whole-slice training")
    tr.add_argument("--fraction-share", type=float, default=0.0,
                    help="share of samples conditioned on tissue fractions instead of hard labels (0-1); needs each "
                    "label map's fraction maps, <label map name>_fraction_<k> beside it (the sample brain has them)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--workers", type=int, default=0, help="processes making batches ahead of use (for a GPU)")
    tr.add_argument("--mixed-precision", action="store_true", help="bfloat16 autocast on a GPU")
    tr.add_argument("--time-limit-minutes", type=float, default=None,
                    help="stop early (the model is written) after this many minutes")
    tr.add_argument("--initial", type=Path, default=None,
                    help="a model folder of the same network whose weights training starts from")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    tr.add_argument("--checkpoint-dir", type=Path, default=None, help="where checkpoints go (default: OUT/checkpoint)")
    tr.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto")


def _segment_arguments(seg: argparse.ArgumentParser) -> None:
    seg.add_argument("--image", required=True, type=Path, help="the scan (a 3-D T1 for the demo model)")
    seg.add_argument("--out", required=True, type=Path, help="label map to write (.nii.gz, .mha, .nrrd)")
    seg.add_argument("--model", default=None, help="model whose label schema and atlas to use (default: the demo model)")
    seg.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto")


def _import_weights_arguments(imp: argparse.ArgumentParser) -> None:
    imp.add_argument("--checkpoint", required=True, type=Path)
    imp.add_argument("--card", required=True, type=Path, help="model.json describing the network")
    imp.add_argument("--out", required=True, type=Path, help="model folder to create")


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--preload", default=None, metavar="MODEL",
                       help="load this model (name or folder, device auto, fp32) before the first request")


# name -> (help, what adds its arguments): a command's arguments are built only when it is the one run
# (or for build_parser() with no command), so --help imports nothing of the engine's defaults. What adds
# the arguments is a function here or "module:function" for a command kept in `napari_medgen.commands`.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | str]] = {
    "demo": ("open napari with the sample brain, ready to paint and generate", _demo_arguments),
    "models": ("list the models found and where they came from", _no_arguments),
    "generate": ("synthesize an image from an anatomy label map", _generate_arguments),
    "inpaint": ("regenerate a region of a scan, keeping everything outside it", _inpaint_arguments),
    "segment": ("a starting label map of a scan in a model's schema (its atlas registered to the scan, refined "
                "by a mixture model), to edit and generate or inpaint from", _segment_arguments),
    "train": ("train a slice-wise model on image / label-map pairs", _train_arguments),
    "import-weights": ("convert a PyTorch state dict into a safe model folder", _import_weights_arguments),
    "serve": ("a long-lived worker: generate / inpaint requests as JSON lines on stdin, the model kept loaded "
              "(docs/protocol.md)", _serve_arguments),
    "batch": ("a labelled synthetic data set (augmented label maps + generated images) in nnU-Net's raw layout, "
              "on dask.distributed", "napari_medgen.commands.batch:add_arguments"),
    "import-maisi": ("import MAISI (NV-Generate-CTMR configs and .pt checkpoints) as a safe latent model folder",
                     "napari_medgen.commands.importers:add_maisi_arguments"),
    "import-bundle": ("import a MONAI generative bundle (configs/*.json, models/*.pt) as a safe latent model folder",
                      "napari_medgen.commands.importers:add_bundle_arguments"),
    "distill": ("a few-step student of a trained model (step distillation), resumable like train",
                "napari_medgen.commands.distill:add_arguments"),
}


def build_parser(command: str | None = None, exit_on_error: bool = True) -> argparse.ArgumentParser:
    """The command line's parser: every command's arguments, or only `command`'s ('' for none: the
    top-level --help and --version). With exit_on_error=False, a refused command line raises UsageError."""
    from . import __version__

    parser_class = argparse.ArgumentParser if exit_on_error else _Parser
    parser = parser_class(prog="napari-medgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"napari-medgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, allow_abbrev=exit_on_error)
        if command is None or command == name:
            (_imported(add_arguments) if isinstance(add_arguments, str) else add_arguments)(sub)
    return parser


# Commands kept in their own modules (napari_medgen/commands/): name -> "module:function", a function of
# (args, reporter) that returns the paths written; imported only when that command runs.
HANDLERS: dict[str, str] = {
    "batch": "napari_medgen.commands.batch:run",
    "import-maisi": "napari_medgen.commands.importers:run_maisi",
    "import-bundle": "napari_medgen.commands.importers:run_bundle",
    "distill": "napari_medgen.commands.distill:run",
}


def _imported(target: str) -> Callable[..., Any]:
    """The function that "package.module:function" names, imported now (commands are imported lazily)."""
    import importlib

    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Parse a command line, building only its command's arguments."""
    return build_parser(argv[0] if argv and argv[0] in COMMANDS else "").parse_args(argv)


class Reporter:
    """Progress as a bar (terminal), JSON lines (machines) or nothing (pipes).

    In jsonl mode every event is one JSON object on one line (docs/protocol.md): `event`, the
    `protocol` version, the request's `id` when the reporter has one (serve), then the event's fields.
    `write` takes one line of text (default: print to stdout, flushed)."""

    def __init__(self, mode: str, request_id: Any = None, write: Callable[[str], None] | None = None) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode = mode
        self.request_id = request_id
        self._write = write
        self.bar: Any = None

    def event(self, kind: str, **fields: Any) -> None:
        """Write one JSON-lines event (in jsonl mode only)."""
        if self.mode != "jsonl":
            return
        record: dict[str, Any] = {"event": kind, "protocol": PROTOCOL_VERSION}
        if self.request_id is not None:
            record["id"] = self.request_id
        record.update(fields)
        line = json.dumps(record)
        if self._write is not None:
            self._write(line)
        else:
            print(line, flush=True)

    def check(self) -> None:
        """Called before every network call of a run: a serve request raises RunCancelled here when cancelled."""

    def progress(self, step: int, total: int, message: str = "", notice: str = "") -> None:
        """One progress event; `notice` (a retry after running out of memory, a fall back to the CPU)
        is also said once on stderr, whatever the mode."""
        if self.mode == "jsonl":
            self.event("progress", step=step, total=total, message=message, **({"notice": notice} if notice else {}))
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
            self.event("result", paths=paths)
        else:
            for path in paths:
                print(path)

    def error(self, message: str, cancelled: bool = False) -> None:
        self.close()
        self.event("cancelled" if cancelled else "error", message=message)
        print(f"napari-medgen: {'cancelled' if cancelled else 'error'}: {message}", file=sys.stderr, flush=True)


def _drive(run: Generator, reporter: Reporter) -> Any:
    """Run an engine generator to the end, reporting its progress; returns its result. The reporter is
    asked before each network call whether to go on (closing the generator stops the run there)."""
    try:
        while True:
            reporter.check()
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
             "feather_mm": args.feather_mm, "inpaint_estimate": args.inpaint_estimate,
             "border_interpolation_mm": args.border_interpolation_mm}
            if hasattr(args, "jump_length") else {}
        ),
    )


def _write_results(results: list, paths: list[Path]) -> list[str]:
    from .engine.io import write_volumes

    # All variants or none: a failure on the last one puts back what the first ones replaced.
    return [str(path) for path in write_volumes(results, paths)]


def cmd_generate(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from .engine.io import check_writable_output, read_volume
    from .engine.model.loading import load_model
    from .engine.synthesis import generate

    paths = _output_paths(args.out, args.variants, args.seed)
    check_writable_output(paths)
    options = _sampling_options(args)
    options.check()
    label_map = read_volume(args.labels)
    fractions = [read_volume(path) for path in args.fractions] if args.fractions else None
    model = load_model(args.model, device=args.device, precision=args.precision)
    results = _drive(generate(model, label_map, options, tissue_fractions=fractions), reporter)
    return _write_results(results, paths)


def cmd_inpaint(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from .engine.io import check_writable_output, read_volume
    from .engine.model.loading import load_model
    from .engine.synthesis import inpaint

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


def cmd_segment(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from .engine.anatomy import labels_from_scan
    from .engine.io import check_writable_output, read_volume, write_volume

    check_writable_output([args.out])
    scan = read_volume(args.image)
    label_map = _drive(labels_from_scan(scan, args.model), reporter)
    return [str(write_volume(label_map, args.out))]


def cmd_train(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from .engine.model.presets import preset_card
    from .engine.training import TrainingConfig, find_training_pairs, train
    from .engine.training.data import TrainingSlices, demo_training_pairs

    card = preset_card(args.preset)
    if args.name:
        card = card.model_copy(update={"name": args.name})
    if args.data is None:
        if args.preset != "brain-t1-demo":
            from .engine.errors import MedgenError

            raise MedgenError("give the training data with --data")
        pairs = demo_training_pairs()
        description = "ICBM152 2009a symmetric T1 template and its tissue labels at 2 mm (the shipped sample brain)"
    elif args.data.suffix == ".npz":
        from .engine.training.data import load_slices

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


def execute(args: argparse.Namespace, reporter: Reporter) -> int:
    """Run one parsed command, reporting its result or error; returns the exit status. Every failure
    is one line (and, in jsonl mode, a last event); nothing is written on failure."""
    from .engine.errors import MedgenError

    try:
        if args.command == "demo":
            cmd_demo(args)
            return 0
        if args.command == "models":
            cmd_models()
            return 0
        if args.command == "serve":
            from .serve import serve

            return serve(preload=args.preload)
        handler = {"generate": cmd_generate, "inpaint": cmd_inpaint, "segment": cmd_segment, "train": cmd_train}.get(
            args.command
        ) or (_imported(HANDLERS[args.command]) if args.command in HANDLERS else None)
        paths = handler(args, reporter) if handler else cmd_import_weights(args)
        reporter.result(paths)
        return 0
    except MedgenError as error:
        reporter.error(str(error))
        return EXIT_ERROR
    except RunCancelled as cancelled:
        reporter.error(str(cancelled) or "cancelled; nothing was written", cancelled=True)
        return EXIT_CANCELLED
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_arguments(argv)
    if args.command in ("generate", "inpaint", "serve"):
        # Processes that only run networks import MONAI's network modules, not all of MONAI (seconds).
        from .engine.model.networks import use_lean_monai_import

        use_lean_monai_import()
    reporter = Reporter(getattr(args, "progress", "none"))
    # serve handles its own signals (a SIGTERM cancels its running request, then it exits).
    previous_handler = _handle_terminate() if args.command not in ("demo", "serve") else None
    try:
        return execute(args, reporter)
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
