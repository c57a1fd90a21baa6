"""Fewer steps for the same quality (issue 6, item 2): mask-fidelity Dice and time per sampler and steps.

    python benchmarks/steps_quality.py [--slices 8] [--ddpm-slices 4] [--ddpm-maps flipped_lr] [--threads N] [--smoke]

Mask fidelity is the quality benchmark's measure (benchmarks/quality.py `mask_fidelity`): images are
generated from held-out label maps, segmented by 3-class k-means, and compared with the map (mean Dice
over CSF, grey and white matter, then over maps). Needs the trained demo model (with random weights
the Dice is meaningless; `--allow-random` runs anyway, for testing the script).

- main set (`--runs`): DDIM 50 / 25 and DPM-Solver++ 2M 10 / 15 / 20 on all four held-out maps, `--slices`
  slices; a second seed for the fast run (`--fast`, DPM-Solver++ 20) says how much Dice moves from seed to
  seed alone.
- DDPM 1000 on `--ddpm-maps` and `--ddpm-slices` (it costs 1000 network calls per batch of slices),
  with the reference (`--reference`, DDIM 50) and the fast run on the same subset to compare with.
Time: wall time of `generate` for the whole set (all maps), so the ratios are of equal work.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import quality  # noqa: E402

TARGET_DICE, TARGET_TIME_FRACTION = 0.01, 0.5
SMOKE = {"slices": 2, "ddpm_slices": 1, "ddpm_maps": ["flipped_lr"], "ddpm_steps": 2, "runs": ["ddim 2"],
         "fast": "ddim 2", "reference": "ddim 2", "allow_random": True}
NEEDS_TRAINED_MODEL = True  # run_all skips this benchmark without it (its figures would mean nothing)


def sampler_and_steps(run: str) -> tuple[str, int]:
    """'dpm++2m 20' -> ('dpm++2m', 20)."""
    sampler, steps = run.split()
    return sampler, int(steps)


def fidelity(model, t1, labels, slices: slice, sampler: str, steps: int, seed: int, maps: list[str] | None) -> dict:
    start = time.perf_counter()
    result = quality.mask_fidelity(model, t1, labels, slices, steps, sampler, seed, maps=maps, panel_path=False, map_seed=0)
    seconds = time.perf_counter() - start
    return {"mean_dice": round(result["mean_dice"], 4), "seconds": round(seconds, 2),
            "per_map": {k: round(v["mean"], 4) for k, v in result["held_out"].items()},
            "ceiling_real_t1": round(result["ceiling_real_t1"]["mean"], 4), "ran": result["ran"]}


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--runs", nargs="+", default=["ddim 50", "ddim 25", "dpm++2m 10", "dpm++2m 15", "dpm++2m 20"],
                        help="the main set: 'sampler steps' each")
    parser.add_argument("--fast", default="dpm++2m 20", help="the run held to the target (one of --runs)")
    parser.add_argument("--reference", default="ddim 50", help="the run it is held against (one of --runs)")
    parser.add_argument("--ddpm-slices", type=int, default=4)
    parser.add_argument("--ddpm-maps", nargs="+", default=["flipped_lr"])
    parser.add_argument("--ddpm-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-random", action="store_true")
    args = common.parse(parser, SMOKE, argv)
    if args.fast not in args.runs or args.reference not in args.runs:
        parser.error("--fast and --reference must be among --runs")
    if not common.trained_demo_available() and not args.allow_random:
        raise SystemExit("steps_quality needs the trained brain-t1-demo model (or --allow-random to test the script)")
    model, kind = common.benchmark_model()
    t1, labels = common.sample_brain()
    middle = labels.shape[0] // 2 + 4
    main_slices = slice(middle - args.slices // 2, middle + args.slices // 2)
    ddpm_slices = slice(middle - args.ddpm_slices // 2, middle - args.ddpm_slices // 2 + args.ddpm_slices)
    quality.mask_fidelity(model, t1, labels, main_slices, 2, "ddim", args.seed, maps=["flipped_lr"], panel_path=False)  # warm-up

    main_rows = {}
    for run in args.runs:
        main_rows[run] = fidelity(model, t1, labels, main_slices, *sampler_and_steps(run), args.seed, None)
        print(f"{run}: {main_rows[run]}", flush=True)
    second_seed = fidelity(model, t1, labels, main_slices, *sampler_and_steps(args.fast), args.seed + 1, None)
    seed_spread = abs(second_seed["mean_dice"] - main_rows[args.fast]["mean_dice"])

    subset_rows = {}
    for run in dict.fromkeys([f"ddpm {args.ddpm_steps}", args.reference, args.fast]):
        subset_rows[run] = fidelity(model, t1, labels, ddpm_slices, *sampler_and_steps(run), args.seed, args.ddpm_maps)
        print(f"subset {run}: {subset_rows[run]}", flush=True)

    fast, reference = main_rows[args.fast], main_rows[args.reference]
    dice_gap = reference["mean_dice"] - fast["mean_dice"]
    time_fraction = fast["seconds"] / reference["seconds"]
    report = {
        "what": "mask-fidelity Dice (benchmarks/quality.py) and generate time per sampler and step count",
        "machine": common.machine(),
        "model": f"{model.card.name} ({kind})",
        "weights_sha256": model.weights_sha256,
        "main_set": {"maps": "all four held-out maps", "slices": [main_slices.start, main_slices.stop], "rows": main_rows,
                     f"{args.fast} second seed": second_seed, "seed_to_seed_dice_spread": round(seed_spread, 4)},
        "ddpm_subset": {"maps": args.ddpm_maps, "slices": [ddpm_slices.start, ddpm_slices.stop], "rows": subset_rows},
        "fast": args.fast,
        "reference": args.reference,
        "fast_vs_reference": {"dice_gap": round(dice_gap, 4), "time_fraction": round(time_fraction, 3)},
        "target": f"{args.fast} within {TARGET_DICE} Dice of {args.reference} at less than {TARGET_TIME_FRACTION} of its time",
        "met": bool(dice_gap <= TARGET_DICE and time_fraction < TARGET_TIME_FRACTION) if kind == "trained" else None,
    }
    if kind != "trained":
        report["note"] = "random weights: the Dice figures are meaningless; rerun with the trained model"
    path = common.write_result("steps_quality", report)
    print(f"{args.fast} vs {args.reference}: Dice gap {dice_gap:+.4f}, time fraction {time_fraction:.2f}; wrote {path}")


def table_row(r: dict) -> tuple[str, str, str, str]:
    """The performance table's row (docs/benchmarks.md): what, figure, target, met."""
    main, sub = r["main_set"], r["ddpm_subset"]["rows"]
    fast, reference = r.get("fast", "dpm++2m 20"), r.get("reference", "ddim 50")  # results before both were named
    ddpm = next(k for k in sub if k.startswith("ddpm"))
    cells = ", ".join(f"{_ran(k, v)} {v['mean_dice']:.3f} / {v['seconds']:.0f} s" for k, v in main["rows"].items())
    gap = r.get("fast_vs_reference") or r["dpm20_vs_ddim50"]
    recorded = all("ran" in row for row in [*main["rows"].values(), *sub.values()])
    return (
        f"Mask-fidelity Dice / time, {r['model']}, 4 held-out maps x {main['slices'][1] - main['slices'][0]} slices"
        + ("" if recorded else " (samplers and steps as asked: this run kept no record of what ran)"),
        f"{cells}; seed-to-seed spread {main['seed_to_seed_dice_spread']:.3f}; on {'+'.join(r['ddpm_subset']['maps'])}: "
        f"{_ran(ddpm, sub[ddpm])} {sub[ddpm]['mean_dice']:.3f} / {sub[ddpm]['seconds']:.0f} s vs {_ran(reference, sub[reference])} "
        f"{sub[reference]['mean_dice']:.3f}, {_ran(fast, sub[fast])} {sub[fast]['mean_dice']:.3f}",
        f"{_upper(fast)} within {TARGET_DICE} of {_upper(reference)} (gap {gap['dice_gap']:+.3f}) at < {TARGET_TIME_FRACTION} "
        f"of its time ({gap['time_fraction']:.2f})",
        common.met(r["met"]),
    )


README_NAMES = {"dpm++2m": "DPM++", "dpm++2m-sde": "DPM++ SDE"}


def _ran(run: str, row: dict) -> str:
    """A row's sampler and steps as they ran ('dpm++2m 20'), from its provenance; a result from before the record
    gives the name it was asked by (the row's first cell then says so)."""
    ran = row.get("ran")
    return f"{ran['sampler']} {ran['steps']}" if ran else run


def _upper(run: str) -> str:
    """'dpm++2m 20' -> 'DPM++ 20', 'ddim 50' -> 'DDIM 50' (as the performance table names them)."""
    sampler, steps = sampler_and_steps(run)
    return f"{README_NAMES.get(sampler, sampler.upper())} {steps}"


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
