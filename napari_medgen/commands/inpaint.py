"""`napari-medgen inpaint`: regenerate a region of a scan, keeping every voxel outside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter, drive
from .sampling import add_sampling_arguments, output_paths, sampling_options, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.synthesis.options import SamplingOptions

    default = SamplingOptions()
    parser.add_argument("--image", required=True, type=Path, help="the scan")
    parser.add_argument("--region", required=True, type=Path, help="mask of the region to regenerate (non-zero voxels)")
    parser.add_argument("--labels", type=Path, default=None, help="optional anatomy label map to follow inside the region")
    parser.add_argument("--out", required=True, type=Path, help="output file (.nii.gz, .mha, .nrrd)")
    parser.add_argument("--context-mm", type=float, default=default.context_mm, help="context margin around the region, in mm")
    parser.add_argument("--feather-mm", type=float, default=default.feather_mm, help="width of the seam blend inside the region, in mm")
    parser.add_argument("--border-interpolation-mm", type=float, default=default.border_interpolation_mm,
                        help="with the mean: how far in from the region's border the biharmonic interpolation of the "
                        "surrounding voxels is blended in (its weight falls as exp(-depth/this)); 0: the mean alone")
    parser.add_argument("--inpaint-estimate", choices=("auto", "sample", "mean"), default=default.inpaint_estimate,
                        help="what fills the region: a draw from the model (sample: a scan's texture), the posterior mean "
                        "(mean: the most faithful fill; smooth at the model's grid, with the scan's detail on a finer scan), or auto: the mean where the region is at most "
                        f"{default.small_region_mm:g} mm thick")
    parser.add_argument("--fine-detail", choices=("sample", "all", "none"), default=default.fine_detail,
                        help="on a scan finer than the model's grid, which fills take the scan's own fine detail (the "
                        "label map's tissue edges and local levels at the scan's resolution, and a texture with the "
                        "grain of the scan around the region): all (default), sample, or none")
    parser.add_argument("--continue-anatomy", action=argparse.BooleanOptionalAction, default=default.continue_anatomy,
                        help="without --labels: the tissue around the region (by intensity) continued into it guides "
                        "the fill (default); --no-continue-anatomy: the fill is unguided")
    parser.add_argument("--jump-length", type=int, default=default.jump_length, help="RePaint jump length (models without inpainting inputs)")
    parser.add_argument("--jump-count", type=int, default=default.jump_count, help="RePaint resampling count")
    add_sampling_arguments(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.io import check_writable_output, read_volume
    from ..engine.model.loading import load_model
    from ..engine.synthesis import inpaint

    paths = output_paths(args.out, args.variants, args.seed)
    check_writable_output(paths)
    options = sampling_options(
        args, jump_length=args.jump_length, jump_count=args.jump_count, context_mm=args.context_mm,
        feather_mm=args.feather_mm, inpaint_estimate=args.inpaint_estimate,
        border_interpolation_mm=args.border_interpolation_mm, fine_detail=args.fine_detail,
        continue_anatomy=args.continue_anatomy,
    )
    options.check()
    image = read_volume(args.image)
    region = read_volume(args.region)
    label_map = read_volume(args.labels) if args.labels else None
    model = load_model(args.model, device=args.device, precision=args.precision)
    return write_results(drive(inpaint(model, image, region, label_map, options), reporter), paths)
