"""Interactive latency (issue 6, item 5): pressing Generate to the first preview, and to the result.

    python benchmarks/latency.py [--repeats 5] [--size 128] [--steps S] [--preview-every P] [--threads N] [--smoke]

One 128x128 slice (an axial slice of the sample brain's labels), the demo model, the Generate
panel's defaults (the card's sampler, `--steps` and the panel's preview interval), on the engine the panel drives
(`generate`, whose events the napari worker forwards). The sampler, steps and network calls recorded are the
result's provenance (what ran). Warm: the model already loaded (the Model
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

from napari_medgen.engine.synthesis import SamplingOptions  # noqa: E402
from napari_medgen.engine.synthesis.options import DEFAULT_STEPS  # noqa: E402

PANEL = SamplingOptions(steps=DEFAULT_STEPS)  # the Generate panel's steps and preview interval (the card picks the sampler)

TARGET_PREVIEW_S, TARGET_RESULT_S = 1.0, 5.0
SMOKE = {"repeats": 1, "size": 64, "steps": 2, "preview_every": 1}


def one_run(model, label_map, steps: int, preview_every: int) -> dict:
    from napari_medgen.engine.synthesis import generate

    start = time.perf_counter()
    seen: dict[str, float] = {}

    def note(event) -> None:
        now = time.perf_counter() - start
        seen.setdefault("first_step_s", now)
        if event.preview is not None:
            seen.setdefault("first_preview_s", now)

    result = common.drive(generate(model, label_map, steps=steps, seed=0, preview_every=preview_every), note)
    return {"first_step_s": seen["first_step_s"], "first_preview_s": seen["first_preview_s"],
            "result_s": time.perf_counter() - start, "ran": common.ran(result[0])}


def cold(args) -> dict:
    """In a fresh process: load the model from disk, then one run."""
    from napari_medgen.engine.model.loading import load_model, release_model
    from napari_medgen.engine.synthesis import generate  # noqa: F401 - imports are not the user's wait

    label_map = common.brain_label_slices(1, args.size)
    model, kind = common.benchmark_model()  # makes the random-weights folder when there is no trained model
    folder = model.folder
    release_model()
    del model
    start = time.perf_counter()
    model = load_model(folder, device="cpu", precision="auto")  # the panels' default, as a user gets it
    loaded = time.perf_counter() - start
    result = one_run(model, label_map, args.steps, args.preview_every)
    ran = result.pop("ran")
    return {"load_model_s": loaded, **{k: v + loaded for k, v in result.items()}, "model": kind, "ran": ran}


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=128, help="one size x size slice at 2 mm")
    parser.add_argument("--steps", type=int, default=PANEL.steps)
    parser.add_argument("--preview-every", type=int, default=PANEL.preview_every)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = common.parse(parser, SMOKE, argv)
    if args.preview_every < 1 or args.preview_every > args.steps:
        parser.error("--preview-every must be between 1 and --steps (the first preview is what is timed)")
    if args.cold:
        print(json.dumps(cold(args)))
        return
    model, kind = common.benchmark_model(precision="auto")  # the Model panel's default precision
    label_map = common.brain_label_slices(1, args.size)
    one_run(model, label_map, 2, 1)  # warm-up: the first call builds oneDNN's kernels
    runs = [one_run(model, label_map, args.steps, args.preview_every) for _ in range(args.repeats)]
    ran = runs[-1].pop("ran")
    for r in runs[:-1]:
        r.pop("ran")
    warm = {k: round(common.median([r[k] for r in runs]), 3) for k in runs[0]}
    cold_run = common.run_in_subprocess("latency", ["--size", str(args.size), "--steps", str(args.steps),
                                                    "--preview-every", str(args.preview_every), "--cold"])
    report = {
        "what": "Generate pressed -> first preview and -> result; one slice, demo model, panel defaults",
        "machine": common.machine(),
        "model": f"{model.card.name} ({kind})",
        "settings": {"steps": args.steps, "preview_every": args.preview_every, "size": [args.size, args.size]},
        "ran": ran,
        "warm_median": warm,
        "warm_runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
        "cold_first_run": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in cold_run.items()},
        "target": f"first preview < {TARGET_PREVIEW_S} s, result < {TARGET_RESULT_S} s",
        "met": bool(warm["first_preview_s"] < TARGET_PREVIEW_S and warm["result_s"] < TARGET_RESULT_S),
    }
    path = common.write_result("latency", report)
    print(f"first preview {warm['first_preview_s']:.2f} s, result {warm['result_s']:.2f} s (warm, median of {args.repeats}); "
          f"cold: {cold_run['first_preview_s']:.2f} s / {cold_run['result_s']:.2f} s; wrote {path}")


def table_row(r: dict) -> tuple[str, str, str, str]:
    """The performance table's row (docs/benchmarks.md): what, figure, target, met."""
    w, c = r["warm_median"], r["cold_first_run"]
    ran = common.ran_words(r.get("ran"), f"{r['settings']['steps']} steps")
    return (
        f"Generate -> first preview / result, one {'x'.join(map(str, r['settings']['size']))} slice, {ran}, "
        f"preview every {r['settings']['preview_every']}, {r['model']}",
        f"**{w['first_preview_s']} s / {w['result_s']} s** (model loaded); cold process incl. model load "
        f"{c['first_preview_s']} s / {c['result_s']} s",
        f"< {TARGET_PREVIEW_S:g} s / < {TARGET_RESULT_S:g} s",
        common.met(r["met"]),
    )


if __name__ == "__main__":
    main()
