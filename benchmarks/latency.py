"""Interactive latency (issue 6, item 5): pressing Generate to the first preview, and to the result.

    python benchmarks/latency.py [--repeats 5] [--threads N]

One 128x128 slice (an axial slice of the sample brain's labels), the demo model, the Generate
panel's defaults (DPM-Solver++ 2M, 20 steps, a preview every 5 steps), on the engine the panel drives
(`generate`, whose events the napari worker forwards). Warm: the model already loaded (the Model
panel's Load), median of `--repeats`. Cold: a fresh process that loads the model from disk first
(imports not counted), one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TARGET_PREVIEW_S, TARGET_RESULT_S = 1.0, 5.0


def one_run(model, label_map, steps: int, preview_every: int) -> dict:
    from napari_medgen.engine.synthesis import generate

    start = time.perf_counter()
    run = generate(model, label_map, steps=steps, seed=0, preview_every=preview_every)
    first_preview = first_event = None
    try:
        while True:
            event = next(run)
            now = time.perf_counter() - start
            first_event = first_event if first_event is not None else now
            if event.preview is not None and first_preview is None:
                first_preview = now
    except StopIteration:
        pass
    return {"first_step_s": first_event, "first_preview_s": first_preview, "result_s": time.perf_counter() - start}


def cold(args) -> dict:
    """In a fresh process: load the model from disk, then one run."""
    from napari_medgen.engine.synthesis import generate  # noqa: F401 - imports are not the user's wait

    common.set_threads(args.threads)
    label_map = common.brain_label_slices(1, 128)
    from napari_medgen.engine.model.loading import load_model, release_model

    model, kind = common.demo_model()  # makes the random-weights folder when there is no trained model
    folder = model.folder
    release_model()
    del model
    start = time.perf_counter()
    model = load_model(folder, device="cpu")
    loaded = time.perf_counter() - start
    result = one_run(model, label_map, args.steps, args.preview_every)
    return {"load_model_s": loaded, **{k: v + loaded for k, v in result.items()}, "model": kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preview-every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        print(json.dumps(cold(args)))
        return
    common.set_threads(args.threads)
    model, kind = common.demo_model()
    label_map = common.brain_label_slices(1, 128)
    one_run(model, label_map, 2, 1)  # warm-up: the first call builds oneDNN's kernels
    runs = [one_run(model, label_map, args.steps, args.preview_every) for _ in range(args.repeats)]
    warm = {k: round(common.median([r[k] for r in runs]), 3) for k in runs[0]}
    extra = ["--steps", str(args.steps), "--preview-every", str(args.preview_every)]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    cold_run = common.run_in_subprocess("latency", extra + ["--cold"])
    report = {
        "what": "Generate pressed -> first preview and -> result; one 128x128 slice, demo model, panel defaults",
        "machine": common.machine(),
        "model": f"{model.card.name} ({kind})",
        "settings": {"sampler": "dpm++2m", "steps": args.steps, "preview_every": args.preview_every, "size": [128, 128]},
        "warm_median": warm,
        "warm_runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
        "cold_first_run": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in cold_run.items()},
        "target": f"first preview < {TARGET_PREVIEW_S} s, result < {TARGET_RESULT_S} s",
        "met": bool(warm["first_preview_s"] < TARGET_PREVIEW_S and warm["result_s"] < TARGET_RESULT_S),
    }
    path = common.write_result("latency", report)
    print(f"first preview {warm['first_preview_s']:.2f} s, result {warm['result_s']:.2f} s (warm, median of {args.repeats}); "
          f"cold: {cold_run['first_preview_s']:.2f} s / {cold_run['result_s']:.2f} s; wrote {path}")


if __name__ == "__main__":
    main()
