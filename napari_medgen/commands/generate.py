"""`napari-medgen generate`: synthesize an image from an anatomy label map (and optionally its tissue fractions), or,
for a model that takes none, on a grid: an image's (--like), --size / --spacing, or the model's own; with the
model's context attributes (--attribute NAME=VALUE) and modality (--modality NAME) where it takes them."""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter, UsageError, drive
from .sampling import add_sampling_arguments, output_paths, sampling_options, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", type=Path, default=None,
                        help="label map file or DICOM folder (models that take none: leave out, see --like / --size)")
    parser.add_argument("--like", type=Path, default=None,
                        help="models without a label map: generate on this image's grid (default: the model's own)")
    parser.add_argument("--size", type=int, nargs="+", default=None, metavar="N",
                        help="models without a label map: voxels x y [z] (default: the model's own)")
    parser.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                        help="models without a label map: spacing x y [z] in mm (default: the model's own)")
    parser.add_argument("--attribute", action="extend", nargs="+", default=None, metavar="NAME=VALUE",
                        help="a context attribute of the model (repeatable; `napari-medgen models` lists them with "
                        "their ranges; the card's default for the rest)")
    parser.add_argument("--modality", default=None, help="the model's modality by name (default: the card's own)")
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
    options.attributes = attribute_values(args.attribute)
    options.modality = args.modality
    options.check()
    if args.labels is not None and (args.like or args.size or args.spacing):
        raise UsageError("give --labels, or a grid for a model that takes no label map (--like or --size/--spacing), not both")
    label_map = read_volume(args.labels) if args.labels is not None else None
    fractions = [read_volume(path) for path in args.fractions] if args.fractions else None
    model = load_model(args.model, device=args.device, precision=args.precision)
    if label_map is None:
        from ..engine.synthesis import generation_grid

        like = read_volume(args.like) if args.like is not None else None
        label_map = generation_grid(model.card, like, args.size, args.spacing)
    results = drive(generate(model, label_map, options, tissue_fractions=fractions), reporter)
    return write_results(results, paths)


def attribute_values(items: list[str] | None) -> dict[str, float] | None:
    """`NAME=VALUE` items as a dict (checked against the model's card when it is loaded)."""
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UsageError(f"--attribute takes NAME=VALUE with a number, e.g. age=0.5; got {item!r}")
    return out
