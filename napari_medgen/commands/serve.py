"""`napari-medgen serve`: the long-lived worker's arguments. The worker itself is `napari_medgen.serve`;
the command line starts it with its own parse-and-run function (cli.run_command), so the worker runs each
request exactly as the command line would, without importing the command line."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preload", default=None, metavar="MODEL",
                        help="load this model (name or folder, device auto, fp32) before the first request")
