"""What the importing commands (import-maisi, import-bundle) share: the options that name each network's
checkpoint, and one run with its two progress events (reading, written)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .reporting import Reporter

CHECKPOINT_ROLES = {"autoencoder": "autoencoder", "unet": "network", "controlnet": "controlnet"}


def add_checkpoint_arguments(parser: argparse.ArgumentParser, default_from: str) -> None:
    """--autoencoder-weights, --unet-weights, --controlnet-weights: a checkpoint in place of `default_from`'s."""
    for option, what in (("autoencoder", "autoencoder"), ("unet", "diffusion UNet"), ("controlnet", "ControlNet")):
        parser.add_argument(f"--{option}-weights", default=None, help=f"{what} checkpoint (default: {default_from})")


def checkpoint_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The checkpoints given on the command line, by the importer's network role."""
    given = {role: getattr(args, f"{option}_weights") for option, role in CHECKPOINT_ROLES.items()}
    return {role: path for role, path in given.items() if path}


def run_import(reporter: Reporter, do_import: Callable[[], Path]) -> list[str]:
    """Run one import with a progress event before and after; the model folder it wrote."""
    reporter.progress(0, 1, "reading configs and checkpoints")
    folder = do_import()
    reporter.progress(1, 1, "written")
    return [str(folder)]
