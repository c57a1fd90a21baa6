"""`napari-medgen generate`: synthesize an image from an anatomy label map (and optionally its tissue fractions)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter, drive
from .sampling import add_sampling_arguments, output_paths, sampling_options, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, type=Path, help="label map file or DICOM folder")
    parser.add_argument("--fractions", type=Path, nargs="+", default=None, metavar="MAP",
                        help="tissue fraction maps on the label map's grid, one per class from 1 in the schema's order "
                        "(a segmentation's probability maps, 0-1), for a model trained on them")
    parser.add_argument("--out", required=True, type=Path, help="output file (.nii.gz, .mha, .nrrd)")
    add_sampling_arguments(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.io import check_writable_output, read_volume
    from ..engine.model.loading import load_model
    from ..engine.synthesis import generate

    paths = output_paths(args.out, args.variants, args.seed)
    check_writable_output(paths)
    options = sampling_options(args)
    options.check()
    label_map = read_volume(args.labels)
    fractions = [read_volume(path) for path in args.fractions] if args.fractions else None
    model = load_model(args.model, device=args.device, precision=args.precision)
    results = drive(generate(model, label_map, options, tissue_fractions=fractions), reporter)
    return write_results(results, paths)
