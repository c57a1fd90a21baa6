"""bf16 against fp32 on this CPU: the time of a whole sample volume, and whether the figures a user relies on hold.

    python benchmarks/precision.py [--model brain-t1-demo-fast] [--inpaint-cases 3] [--threads 2] [--smoke]

The same model, seed and inputs at fp32 and at bf16 (what `--precision auto` picks where the processor runs
bf16 natively): the wall time of the whole sample map at the card's defaults; the voxel difference inside the
brain as a share of the brain's 1-99 % intensity range (mean and 99th percentile); per-tissue Dice of a 3-class
k-means of each result against the painted labels (benchmarks/quality.py's measure); and the PSNR of inpainted
spheres (5-30 mm, inside the brain) against the real T1. Also the CPU's model and flags, the one-time
micro-benchmark `auto` relies on, and what `auto` chose here.

Per network call (the demo teacher's UNet, 8 slices of 96 x 112): eager fp32 and bf16, and with
`torch.compile` (inductor) at both, with its one-time compile cost: whether compiling pays on this CPU.
`--no-compile` leaves that out (it takes minutes); --smoke always does.

Writes benchmarks/results/precision.json and the performance table's precision row.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from plain_network import plain_network  # noqa: E402
from quality import kmeans_tissues, tissue_dice  # noqa: E402

SMOKE = {"inpaint_cases": 1, "slices": 2, "steps": 2}
NEEDS_TRAINED_MODEL = True
TOLERANCE_MEAN = 0.005  # of the brain's intensity range
TOLERANCE_DICE = 0.02
TOLERANCE_PSNR_DB = 0.5


def _spheres(t1, labels, cases: int, seed: int) -> list[np.ndarray]:
    from scipy.ndimage import binary_erosion

    rng = np.random.default_rng(seed)
    brain = labels.array > 0
    candidates = np.argwhere(binary_erosion(brain, iterations=6))
    zz, yy, xx = np.mgrid[tuple(slice(0, n) for n in brain.shape)]
    spheres = []
    for _ in range(cases):
        centre = candidates[int(rng.integers(len(candidates)))]
        radius = float(rng.uniform(5, 30)) / 2 / np.asarray(t1.spacing[::-1])
        spheres.append(((zz - centre[0]) / radius[0]) ** 2 + ((yy - centre[1]) / radius[1]) ** 2
                       + ((xx - centre[2]) / radius[2]) ** 2 <= 1)
    return spheres


def measure(model, t1, labels, spheres: list[np.ndarray], seed: int, slices: int, steps: int | None) -> dict:
    """One precision's run: the volume's (or `slices` middle slices') time and result, Dice, inpainting PSNRs."""
    from skimage.metrics import peak_signal_noise_ratio

    from napari_medgen.engine.synthesis import generate, inpaint

    middle = labels.shape[0] // 2
    part = (middle, middle + slices) if slices else None
    brain = labels.array[part[0]:part[1]] > 0 if part else labels.array > 0
    started = time.perf_counter()
    (volume,) = common.drive(generate(model, labels, seed=seed, steps=steps, preview_every=0, slice_range=part))
    seconds = time.perf_counter() - started
    ran = volume.metadata["provenance"]
    dice = tissue_dice(kmeans_tissues(volume.array, brain), labels.array[part[0]:part[1]] if part else labels.array)
    real = t1.array.astype(np.float32)
    data_range = float(np.percentile(real[labels.array > 0], 99.5))
    psnr = []
    for case, region in enumerate(spheres):
        region_volume = t1.with_array(region.astype(np.uint8), metadata={})
        (filled,) = common.drive(inpaint(model, t1, region_volume, labels, seed=seed + case, steps=steps, preview_every=0))
        psnr.append(float(peak_signal_noise_ratio(real[region], filled.array.astype(np.float32)[region], data_range=data_range)))
    return {"seconds": round(seconds, 2), "array": volume.array.astype(np.float32), "dice": dice, "psnr": psnr,
            "ran": {key: ran.get(key) for key in ("sampler", "steps", "network_calls", "precision", "precision_why")}}


def per_call(folder_or_name: str, compile_too: bool) -> dict:
    """Seconds per network call (best of 4) eager and, with compile_too, compiled; the compile's own cost."""
    import torch

    from napari_medgen.engine.diffusion.denoiser import prepare_for_inference
    from napari_medgen.engine.model.loading import load_model, release_model

    figures = {}
    for name in ("fp32", "bf16"):
        model = load_model(folder_or_name, device="cpu", precision=name)
        prepare_for_inference(model)
        network = plain_network(model.networks["network"], model.card)
        channels = next(m.in_channels for m in network.modules() if isinstance(m, torch.nn.Conv2d))
        x = torch.randn(8, channels, 96, 112, dtype=model.dtype).to(memory_format=torch.channels_last)
        t = torch.full((8,), 500, dtype=torch.long)

        def best(function, repeats: int = 4) -> float:
            times = []
            with torch.inference_mode():
                for _ in range(repeats):
                    started = time.perf_counter()
                    function(x, t)
                    times.append(time.perf_counter() - started)
            return round(min(times), 4)

        figures[f"eager_{name}_s"] = best(network)
        if compile_too:
            started = time.perf_counter()
            try:
                compiled = torch.compile(network)
                with torch.inference_mode():
                    compiled(x, t)
                figures[f"compile_{name}_s"] = round(time.perf_counter() - started, 1)
                figures[f"compiled_{name}_s"] = best(compiled)
            except Exception as error:  # noqa: BLE001 - no compiler, an unsupported op: say so, go on
                figures[f"compile_{name}_failed"] = f"{type(error).__name__}: {str(error)[:200]}"
        release_model(model)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--model", default="brain-t1-demo-fast")
    parser.add_argument("--inpaint-cases", type=int, default=3)
    parser.add_argument("--slices", type=int, default=0, help="middle slices to generate (0: the whole volume)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the card's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile measurement (minutes)")
    args = common.parse(parser, SMOKE, argv)
    from napari_medgen.engine.model.device import choose_precision
    from napari_medgen.engine.model.loading import load_model, release_model
    from napari_medgen.engine.model.precision import cpu_info, measure_bf16

    import torch

    t1, labels = common.sample_brain()
    spheres = _spheres(t1, labels, args.inpaint_cases, args.seed)
    runs = {}
    for name in ("fp32", "bf16"):
        if args.smoke:
            model = load_model(common.random_weights_folder(common.tiny_demo_card()), device="cpu", precision=name)
        else:
            model = load_model(args.model, device="cpu", precision=name)
        runs[name] = measure(model, t1, labels, spheres, args.seed, args.slices, args.steps)
        release_model(model)
    middle = labels.shape[0] // 2
    brain = labels.array[middle:middle + args.slices] > 0 if args.slices else labels.array > 0
    fp32, bf16 = runs["fp32"].pop("array")[brain], runs["bf16"].pop("array")[brain]
    brain_range = float(np.percentile(fp32, 99) - np.percentile(fp32, 1)) or 1.0
    difference = np.abs(bf16 - fp32) / brain_range
    dice_change = max(abs(runs["bf16"]["dice"][k] - runs["fp32"]["dice"][k]) for k in runs["fp32"]["dice"])
    psnr_change = max((abs(a - b) for a, b in zip(runs["bf16"]["psnr"], runs["fp32"]["psnr"], strict=True)), default=0.0)
    teacher = common.random_weights_folder(common.tiny_demo_card()) if args.smoke else common.DEMO
    network_call = per_call(str(teacher), compile_too=not (args.smoke or args.no_compile))
    info = cpu_info()
    micro = measure_bf16()
    auto, why = choose_precision("auto", torch.device("cpu"))
    result = {
        "model": args.model if not args.smoke else "tiny random weights",
        "cpu": info.model,
        "cpu_flags": list(info.flags),
        "native_bf16": info.native_bf16,
        "micro_benchmark_bf16_speedup": round(micro.speedup, 2),
        "auto_chooses": auto,
        "auto_why": why,
        "runs": runs,
        "per_network_call": network_call,
        "speedup": round(runs["fp32"]["seconds"] / runs["bf16"]["seconds"], 2),
        "mean_difference_of_brain_range": round(float(difference.mean()), 5),
        "p99_difference_of_brain_range": round(float(np.percentile(difference, 99)), 5),
        "largest_dice_change": round(dice_change, 4),
        "largest_psnr_change_db": round(psnr_change, 2),
        "tolerances": {"mean": TOLERANCE_MEAN, "dice": TOLERANCE_DICE, "psnr_db": TOLERANCE_PSNR_DB},
        "machine": common.machine(),
    }
    result["met"] = (result["mean_difference_of_brain_range"] < TOLERANCE_MEAN and dice_change < TOLERANCE_DICE
                     and psnr_change < TOLERANCE_PSNR_DB)
    common.write_result("precision", result)
    print(f"{info.describe()}: auto -> {auto} ({why})")
    print(f"whole volume fp32 {runs['fp32']['seconds']} s, bf16 {runs['bf16']['seconds']} s ({result['speedup']}x); "
          f"difference mean {result['mean_difference_of_brain_range']:.2%} p99 {result['p99_difference_of_brain_range']:.2%} "
          f"of the brain range; Dice change {dice_change:.4f}; PSNR change {psnr_change:.2f} dB")
    print("per network call: " + ", ".join(f"{k} {v}" for k, v in network_call.items()))


def table_row(r: dict) -> tuple[str, str, str, str]:
    """The performance table's row (docs/benchmarks.md): what, figure, target, met."""
    fp32, bf16 = r["runs"]["fp32"], r["runs"]["bf16"]
    return (
        f"bf16 against fp32, whole sample brain, {r['model']} ({fp32['ran']['sampler']} {fp32['ran']['steps']} steps), "
        f"on {r['cpu']} ({', '.join(r['cpu_flags'])}); `auto` chooses {r['auto_chooses']}",
        f"**{fp32['seconds']} s -> {bf16['seconds']} s ({r['speedup']}x)**; difference {r['mean_difference_of_brain_range']:.2%} "
        f"mean / {r['p99_difference_of_brain_range']:.2%} p99 of the brain range; Dice within {r['largest_dice_change']:.3f}, "
        f"inpainting PSNR within {r['largest_psnr_change_db']:.2f} dB",
        f"mean < {TOLERANCE_MEAN:.1%}, Dice < {TOLERANCE_DICE}, PSNR < {TOLERANCE_PSNR_DB} dB",
        common.met(r["met"]),
    )


if __name__ == "__main__":
    main()
