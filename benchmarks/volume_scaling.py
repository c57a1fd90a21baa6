"""3-D scaling (issue 6, item 4): time per slice and peak memory for 32 ... 256 slices.

    python benchmarks/volume_scaling.py [--sizes 32 64 128 256] [--steps 5] [--threads N] [--smoke]

A label volume of N axial 128x128 slices (the sample brain's slices, repeated) generated with the
demo model (the card's sampler, `--steps`, previews every 5 steps as in the Generate panel, the slice
batch chosen by `auto_slice_batch` from the memory available; the sampler, steps and network calls recorded
are each result's provenance). Each size runs in a fresh process:
time per slice, and the peak resident memory of the run over the resident memory before it (model
loaded and warmed up), set against the output array itself (N x 128 x 128 float32).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SMOKE = {"sizes": [2, 4], "steps": 1, "preview_every": 1}


def label_volume(slices: int, size: int = 128):
    from napari_medgen.engine.volume import Volume

    _, labels = common.sample_brain()
    brain = [z for z in range(labels.shape[0]) if labels.array[z].any()]
    source = labels.array[brain[len(brain) // 6 : -len(brain) // 6]]
    out = np.zeros((slices, size, size), np.uint8)
    h, w = min(size, source.shape[1]), min(size, source.shape[2])
    oy, ox = (size - h) // 2, (size - w) // 2
    for z in range(slices):
        out[z, oy : oy + h, ox : ox + w] = source[z % len(source), :h, :w]
    return Volume(out, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


def probe(args) -> dict:
    """In a fresh process: one generation of `args.probe` slices."""
    from napari_medgen.engine.synthesis import auto_slice_batch, generate

    model, kind = common.benchmark_model()
    common.drive(generate(model, label_volume(2), steps=2, seed=0, preview_every=1))  # warm-up
    label_map = label_volume(args.probe)
    batch = auto_slice_batch(model, 128, 128)
    common.reset_peak_rss()
    before = common.rss_bytes()
    start = time.perf_counter()
    previews = []
    run = generate(model, label_map, steps=args.steps, seed=0, preview_every=args.preview_every)
    result = common.drive(run, lambda event: previews.append(event.preview is not None))
    seconds = time.perf_counter() - start
    peak = common.peak_rss_bytes() - before
    return {"slices": args.probe, "seconds": seconds, "batch": batch, "previews": sum(previews),
            "peak_over_baseline_bytes": peak, "output_bytes": int(result[0].array.nbytes), "model": kind,
            "ran": common.ran(result[0])}


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--preview-every", type=int, default=5)
    parser.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    args = common.parse(parser, SMOKE, argv)
    if args.probe:
        print(json.dumps(probe(args)))
        return
    extra = ["--steps", str(args.steps), "--preview-every", str(args.preview_every)]
    rows = {}
    for n in args.sizes:
        r = common.run_in_subprocess("volume_scaling", extra + ["--probe", str(n)])
        rows[str(n)] = {
            "seconds": round(r["seconds"], 2),
            "seconds_per_slice": round(r["seconds"] / n, 4),
            "slice_batch": r["batch"],
            "peak_over_baseline_mb": round(r["peak_over_baseline_bytes"] / 2**20, 1),
            "output_array_mb": round(r["output_bytes"] / 2**20, 1),
            "peak_over_output": round(r["peak_over_baseline_bytes"] / r["output_bytes"], 2),
            "ran": r["ran"],
        }
        kind = r["model"]
        print(f"{n} slices: {rows[str(n)]}", flush=True)
    per_slice = [row["seconds_per_slice"] for row in rows.values()]
    first, last = rows[str(args.sizes[0])], rows[str(args.sizes[-1])]
    growth = (last["peak_over_baseline_mb"] - first["peak_over_baseline_mb"]) / max(
        last["output_array_mb"] - first["output_array_mb"], 1e-9
    )
    report = {
        "what": "generate N slices of 128x128: time per slice and peak resident memory (fresh process per size)",
        "machine": common.machine(),
        "model": f"brain-t1-demo ({kind})",
        "settings": {"steps": args.steps, "preview_every": args.preview_every},
        "ran": {k: v for k, v in rows[str(args.sizes[0])]["ran"].items() if k != "network_calls"},  # the same in every size
        "sizes": rows,
        "time_per_slice_spread": round(max(per_slice) / min(per_slice), 2),
        "peak_memory_growth_per_output_byte": round(growth, 2),
        "target": "time per slice flat; peak memory bounded by the slice batch plus the output array",
    }
    path = common.write_result("volume_scaling", report)
    print(f"time per slice spread {report['time_per_slice_spread']}x; memory grows {report['peak_memory_growth_per_output_byte']} "
          f"bytes per output byte; wrote {path}")


def table_row(r: dict) -> tuple[str, str, str, str]:
    """The performance table's row (docs/benchmarks.md): what, figure, target, met."""
    cells = ", ".join(
        f"{n}: {x['seconds_per_slice']:.3f} s/slice, peak +{x['peak_over_baseline_mb']:.0f} MB (output {x['output_array_mb']:.0f} MB)"
        for n, x in r["sizes"].items()
    )
    batch = "/".join(map(str, sorted({x["slice_batch"] for x in r["sizes"].values()})))
    ran = r.get("ran")
    what = f"{ran['sampler']} {ran['steps']} steps" if ran else f"{r['settings']['steps']} steps asked (what ran was not recorded)"
    return (
        f"Volumes of N 128x128 slices, {what}, slice batch {batch} (from memory)",
        f"{cells}; time/slice spread {r['time_per_slice_spread']}x; memory grows {r['peak_memory_growth_per_output_byte']} "
        "bytes per output byte",
        "flat time, memory bounded by the batch + output",
        "see note",
    )


if __name__ == "__main__":
    main()
