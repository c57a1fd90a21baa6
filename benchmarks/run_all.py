"""Every performance figure in one command (issue 6): runs the benchmarks, writes their JSON, the table.

    python benchmarks/run_all.py [--quick] [--threads N] [--only vs_monai latency ...] [--no-readme]

Each benchmark runs in its own process (memory figures are per process) and writes
benchmarks/results/<name>.json with the machine it ran on; then the table of figures is written to
benchmarks/results/performance.md and into README.md's "## Performance" section (between its table
markers). The quality sweep (steps_quality) needs the trained demo model and is skipped without it.
`--quick` shrinks every benchmark (fewer repeats, steps, slices) to check the scripts in about a minute
or two; its figures are not the ones to quote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

FULL = {
    "roofline": [],
    "vs_monai": [],
    "latency": [],
    "roi_inpaint": [],
    "volume_scaling": [],
    "steps_quality": [],
}
QUICK = {
    "roofline": ["--repeats", "3"],
    "vs_monai": ["--slices", "2", "--steps", "5", "--repeats", "1"],
    "latency": ["--repeats", "2"],
    "roi_inpaint": ["--steps", "4", "--repeats", "1", "--cases", "1", "--sweep-steps", "2"],
    "volume_scaling": ["--sizes", "8", "16", "--steps", "2"],
    "steps_quality": ["--slices", "2", "--ddpm-slices", "2", "--ddpm-steps", "20"],
}


def load(name: str) -> dict | None:
    path = common.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def yes(value) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def table() -> str:
    """The README table, from whatever results exist."""
    rows = ["| # | What | Figure | Target | Met |", "|---|---|---|---|---|"]
    machines = set()

    r = load("vs_monai")
    if r:
        machines.add(common.machine_line(r["machine"]) + f"; {r['machine']['note']}")
        eq = r["equal_output"]["matched_schedule_no_clip"]
        nc = r["network_call"]["speedup_over_monai_network"]
        rows.append(
            f"| 1 | `generate` vs MONAI `DiffusionInferer.sample` + `DDIMScheduler`, {r['work']['slices']} slices 128x128, "
            f"{r['work']['steps']} DDIM steps, {r['model']} | **{r['speedup_wall']}x** faster ({r['seconds']['ours']} s vs "
            f"{r['seconds']['monai']} s); peak memory {r['peak_memory_over_baseline_mb']['ours']} MB vs "
            f"{r['peak_memory_over_baseline_mb']['monai']} MB ({r['peak_memory_ratio_monai_over_ours']}x less); same output "
            f"(max rel. diff {eq['max_relative']:.1e}); per call: fused attention {nc['plus_fused_attention']}x, + channels-last "
            f"{nc['plus_channels_last']}x | >= 1.3x, equal output | {yes(r['met'])} |"
        )
    r = load("steps_quality")
    if r:
        m = r["main_set"]["rows"]
        sub = r["ddpm_subset"]["rows"]
        ddpm = next((v for k, v in sub.items() if k.startswith("ddpm")), None)
        ddpm_key = next((k for k in sub if k.startswith("ddpm")), "ddpm")
        cells = ", ".join(f"{k} {v['mean_dice']:.3f} / {v['seconds']:.0f} s" for k, v in m.items())
        rows.append(
            f"| 2 | Mask-fidelity Dice / time, {r['model']}, 4 held-out maps x {r['main_set']['slices'][1] - r['main_set']['slices'][0]} "
            f"slices | {cells}; seed-to-seed spread {r['main_set']['seed_to_seed_dice_spread']:.3f}; on "
            f"{'+'.join(r['ddpm_subset']['maps'])}: {ddpm_key} {ddpm['mean_dice']:.3f} / {ddpm['seconds']:.0f} s vs ddim 50 "
            f"{sub['ddim 50']['mean_dice']:.3f}, dpm++2m 20 {sub['dpm++2m 20']['mean_dice']:.3f} | DPM++ 20 within 0.01 of "
            f"DDIM 50 (gap {r['dpm20_vs_ddim50']['dice_gap']:+.3f}) at < 0.5 of its time ({r['dpm20_vs_ddim50']['time_fraction']:.2f}) "
            f"| {yes(r['met'])} |"
        )
    r = load("roi_inpaint")
    if r:
        s, v = r["slice_256_at_1mm_20mm_disk"], r["volume_91x109x91_at_2mm_20mm_ball"]
        qs, qv = s["quality_inside_region_mean"], v["quality_inside_region_mean"]
        sweep = ", ".join(f"{k} {x['roi_s']:.2f}/{x['full_frame_s']:.2f} s" for k, x in r["sweep_image_size_20mm_disk"].items())
        regions = ", ".join(f"{k} {x['roi_s']:.2f} s" for k, x in r["sweep_region_size_256_slice"].items())
        rows.append(
            f"| 3 | Inpainting a 20 mm region, ROI box vs whole frame, {r['steps']} steps, {r['model']} | 256x256 slice: "
            f"**{s['speedup']}x** ({s['seconds']['roi']} vs {s['seconds']['full_frame']} s), PSNR/SSIM in region "
            f"{qs['roi']['psnr']:.1f}/{qs['roi']['ssim']:.2f} vs {qs['full_frame']['psnr']:.1f}/{qs['full_frame']['ssim']:.2f}; "
            f"volume: **{v['speedup']}x** ({v['seconds']['roi']} vs {v['seconds']['full_frame']} s), "
            f"{qv['roi']['psnr']:.1f}/{qv['roi']['ssim']:.2f} vs {qv['full_frame']['psnr']:.1f}/{qv['full_frame']['ssim']:.2f}; "
            f"ROI/whole by image size ({r['sweep_steps']} steps): {sweep}; ROI by region size: {regions} | >= 5x, same "
            f"quality in region | {yes(r['met'])} |"
        )
    r = load("volume_scaling")
    if r:
        cells = ", ".join(
            f"{n}: {x['seconds_per_slice']:.3f} s/slice, peak +{x['peak_over_baseline_mb']:.0f} MB (output {x['output_array_mb']:.0f} MB)"
            for n, x in r["sizes"].items()
        )
        batch = {x["slice_batch"] for x in r["sizes"].values()}
        rows.append(
            f"| 4 | Volumes of N 128x128 slices, {r['settings']['steps']} steps, slice batch {'/'.join(map(str, sorted(batch)))} "
            f"(from memory) | {cells}; time/slice spread {r['time_per_slice_spread']}x; memory grows "
            f"{r['peak_memory_growth_per_output_byte']} bytes per output byte | flat time, memory bounded by the batch + output "
            f"| see note |"
        )
    r = load("latency")
    if r:
        w, c = r["warm_median"], r["cold_first_run"]
        rows.append(
            f"| 5 | Generate -> first preview / result, one 128x128 slice, {r['settings']['sampler']} {r['settings']['steps']} "
            f"steps, preview every {r['settings']['preview_every']}, {r['model']} | **{w['first_preview_s']} s / {w['result_s']} s** "
            f"(model loaded); cold process incl. model load {c['first_preview_s']} s / {c['result_s']} s | < 1 s / < 5 s | "
            f"{yes(r['met'])} |"
        )
    r = load("roofline")
    if r:
        cells = ", ".join(
            f"{k}: {x['gflop_per_call']} GFLOP in {x['seconds_per_call'] * 1000:.0f} ms = {x['achieved_gflops']} GFLOP/s "
            f"({x['fraction_of_matmul']:.0%})" for k, x in r["calls"].items()
        )
        rows.append(f"| 6 | Achieved FLOP/s per network call vs a 4096² fp32 matmul ({r['matmul_gflops']} GFLOP/s) | {cells} | "
                    f"report; why below 1/2 | see note |")
    rows.append("| 7 | GPU | not measured: no GPU in this session | - | - |")
    lines = rows + [""]
    for m in sorted(machines | {common.machine_line(x["machine"]) + f"; {x['machine']['note']}"
                                for x in filter(None, map(load, FULL)) if "machine" in x}):
        lines.append(f"Machine: {m}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="+", choices=list(FULL), default=None)
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the existing results")
    args = parser.parse_args()
    started = time.perf_counter()
    timings = {}
    if not args.table_only:
        for name, extra in (QUICK if args.quick else FULL).items():
            if args.only and name not in args.only:
                continue
            if name == "steps_quality" and not common.trained_demo_available():
                if not args.quick:
                    print("steps_quality: skipped, the trained brain-t1-demo model is not there", flush=True)
                    continue
                extra = extra + ["--allow-random"]
            command = [sys.executable, str(HERE / f"{name}.py"), *extra]
            if args.threads:
                command += ["--threads", str(args.threads)]
            print(f"== {name}: {' '.join(command[1:])}", flush=True)
            begin = time.perf_counter()
            subprocess.run(command, check=True)
            timings[name] = round(time.perf_counter() - begin, 1)
    text = table()
    (common.RESULTS / "performance.md").write_text(text + "\n")
    if not args.no_readme and not args.quick:
        print("README table updated" if common.update_readme("performance-table", text) else "README has no performance table markers; table in results/performance.md")
    print(text)
    print(f"benchmark wall times: {timings}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
