"""The `napari-medgen` command line: a thin driver over the engine.

    napari-medgen demo                      napari with the sample brain and the plugin's widgets
    napari-medgen models                    the models found, and where
    napari-medgen generate --labels L --out O [--model M] [sampling options]
    napari-medgen inpaint --image I --region R [--labels L] --out O [sampling options]
    napari-medgen segment --image I --out O  a starting label map of a scan
    napari-medgen train --out MODEL_DIR [--data DIR] [--preset brain-t1-demo] [--steps --batch-size --device --resume]
    napari-medgen serve [--preload MODEL]   a long-lived worker: generate / inpaint requests as JSON lines on stdin

Progress goes to stderr as a bar on a terminal and nowhere in a pipe; ``--progress jsonl`` prints one
JSON object per line on stdout for every progress event and a last line with the result paths or the
error, so another program (a 3D Slicer module, a notebook) can follow and cancel by ending the
process. `serve` speaks the same events for many requests in one process (napari_medgen/serve.py);
docs/protocol.md documents every event and field. Errors are one line on stderr and a non-zero exit
status; nothing is written on failure.

This module assembles the parser and dispatches; each command is a module of `napari_medgen.commands`
(`add_arguments`, `run`). Start-up: a command imports only what it needs when it needs it. `--help`,
every command's `--help` and `models` import neither torch nor MONAI; generate / inpaint / serve import
MONAI's network modules without the rest of MONAI (`engine.model.networks.monai_module`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType
from typing import Any

from .commands.reporting import (
    EXIT_CANCELLED,
    EXIT_ERROR,
    PROTOCOL_VERSION,
    Reporter,
    RunCancelled,
    UsageError,
)

# name -> (help, module of napari_medgen.commands): a command's module is imported, and its arguments
# built, only when it is the one run (or for build_parser() with no command), so --help imports nothing
# of the engine.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("open napari with the sample brain, ready to paint and generate", "demo"),
    "models": ("list the models found and where they came from", "models"),
    "generate": ("synthesize an image from an anatomy label map", "generate"),
    "inpaint": ("regenerate a region of a scan, keeping everything outside it", "inpaint"),
    "segment": ("a starting label map of a scan in a model's schema (its atlas registered to the scan, refined "
                "by a mixture model), to edit and generate or inpaint from", "segment"),
    "train": ("train a slice-wise model on image / label-map pairs", "train"),
    "import-weights": ("convert a PyTorch state dict into a safe model folder", "import_weights"),
    "serve": ("a long-lived worker: generate / inpaint requests as JSON lines on stdin, the model kept loaded "
              "(docs/protocol.md)", "serve"),
    "batch": ("a labelled synthetic data set (augmented label maps + generated images) in nnU-Net's raw layout, "
              "on dask.distributed", "batch"),
    "import-maisi": ("import MAISI (NV-Generate-CTMR configs and .pt checkpoints) as a safe latent model folder",
                     "import_maisi"),
    "import-bundle": ("import a MONAI generative bundle (configs/*.json, models/*.pt) as a safe latent model folder",
                      "import_bundle"),
    "distill": ("a few-step student of a trained model (step distillation), resumable like train", "distill"),
}

__all__ = ["COMMANDS", "EXIT_CANCELLED", "EXIT_ERROR", "PROTOCOL_VERSION", "Reporter", "RunCancelled", "UsageError",
           "build_parser", "execute", "main", "parse_arguments", "run_command"]


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises UsageError instead of printing usage and exiting (serve requests)."""

    def error(self, message: str) -> Any:
        raise UsageError(message)


def command_module(name: str) -> ModuleType:
    """The module of `napari_medgen.commands` that holds command `name`, imported now."""
    return importlib.import_module(f"napari_medgen.commands.{COMMANDS[name][1]}")


def build_parser(command: str | None = None, exit_on_error: bool = True) -> argparse.ArgumentParser:
    """The command line's parser: every command's arguments, or only `command`'s ('' for none: the
    top-level --help and --version). With exit_on_error=False, a refused command line raises UsageError."""
    from . import __version__

    parser_class = argparse.ArgumentParser if exit_on_error else _Parser
    parser = parser_class(prog="napari-medgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"napari-medgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, allow_abbrev=exit_on_error)
        if command is None or command == name:
            command_module(name).add_arguments(sub)
    return parser


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Parse a command line, building only its command's arguments."""
    return build_parser(argv[0] if argv and argv[0] in COMMANDS else "").parse_args(argv)


def run_command(argv: list[str], reporter: Reporter) -> int:
    """Parse one command line without exiting and run it (how `serve` runs a request): a refused command
    line is one error event; returns the exit status."""
    try:
        args = build_parser(argv[0], exit_on_error=False).parse_args(argv)
    except UsageError as error:
        reporter.error(f"bad arguments for {argv[0]}: {error}")
        return EXIT_ERROR
    reporter.event("started", command=argv[0])
    return execute(args, reporter)


def execute(args: argparse.Namespace, reporter: Reporter) -> int:
    """Run one parsed command, reporting its result or error; returns the exit status. Every failure
    is one line (and, in jsonl mode, a last event); nothing is written on failure."""
    from .engine.errors import MedgenError

    try:
        if args.command == "serve":
            # The worker runs each request through this module's run_command, handed to it, so that
            # serve.py does not import the command line that starts it.
            from .serve import serve

            return serve(preload=args.preload, run_command=run_command)
        reporter.result(command_module(args.command).run(args, reporter))
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
