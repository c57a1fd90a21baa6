"""Fewer steps for the same quality (issue 6, item 2): mask-fidelity Dice and time per sampler and steps.

    python benchmarks/steps_quality.py [--slices 8] [--ddpm-slices 4] [--ddpm-maps flipped_lr] [--threads N]

Mask fidelity is the quality benchmark's measure (benchmarks/quality.py `mask_fidelity`): images are
generated from held-out label maps, segmented by 3-class k-means, and compared with the map (mean Dice
over CSF, grey and white matter, then over maps). Needs the trained demo model (with random weights
the Dice is meaningless; `--allow-random` runs anyway, for testing the script).

- main set: DDIM 50 / 25 and DPM-Solver++ 2M 10 / 15 / 20 on all four held-out maps, `--slices` slices;
  a second seed for DPM-Solver++ 20 says how much Dice moves from seed to seed alone.
- DDPM 1000 on `--ddpm-maps` and `--ddpm-slices` (it costs 1000 network calls per batch of slices),
  with DDIM 50 and DPM-Solver++ 20 on the same subset to compare with.
Time: wall time of `generate` for the whole set (all maps), so the ratios are of equal work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import quality  # noqa: E402

MAIN = [("ddim", 50), ("ddim", 25), ("dpm++2m", 10), ("dpm++2m", 15), ("dpm++2m", 20)]
TARGET_DICE, TARGET_TIME_FRACTION = 0.01, 0.5


def fidelity(model, t1, labels, slices: slice, sampler: str, steps: int, seed: int, maps: list[str] | None) -> dict:
    start = time.perf_counter()
    result = quality.mask_fidelity(model, t1, labels, slices, steps, sampler, seed, maps=maps, panel_path=False, map_seed=0)
    seconds = time.perf_counter() - start
    return {"mean_dice": round(result["mean_dice"], 4), "seconds": round(seconds, 2),
            "per_map": {k: round(v["mean"], 4) for k, v in result["held_out"].items()},
            "ceiling_real_t1": round(result["ceiling_real_t1"]["mean"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--ddpm-slices", type=int, default=4)
    parser.add_argument("--ddpm-maps", nargs="+", default=["flipped_lr"])
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--allow-random", action="store_true")
    args = parser.parse_args()
    common.set_threads(args.threads)
    if not common.trained_demo_available() and not args.allow_random:
        raise SystemExit("steps_quality needs the trained brain-t1-demo model (or --allow-random to test the script)")
    model, kind = common.demo_model()
    t1, labels = common.sample_brain()
    middle = labels.shape[0] // 2 + 4
    main_slices = slice(middle - args.slices // 2, middle + args.slices // 2)
    ddpm_slices = slice(middle - args.ddpm_slices // 2, middle + args.ddpm_slices // 2)
    quality.mask_fidelity(model, t1, labels, main_slices, 2, "ddim", args.seed, maps=["flipped_lr"], panel_path=False)  # warm-up

    main_rows = {}
    for sampler, steps in MAIN:
        main_rows[f"{sampler} {steps}"] = fidelity(model, t1, labels, main_slices, sampler, steps, args.seed, None)
        print(f"{sampler} {steps}: {main_rows[f'{sampler} {steps}']}", flush=True)
    second_seed = fidelity(model, t1, labels, main_slices, "dpm++2m", 20, args.seed + 1, None)
    seed_spread = abs(second_seed["mean_dice"] - main_rows["dpm++2m 20"]["mean_dice"])

    subset_rows = {}
    for sampler, steps in (("ddpm", args.ddpm_steps), ("ddim", 50), ("dpm++2m", 20)):
        subset_rows[f"{sampler} {steps}"] = fidelity(model, t1, labels, ddpm_slices, sampler, steps, args.seed, args.ddpm_maps)
        print(f"subset {sampler} {steps}: {subset_rows[f'{sampler} {steps}']}", flush=True)

    fast, reference = main_rows["dpm++2m 20"], main_rows["ddim 50"]
    dice_gap = reference["mean_dice"] - fast["mean_dice"]
    time_fraction = fast["seconds"] / reference["seconds"]
    report = {
        "what": "mask-fidelity Dice (benchmarks/quality.py) and generate time per sampler and step count",
        "machine": common.machine(),
        "model": f"{model.card.name} ({kind})",
        "weights_sha256": model.weights_sha256,
        "main_set": {"maps": "all four held-out maps", "slices": [main_slices.start, main_slices.stop], "rows": main_rows,
                     "dpm++2m 20 second seed": second_seed, "seed_to_seed_dice_spread": round(seed_spread, 4)},
        "ddpm_subset": {"maps": args.ddpm_maps, "slices": [ddpm_slices.start, ddpm_slices.stop], "rows": subset_rows},
        "dpm20_vs_ddim50": {"dice_gap": round(dice_gap, 4), "time_fraction": round(time_fraction, 3)},
        "target": f"DPM-Solver++ 20 within {TARGET_DICE} Dice of DDIM 50 at less than {TARGET_TIME_FRACTION} of its time",
        "met": bool(dice_gap <= TARGET_DICE and time_fraction < TARGET_TIME_FRACTION) if kind == "trained" else None,
    }
    if kind != "trained":
        report["note"] = "random weights: the Dice figures are meaningless; rerun with the trained model"
    path = common.write_result("steps_quality", report)
    print(f"DPM-Solver++ 20 vs DDIM 50: Dice gap {dice_gap:+.4f}, time fraction {time_fraction:.2f}; wrote {path}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
