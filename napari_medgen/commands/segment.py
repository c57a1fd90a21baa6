"""`napari-medgen segment`: a starting label map of a scan in a model's schema (its atlas registered to the
scan, refined by a mixture model), to edit and then generate or inpaint from; optionally its tissue fractions."""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter, add_progress_argument, drive

SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", required=True, type=Path, help="the scan (a 3-D T1 for the demo model)")
    parser.add_argument("--out", required=True, type=Path, help="label map to write (.nii.gz, .mha, .nrrd)")
    parser.add_argument(
        "--model", default=None, help="model whose label schema and atlas to use (default: the demo model)"
    )
    parser.add_argument(
        "--fractions-out",
        type=Path,
        default=None,
        metavar="PREFIX",
        help="also write each class's tissue fraction (0-1, the mixture model's posteriors) as PREFIX_fraction_<k> "
        "with --out's file type, k = 1, 2, ... in the schema's order; `generate --fractions` takes them",
    )
    add_progress_argument(parser)


def fraction_paths(prefix: Path, out: Path, count: int) -> list[Path]:
    """PREFIX_fraction_1 ... PREFIX_fraction_<count>, with the file type of `out`."""
    suffix = next((s for s in SUFFIXES if out.name.lower().endswith(s)), out.suffix or ".nii.gz")
    return [prefix.with_name(f"{prefix.name}_fraction_{k}{suffix}") for k in range(1, count + 1)]


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.anatomy import segment_scan
    from ..engine.io import check_writable_output, read_volume, write_volume

    check_writable_output([args.out])
    scan = read_volume(args.image)
    result = drive(segment_scan(scan, args.model, fractions=args.fractions_out is not None), reporter)
    written = [str(write_volume(result.labels, args.out))]
    if args.fractions_out is not None:
        paths = fraction_paths(args.fractions_out, args.out, len(result.fractions))
        check_writable_output(paths)
        written += [str(write_volume(fraction, path)) for fraction, path in zip(result.fractions, paths, strict=True)]
    return written
