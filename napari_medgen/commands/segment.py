"""`napari-medgen segment`: a starting label map of a scan in a model's schema (its atlas registered to the
scan, refined by a mixture model), to edit and then generate or inpaint from."""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter, add_progress_argument, drive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, type=Path, help="the scan (a 3-D T1 for the demo model)")
    parser.add_argument("--out", required=True, type=Path, help="label map to write (.nii.gz, .mha, .nrrd)")
    parser.add_argument("--model", default=None, help="model whose label schema and atlas to use (default: the demo model)")
    add_progress_argument(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.anatomy import labels_from_scan
    from ..engine.io import check_writable_output, read_volume, write_volume

    check_writable_output([args.out])
    scan = read_volume(args.image)
    label_map = drive(labels_from_scan(scan, args.model), reporter)
    return [str(write_volume(label_map, args.out))]
