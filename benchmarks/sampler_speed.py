"""Sampler speed on this machine: network calls (steps) per second for one 64x64 and one 128x128 slice.

    python benchmarks/sampler_speed.py [--steps 20] [--repeats 3] [--sizes 64 128] [--sampler S] [--threads N] [--smoke]

The demo model (trained weights when present, else its architecture with random weights: speed does
not depend on the weights). Reports the median of `--repeats` runs of a whole generation of one slice
through the engine's own `generate` (no previews), and writes sampler_speed.json; the sampler, steps and
network calls recorded are the result's provenance (what ran).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from napari_medgen.engine.diffusion.methods import SAMPLERS  # noqa: E402

SMOKE = {"steps": 2, "repeats": 1, "sizes": [32]}


def square_label_map(size: int):
    """One size x size slice at 2 mm: white matter in the middle half, background around it."""
    from napari_medgen.engine.volume import Volume

    labels = np.zeros((1, size, size), np.uint8)
    labels[0, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 3
    return Volume(labels, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


def main(argv: list[str] | None = None) -> None:
    from napari_medgen.engine.synthesis import generate

    parser = common.argument_parser(__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the card's")
    args = common.parse(parser, SMOKE, argv)
    model, kind = common.benchmark_model()
    rows, ran = {}, None
    for size in args.sizes:
        label_map = square_label_map(size)

        def run(steps: int = args.steps, label_map=label_map):
            return common.drive(generate(model, label_map, sampler=args.sampler, steps=steps, seed=0, preview_every=0))

        run(2)  # warm-up: the first call at a shape builds oneDNN's kernels
        times = common.side_by_side({"run": run}, args.repeats, warmup=0)["run"]
        median = common.median(times)
        ran = common.ran(run()[0])
        rows[f"{size}x{size}"] = {
            "seconds_per_slice": round(median, 3),
            "network_calls_per_second": round(ran["network_calls"] / median, 2),
            "runs": [round(t, 3) for t in times],
        }
        print(f"{size}x{size}: {ran['network_calls'] / median:.1f} network calls/s ({median:.2f} s for {common.ran_words(ran)}, "
              f"median of {args.repeats})", flush=True)
    report = {
        "what": "network calls per second of a whole one-slice generation through generate",
        "machine": common.machine(),
        "model": f"{model.card.name} ({kind})",
        "ran": ran,  # the last size's run
        "sizes": rows,
    }
    print(f"wrote {common.write_result('sampler_speed', report)}")


if __name__ == "__main__":
    main()
