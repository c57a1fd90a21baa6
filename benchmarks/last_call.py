"""The few-step model's last network call: what dropping it would save and what it would cost.

    python benchmarks/last_call.py [--model brain-t1-demo-fast] [--slices 30] [--steps S] [--precision fp32]
                                   [--repeats 3] [--threads N] [--smoke]

The distilled model's DDIM steps end on a call at t = 0 that removes the last of the noise. Dropping it means taking
the image estimate of the call before it as the image. Both come from `generate` on a block of the sample map's
axial slices (the middle `--slices`, as realism.py's table block; one slice batch; the card's sampler and steps
unless `--steps`): the result, and the preview the engine makes from the estimate of the call before the last (the
same mapping to intensities as the result). Time: the whole run against the run up to that preview (then closed),
medians of `--repeats`, alternated. Cost: the mean absolute change inside the brain as a share of the real T1's range, and the
realism ratios of each image to the real T1 (realism.py: histogram distance, inside-tissue texture). The sampler,
steps and network calls are the result's provenance. Writes benchmarks/results/last_call.json (docs/models.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import realism  # noqa: E402

SMOKE = {"slices": 2, "repeats": 1, "steps": 2}
NEEDS_TRAINED_MODEL = True
KEPT = ("histogram_w1", "inside_in_plane_GM", "inside_in_plane_WM", "inside_through_plane_GM",
        "inside_through_plane_WM", "spread_CSF", "spread_GM", "spread_WM")


def run(model, labels, block: slice, steps: int, stop_before_last: bool):
    """(seconds, image, what ran): the whole run, or up to the estimate of the call before the last."""
    from napari_medgen.engine.synthesis import generate

    started = time.perf_counter()
    events = generate(model, labels, slice_range=(block.start, block.stop), seed=0, batch_size=block.stop - block.start,
                      steps=steps, preview_every=steps - 1 if stop_before_last else 0)
    try:
        while True:
            event = next(events)
            if stop_before_last and event.step == steps - 1 and event.preview is not None:
                return time.perf_counter() - started, event.preview.array, None
    except StopIteration as stop:
        result = stop.value[0]
        return time.perf_counter() - started, result.array, common.ran(result)
    finally:
        events.close()


def main(argv: list[str] | None = None) -> dict:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--model", default="brain-t1-demo-fast")
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="default: the card's (the distilled model's 4)")
    parser.add_argument("--precision", default="fp32", help="as the other benchmarks (auto: this machine's pick)")
    args = common.parse(parser, SMOKE, argv)
    if common.smoke():
        model = common.benchmark_model(precision=args.precision)[0]
    else:
        from napari_medgen.engine.model.loading import load_model

        model = load_model(args.model, device="cpu", precision=args.precision)
    t1, labels = common.sample_brain()
    middle = labels.shape[0] // 2 + 4
    block = slice(middle - args.slices // 2, middle + (args.slices + 1) // 2)
    steps = args.steps or model.card.sampling.steps
    run(model, labels, slice(middle, middle + 1), 2, False)  # warm-up: the first call builds oneDNN's kernels
    times: dict[str, list[float]] = {"all calls": [], "last call dropped": []}
    for _ in range(args.repeats):
        seconds, full, ran = run(model, labels, block, steps, False)
        times["all calls"].append(seconds)
        seconds, dropped, _ = run(model, labels, block, steps, True)
        times["last call dropped"].append(seconds)
    spacing = t1.spacing[::-1]
    norm = model.card.normalization
    background = float(norm.background) if norm.background_label is not None else None
    real = realism.figures(t1.array[block], labels.array[block], spacing, None)
    figures = {}
    for name, image in (("all calls", full), ("last call dropped", dropped)):
        ratios = realism.relative(realism.figures(image, labels.array[block], spacing, background), real)
        figures[name] = {k: v for k, v in ratios.items() if k in KEPT}
    brain = labels.array[block] > 0
    real_range = float(np.percentile(t1.array[block][brain], 99) - np.percentile(t1.array[block][brain], 1))
    change = float(np.abs(full.astype(np.float64) - dropped)[brain].mean() / real_range)
    result = {
        "what": "the few-step model with and without its last network call, on a block of the sample map",
        "machine": common.machine(),
        "model": f"{model.card.name} {model.card.version}",
        "slices": [block.start, block.stop],
        "ran": ran,
        "network_calls": {"all calls": ran["network_calls"], "last call dropped": ran["network_calls"] - 1},
        "seconds_median": {k: round(common.median(v), 2) for k, v in times.items()},
        "seconds_runs": {k: [round(s, 2) for s in v] for k, v in times.items()},
        "mean_change_in_brain_of_real_range": round(change, 4),
        "relative_to_real_t1": figures,
    }
    path = common.write_result("last_call", result)
    print(f"{common.ran_words(ran)}: {result['seconds_median']}; mean change {100 * change:.1f} % of the range; "
          f"histogram W1 {figures['all calls']['histogram_w1']} -> {figures['last call dropped']['histogram_w1']}; "
          f"wrote {path}")
    return result


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
