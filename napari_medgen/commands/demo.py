"""`napari-medgen demo`: napari with the sample brain, its tissue labels and the plugin's widgets."""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the window here and exit")


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..demo import run_demo

    run_demo(screenshot=args.screenshot)
    return []
