"""How much of the real T1's spread within a tissue label its tissue fractions explain, and how much its neighbours'
labels do: why the engine takes tissue fractions as a condition (docs/quality.md, Realism).

    python benchmarks/partial_volume.py [--smoke]

Inside each label of the sample brain (CSF, grey, white matter), the real T1 in the realism measure's scale (1st-99th
percentile of the brain to 0-1, benchmarks/realism.py) is fitted by least squares on
- the voxel's tissue fractions (the template's probability maps at 2 mm, shipped beside the labels), and
- the labels of its 3 x 3 x 3 neighbourhood (how many of the 27 voxels hold each tissue): all a hard label map says;
each fit's residual spread is set against the label's spread (a fit that explains nothing leaves all of it).
Writes benchmarks/results/partial_volume.json. No model runs; `--smoke` fits the middle slices only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SMOKE = {"slices": 6}
TISSUES = {1: "CSF", 2: "GM", 3: "WM"}


def residual_spread(values: np.ndarray, predictors: np.ndarray) -> float:
    """The spread of `values` left after a least-squares fit on `predictors` (with an intercept)."""
    design = np.column_stack([np.ones(len(values)), predictors])
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    return float((values - design @ coefficients).std())


def main(argv: list[str] | None = None) -> dict:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--slices", type=int, default=0, help="the middle slices only (0: the whole brain)")
    args = common.parse(parser, SMOKE, argv)
    t1, labels = common.sample_brain()
    fractions = np.stack([f.array for f in common.sample_fractions()], axis=-1).astype(np.float64)
    label_array = labels.array
    brain = label_array > 0
    low, high = np.percentile(t1.array[brain], [1, 99])
    scaled = (t1.array.astype(np.float64) - low) / max(high - low, 1e-6)
    neighbours = np.stack([ndimage.uniform_filter((label_array == k).astype(np.float64), size=3, mode="constant") * 27
                           for k in TISSUES], axis=-1)
    keep = np.zeros_like(brain)
    middle = label_array.shape[0] // 2
    keep[slice(middle - args.slices // 2, middle + (args.slices + 1) // 2) if args.slices else slice(None)] = True
    rows = {}
    for k, name in TISSUES.items():
        inside = (label_array == k) & keep
        values = scaled[inside]
        rows[name] = {"voxels": int(inside.sum()), "spread": round(float(values.std()), 4),
                      "left_by_fractions": round(residual_spread(values, fractions[inside]), 4),
                      "left_by_neighbourhood_labels": round(residual_spread(values, neighbours[inside]), 4)}
        print(name, rows[name], flush=True)
    result = {
        "what": "the real T1's spread within each tissue label, and what a fit on the voxel's tissue fractions, or on "
                "its 3x3x3 neighbourhood's labels, leaves of it (realism measure's 0-1 scale)",
        "machine": common.machine(),
        "brain": "the shipped sample (ICBM152 2009 at 2 mm), its tissue labels and fraction maps",
        "slices": args.slices or int(label_array.shape[0]),
        "by_label": rows,
    }
    print(f"wrote {common.write_result('partial_volume', result)}")
    return result


if __name__ == "__main__":
    main()
