"""The sampling options that generate and inpaint share: their arguments, the SamplingOptions they make,
the output names of several variants, and writing all variants or none."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .reporting import add_progress_argument


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, sampler, steps, seed, guidance, variants, batch, device, precision and progress."""
    from ..engine.diffusion.methods import SAMPLERS
    from ..engine.model.device import PRECISION_NAMES
    from ..engine.synthesis.options import SamplingOptions

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
    parser.add_argument("--planes", choices=("axial", "tri"), default=None,
                        help="2-D models: axial slices one by one, or tri: the whole volume with axial, coronal and "
                        "sagittal slices in turn (a network trained on the three planes; default: the model card's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", choices=PRECISION_NAMES, default=PRECISION_NAMES[0],
                        help="auto (default): bf16 where the processor runs it natively (AMX, AVX512-BF16; a GPU's "
                        "bf16 or fp16) and the model allows it, else fp32; the result's provenance records which")
    add_progress_argument(parser)


def sampling_options(args: argparse.Namespace, **task_options: Any) -> Any:
    """The SamplingOptions of a parsed generate / inpaint command line (inpaint adds its own options)."""
    from ..engine.synthesis import SamplingOptions

    return SamplingOptions(
        sampler=args.sampler,
        steps=args.steps,
        seed=args.seed,
        guidance=args.guidance,
        eta=args.eta,
        variants=args.variants,
        batch_size=args.batch_size,
        planes=getattr(args, "planes", None),
        preview_every=0,  # nobody looks at previews on the command line
        **task_options,
    )


def output_paths(out: Path, variants: int, seed: int) -> list[Path]:
    """One path per variant: OUT itself for one, OUT's stem + `_seed<N>` for several."""
    from ..engine.io import volume_extension

    if variants == 1:
        return [out]
    ext = volume_extension(out)
    stem = out.name[: -len(ext)] if ext else out.stem
    return [out.with_name(f"{stem}_seed{seed + k}{ext}") for k in range(variants)]


def write_results(results: list, paths: list[Path]) -> list[str]:
    """Write every variant or none: a failure on the last one puts back what the first ones replaced."""
    from ..engine.io import write_volumes

    return [str(path) for path in write_volumes(results, paths)]
