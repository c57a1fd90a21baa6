"""The distilled few-step model beside its teacher (issue 16): speed, mask fidelity, realism, inpainting, speed levers.

    python benchmarks/distilled.py [--student brain-t1-demo-fast] [--teacher brain-t1-demo] [--fidelity-slices 8]
                                   [--inpaint-cases 4] [--repeats 3] [--result-name distilled] [--smoke]

Three rows, one run: the teacher at its card's defaults (brain-t1-demo 2.2.0: DPM-Solver++ 2M, 20 steps, the path
its student learns), the teacher cut to the student's steps with no distillation (what the student has to beat),
and the student at its card's defaults (DDIM 4). For each:
- the whole sample brain's label map generated (every slice), its time and the realism figures of that volume
  against the real T1 (`realism.figures` / `relative`: spreads, gradients, the texture inside grey and white matter
  in-plane and through-plane, through-plane energy, histogram W1);
- the current-slice latency: one axial slice, model loaded, median of `--repeats` runs;
- mask-fidelity Dice on held-out maps (`quality.mask_fidelity`) and inpainting PSNR / SSIM / seam inside random
  regions (`quality.inpainting`), the quality benchmark's own functions.
Then per-call speed levers of the (shared) network on one slice and on a batch of slices: torch threads 1 vs 2,
bf16 vs fp32 (where this CPU runs it), and torch.compile (inductor), with the compile time.

Targets: the whole 91-slice volume in under 30 s and one slice in under 0.3 s on the 2-core CPU, Dice within 0.02
of the teacher at 20 steps, inpainting no worse. Writes benchmarks/results/distilled.json, pictures
distilled_fidelity_<row>.png / distilled_inpaint_<row>.png / distilled_planes.png, and the distilled table of
docs/models.md; with `--result-name NAME` (another student measured beside the shipped one) NAME.json and
NAME_*.png, docs untouched.
`--smoke`: a tiny random-weight teacher and the same weights as a 2-step "student" (a card with sampling
defaults), three slices, one inpainting case: a check that the script runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from plain_network import plain_network  # noqa: E402
import quality  # noqa: E402
import realism  # noqa: E402

from napari_medgen.engine.model.loading import LoadedModel, load_model  # noqa: E402
from napari_medgen.engine.synthesis import generate  # noqa: E402
from napari_medgen.engine.synthesis.options import resolve_options  # noqa: E402

NEEDS_TRAINED_MODEL = True
SMOKE = {"fidelity_slices": 1, "fidelity_maps": "flipped_lr", "inpaint_cases": 1, "repeats": 1, "volume_slices": 2, "levers": False}
TARGET_VOLUME_S, TARGET_SLICE_S, TARGET_DICE_GAP = 30.0, 0.3, 0.02


def _models(args) -> tuple[LoadedModel, LoadedModel]:
    if not args.smoke:
        # at the precision a user gets (auto: bf16 on a CPU that runs it natively; benchmarks/precision.py measures
        # what bf16 changes); the rows record what ran
        return (load_model(args.teacher, device="cpu", precision=args.precision),
                load_model(args.student, device="cpu", precision=args.precision))
    from napari_medgen.engine.model.card import SamplingDefaults, save_card

    teacher = load_model(common.random_weights_folder(common.tiny_demo_card()), device="cpu", precision="fp32")
    card = teacher.card.model_copy(deep=True, update={"name": "brain-t1-demo-tiny-fast"})
    card.sampling = SamplingDefaults(steps=2, sampler="ddim")
    folder = teacher.folder.parent / card.name
    folder.mkdir(exist_ok=True)
    (folder / card.weights).write_bytes((teacher.folder / card.weights).read_bytes())
    save_card(card, folder)
    return teacher, load_model(folder, device="cpu", precision="fp32")


def _defaults(model: LoadedModel) -> tuple[int, str]:
    options = resolve_options(None, {}, model.card)
    return int(options.steps), str(options.sampler)


def whole_volume(model: LoadedModel, steps: int, sampler: str, labels, t1, slices: slice) -> tuple[dict, np.ndarray]:
    """Generate `slices` of the sample map (all of them in a full run): seconds and realism against the real T1."""
    started, cpu = time.perf_counter(), time.process_time()
    result = common.drive(generate(model, labels, steps=steps, sampler=sampler, seed=0, preview_every=0,
                                   slice_range=(slices.start, slices.stop)))[0]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    spacing = t1.spacing[::-1]
    norm = model.card.normalization
    background = float(norm.background) if norm.background_label is not None else None
    real = realism.figures(t1.array[slices], labels.array[slices], spacing, None)
    row = realism.relative(realism.figures(result.array, labels.array[slices], spacing, background), real)
    # CPU seconds (all threads): on a busy machine wall time grows with the others' load, CPU time much less.
    return {"slices": slices.stop - slices.start, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "realism": row, "ran": common.ran(result)}, result.array


def slice_latency(model: LoadedModel, steps: int, sampler: str, labels, z: int, repeats: int) -> dict:
    times, cpu_times = [], []
    for _ in range(repeats + 1):  # the first run warms up (allocations, oneDNN kernels)
        started, cpu = time.perf_counter(), time.process_time()
        common.drive(generate(model, labels, steps=steps, sampler=sampler, seed=1, preview_every=0, slice_range=(z, z + 1)))
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu)
    return {"median_s": round(common.median(times[1:]), 3), "runs_s": [round(t, 3) for t in times[1:]],
            "median_cpu_s": round(common.median(cpu_times[1:]), 3)}


def _with_inpaint_panel(path: Path | None):
    """`quality.inpainting` draws its panel to the quality benchmark's file; this run's go to `path` (None: none)."""
    original = quality.panel

    def panel(rows, _path):
        if path is not None:
            original(rows, path)

    return original, panel


def quality_figures(model: LoadedModel, steps: int, sampler: str, name: str, t1, labels, args) -> dict:
    middle = labels.shape[0] // 2 + 4
    block = slice(middle - args.fidelity_slices // 2, middle + (args.fidelity_slices + 1) // 2)
    maps = args.fidelity_maps.split(",") if args.fidelity_maps else None
    fidelity = quality.mask_fidelity(model, t1, labels, block, steps, sampler, args.seed, maps=maps,
                                     panel_path=False if args.smoke else common.result_path(f"{args.result_name}_fidelity_{name}.png"))
    original, redirected = _with_inpaint_panel(None if args.smoke else common.result_path(f"{args.result_name}_inpaint_{name}.png"))
    quality.panel = redirected
    try:
        # The inpainting run's sampler is the model's default (the teacher's DPM-Solver++, the student's DDIM).
        inpainting = quality.inpainting(model, t1, labels, args.inpaint_cases, steps, args.seed)
    finally:
        quality.panel = original
    return {
        "mask_fidelity_mean_dice": round(fidelity["mean_dice"], 4),
        "mask_fidelity_per_map": {k: round(v["mean"], 4) for k, v in fidelity["held_out"].items()},
        "mask_fidelity_ceiling_real_t1": round(fidelity["ceiling_real_t1"]["mean"], 4),
        "fidelity_slices": [block.start, block.stop],
        "inpainting": {k: round(v, 4) for k, v in inpainting["mean"].items()},
        "inpainting_cases": len(inpainting["cases"]),
        "inpainting_ran": inpainting["ran"],
    }


# -- per-call speed levers -------------------------------------------------------------------------
def _call_time(network, stack: torch.Tensor, repeats: int) -> float:
    t = torch.full((stack.shape[0],), 500, dtype=torch.long)
    with torch.inference_mode():
        network(stack, t)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            network(stack, t)
            times.append(time.perf_counter() - started)
    return common.median(times)


def speed_levers(student: LoadedModel, labels, repeats: int) -> dict:
    """Seconds per network call of the student's network (the teacher's architecture) under each lever."""
    from napari_medgen.engine.diffusion.denoiser import prepare_for_inference

    student = load_model(student.folder, device="cpu", precision="fp32")  # the fp32 rows (the run's may be bf16)
    prepare_for_inference(student)
    divisor = student.card.downsampling_factor
    height, width = (int(np.ceil(s / divisor) * divisor) for s in labels.shape[1:])
    channels = student.card.input_channels
    out: dict[str, Any] = {"shape_per_slice": [channels, height, width]}
    threads_before = torch.get_num_threads()
    for batch in (1, 8):
        stack = torch.randn(batch, channels, height, width).contiguous(memory_format=torch.channels_last)
        row: dict[str, Any] = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            row[f"fp32_threads_{threads}_s"] = round(_call_time(plain_network(student.networks["network"], student.card), stack, repeats), 4)
        torch.set_num_threads(threads_before)
        try:
            bf16 = load_model(student.folder, device="cpu", precision="bf16")
            prepare_for_inference(bf16)
            row["bf16_s"] = round(_call_time(plain_network(bf16.networks["network"], bf16.card), stack.to(torch.bfloat16), repeats), 4)
        except Exception as error:  # noqa: BLE001 (the lever's figure is "not available" and why)
            row["bf16_s"] = f"not available: {type(error).__name__}: {str(error)[:120]}"
        out[f"batch_{batch}"] = row
    out["cpu_bf16_instructions"] = _cpu_has_bf16()
    try:
        started = time.perf_counter()
        compiled = torch.compile(plain_network(student.networks["network"], student.card))
        stack = torch.randn(1, channels, height, width).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            compiled(stack, torch.full((1,), 500, dtype=torch.long))
        out["compile_s"] = round(time.perf_counter() - started, 1)
        out["compiled_batch_1_s"] = round(_call_time(compiled, stack, repeats), 4)
    except Exception as error:  # noqa: BLE001
        out["compiled_batch_1_s"] = f"not available: {type(error).__name__}: {str(error)[:120]}"
    return out


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# -- report ----------------------------------------------------------------------------------------
def table(report: dict) -> str:
    lines = [
        "| Model (steps, sampler) | Whole volume | One slice | Mask Dice | Inpainting PSNR / SSIM / seam | Spread CSF / GM / WM | Gradient edge / inside | Inside GM / WM: in-plane, through-plane | Through/in-plane | Histogram W1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        r, q = row["volume"]["realism"], row["quality"]
        inp = q["inpainting"]
        lines.append(
            f"| {name} | {row['volume']['seconds']:.1f} s ({row['volume']['cpu_seconds']:.0f} CPU s; {row['volume']['slices']} slices) "
            f"| {row['slice']['median_s']:.3f} s ({row['slice']['median_cpu_s']:.3f} CPU s) "
            f"| {q['mask_fidelity_mean_dice']:.3f} | {inp['psnr']:.1f} dB / {inp['ssim']:.3f} / {inp['seam_ratio']:.2f} "
            f"| {r['spread_CSF']:.2f} / {r['spread_GM']:.2f} / {r['spread_WM']:.2f} "
            f"| {r['gradient_gm_wm_boundary']:.2f} / {r['gradient_inside_tissue']:.2f} "
            f"| {r['inside_in_plane_GM']:.2f} / {r['inside_in_plane_WM']:.2f}, {r['inside_through_plane_GM']:.2f} / {r['inside_through_plane_WM']:.2f} "
            f"| {r['through_in_plane']:.2f} | {r['histogram_w1']:.4f} |"
        )
    lines.append("")
    levers = report.get("speed_levers")
    if levers:
        b1, b8 = levers["batch_1"], levers["batch_8"]
        fmt = lambda v: f"{1000 * v:.0f} ms" if isinstance(v, float) else str(v)  # noqa: E731
        lines.append(
            f"Per network call ({'x'.join(map(str, levers['shape_per_slice'][1:]))} slice): 1 slice fp32 {fmt(b1['fp32_threads_1_s'])} "
            f"(1 thread) / {fmt(b1['fp32_threads_2_s'])} (2 threads), bf16 {fmt(b1['bf16_s'])}, torch.compile "
            f"{fmt(levers['compiled_batch_1_s'])} (compiling took {levers.get('compile_s', '-')} s); 8 slices fp32 "
            f"{fmt(b8['fp32_threads_1_s'])} / {fmt(b8['fp32_threads_2_s'])}, bf16 {fmt(b8['bf16_s'])}. This CPU has "
            f"{'' if levers['cpu_bf16_instructions'] else 'no '}bf16 instructions."
        )
        lines.append("")
    t = report["targets"]
    lines.append(
        f"Targets (student): whole volume < {TARGET_VOLUME_S:g} s: {common.met(t['volume'])}; one slice < {TARGET_SLICE_S:g} s: "
        f"{common.met(t['slice'])}; Dice within {TARGET_DICE_GAP} of the teacher: {common.met(t['dice'])} (gap {t['dice_gap']:+.3f}); "
        f"inpainting no worse (PSNR): {common.met(t['inpainting'])} ({t['psnr_gap']:+.2f} dB). Inpainting: "
        + "; ".join(f"{name}: {quality.fill_words(row['quality']['inpainting_ran'])}" for name, row in report["rows"].items()
                    if "inpainting_ran" in row["quality"])
        + ". Realism: ratios to the real T1 "
        "(1 = as the scan) of the whole volume. Measured by `python benchmarks/distilled.py`; "
        f"{common.machine_line(report['machine'])}"
    )
    return "\n".join(lines)


def table_row(r: dict) -> tuple[str, str, str, str]:
    """The performance table's row (docs/benchmarks.md): what, figure, target, met."""
    student, teacher = r["student"], r["teacher"]
    s, t = r["rows"][student], r["rows"][teacher]
    return (
        f"Distilled {r['student_model']} ({s['steps']} steps) vs {r['teacher_model']} ({t['steps']} steps): the sample brain's "
        f"{s['volume']['slices']} slices, one slice, mask Dice, inpainting",
        f"volume **{s['volume']['seconds']:.1f} s** vs {t['volume']['seconds']:.1f} s; slice **{s['slice']['median_s']:.3f} s** vs "
        f"{t['slice']['median_s']:.3f} s; Dice {s['quality']['mask_fidelity_mean_dice']:.3f} vs {t['quality']['mask_fidelity_mean_dice']:.3f}; "
        f"PSNR {s['quality']['inpainting']['psnr']:.1f} vs {t['quality']['inpainting']['psnr']:.1f} dB",
        f"< {TARGET_VOLUME_S:g} s, < {TARGET_SLICE_S:g} s, Dice gap <= {TARGET_DICE_GAP}, PSNR no worse",
        common.met(all(r["targets"][k] for k in ("volume", "slice", "dice", "inpainting"))),
    )


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--teacher", default="brain-t1-demo")
    parser.add_argument("--student", default="brain-t1-demo-fast")
    parser.add_argument("--fidelity-slices", type=int, default=8, help="slices of the mask-fidelity block")
    parser.add_argument("--fidelity-maps", default=None, help="comma-separated held-out maps (default: all four)")
    parser.add_argument("--inpaint-cases", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the one-slice latency (after a warm-up)")
    parser.add_argument("--volume-slices", type=int, default=0, help="slices of the volume run (0: all)")
    parser.add_argument("--levers", action=__import__("argparse").BooleanOptionalAction, default=True,
                        help="measure the per-call speed levers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", help="auto (as a user gets it), fp32 or bf16")
    parser.add_argument("--result-name", default="distilled",
                        help="name of the results (benchmarks/results/NAME.json and its pictures); another student measured "
                             "beside the shipped one takes another name, and only the default updates docs/models.md")
    args = common.parse(parser, SMOKE, argv)
    teacher, student = _models(args)
    t1, labels = common.sample_brain()
    count = args.volume_slices or labels.shape[0]
    start = (labels.shape[0] - count) // 2
    volume_slices = slice(start, start + count)
    z = int(np.argmax((labels.array == 3).sum((1, 2))))  # the slice with the most white matter, as the demo test
    student_steps, student_sampler = _defaults(student)
    teacher_steps, teacher_sampler = _defaults(teacher)
    if args.smoke:
        teacher_steps = 3  # the tiny teacher's card names no steps (20): seconds, not minutes
    runs = [(teacher, teacher_steps, teacher_sampler, "teacher"), (teacher, student_steps, student_sampler, "teacher_cut"),
            (student, student_steps, student_sampler, "student")]
    started = time.perf_counter()
    rows, planes = {}, []
    for model, steps, sampler, key in runs:
        volume, array = whole_volume(model, steps, sampler, labels, t1, volume_slices)
        ran = volume["ran"]  # the row is named by what ran (the volume's provenance), not by what was asked
        name = (f"{model.card.name} cut to {ran['steps']} steps, not distilled" if key == "teacher_cut"
                else f"{model.card.name} ({ran['sampler']} {ran['steps']})")
        rows[name] = {
            "key": key,
            "steps": ran["steps"],
            "sampler": ran["sampler"],
            "weights_sha256": model.weights_sha256,
            "volume": volume,
            "slice": slice_latency(model, steps, sampler, labels, z, args.repeats),
            "quality": quality_figures(model, steps, sampler, key, t1, labels, args),
        }
        planes.append((name, array))
        print(name, rows[name], flush=True)
    planes.append(("real T1", t1.array[volume_slices]))
    if not args.smoke:
        realism.planes_picture(planes, common.result_path(f"{args.result_name}_planes.png"))
    names = {row["key"]: name for name, row in rows.items()}
    s, t = rows[names["student"]], rows[names["teacher"]]
    dice_gap = s["quality"]["mask_fidelity_mean_dice"] - t["quality"]["mask_fidelity_mean_dice"]
    psnr_gap = s["quality"]["inpainting"]["psnr"] - t["quality"]["inpainting"]["psnr"]
    report = {
        "what": "distilled student vs its teacher: whole-volume and one-slice time, mask Dice, inpainting, realism",
        "machine": common.machine(),
        "teacher_model": teacher.card.name,
        "student_model": student.card.name,
        "teacher": names["teacher"],
        "student": names["student"],
        "distillation": student.card.provenance.get("distillation"),
        "rows": rows,
        "speed_levers": speed_levers(student, labels, max(3, args.repeats)) if args.levers else None,
        "targets": {
            "volume": s["volume"]["seconds"] < TARGET_VOLUME_S and s["volume"]["slices"] == labels.shape[0],
            "slice": s["slice"]["median_s"] < TARGET_SLICE_S,
            "dice": dice_gap >= -TARGET_DICE_GAP,
            "dice_gap": round(dice_gap, 4),
            "inpainting": psnr_gap >= 0,
            "psnr_gap": round(psnr_gap, 3),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = common.write_result(args.result_name, report)
    text = table(report)
    print(text)
    print(f"wrote {path}")
    if args.result_name == "distilled":
        common.update_doc("distilled-table", text)


if __name__ == "__main__":
    main()
