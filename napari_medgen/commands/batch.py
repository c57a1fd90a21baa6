"""`napari-medgen batch`: a labelled synthetic data set in nnU-Net v2's raw layout, on dask.distributed.

    napari-medgen batch --labels L [L ...] --out DIR --cases N [--model M] [--steps S] [--seed S]
                        [--augment elastic,flip,lesion] [--workers K] [--scheduler ADDRESS] [--device D]

A thin driver over `engine.batch.synthesize_dataset`: a progress bar over cases (nothing in a pipe,
JSON lines with --progress jsonl), then a summary line on stderr (done, skipped, failed, time). Exit
status 1 when a case failed (the others are written), 130 when stopped (finished cases are kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .reporting import Reporter, RunCancelled, add_progress_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.diffusion.methods import SAMPLERS
    from ..engine.model.device import PRECISION_NAMES
    from ..engine.synthesis.options import SamplingOptions

    default = SamplingOptions()
    parser.add_argument("--labels", required=True, type=Path, nargs="+", help="input label map(s); case k starts from map k mod their number")
    parser.add_argument("--out", required=True, type=Path, help="data set folder (imagesTr, labelsTr, dataset.json)")
    parser.add_argument("--cases", required=True, type=int, help="number of cases")
    parser.add_argument("--model", default=None, help="model name or folder (default: the shipped demo model)")
    parser.add_argument("--steps", type=int, default=default.steps, help="sampling steps per case (default: the model card's, else 20)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=default.sampler, help="sampling method (default: the model card's, else ddim)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight (default: the card's)")
    parser.add_argument("--seed", type=int, default=0, help="case k uses seed + k (augmentation and noise)")
    parser.add_argument("--augment", default="elastic,flip",
                        help="comma-separated: elastic, flip, lesion (or none); default elastic,flip")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster (0: a plain loop, no dask)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS", help="an existing dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--retries", type=int, default=1, help="tries again for a failing case before reporting it")
    parser.add_argument("--prefix", default="case", help="case names: PREFIX_0000, PREFIX_0001, ...")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (on each worker)")
    parser.add_argument("--precision", choices=PRECISION_NAMES, default=PRECISION_NAMES[0],
                        help="auto (default): bf16 where the processor runs it natively (AMX, AVX512-BF16; a GPU's "
                        "bf16 or fp16) and the model allows it, else fp32; the result's provenance records which")
    add_progress_argument(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.batch.distributed import synthesize_dataset
    from ..engine.errors import MedgenError
    from ..engine.synthesis.options import SamplingOptions

    options = SamplingOptions(sampler=args.sampler, steps=args.steps, guidance=args.guidance, preview_every=0)
    options.check()
    batch = synthesize_dataset(
        args.labels, args.out, args.cases, model=args.model, options=options, augment=args.augment, seed=args.seed,
        device=args.device, precision=args.precision, workers=args.workers, scheduler=args.scheduler,
        retries=args.retries, prefix=args.prefix,
    )
    summary = None
    try:
        while True:
            event = next(batch)
            reporter.progress(event.step, event.total, event.message, event.notice)
    except StopIteration as finished:
        summary = finished.value
    except KeyboardInterrupt:
        batch.close()  # cancels the unfinished cases; no half-written case stays
        raise RunCancelled(
            f"stopped by the user; the cases finished before are kept in {args.out} and no half-written case is left: "
            "rerun the same command to finish"
        ) from None
    finally:
        batch.close()
    reporter.close()
    reporter.event("summary", **summary.to_json())
    print(f"napari-medgen: batch: {summary.line()}; data set in {summary.out_dir}", file=sys.stderr, flush=True)
    if summary.failed:
        shown = "; ".join(f"{case}: {error}" for case, error in list(summary.failed.items())[:3])
        raise MedgenError(
            f"{len(summary.failed)} of {summary.total} cases failed ({shown}); the others are written and dataset.json "
            "counts them; rerun the same command to retry the failed ones"
        )
    written = [path for result in summary.results if result.status == "done" for path in result.paths]
    return [summary.dataset_json, *written]
