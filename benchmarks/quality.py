"""Quality of a brain model (default: the shipped brain-t1-demo): mask fidelity, inpainting, diversity.

    python benchmarks/quality.py [--model brain-t1-demo] [--checkpoint DIR] [--slices 16] [--update-card] [--smoke]

- Mask fidelity: images generated from held-out label maps (the sample's labels flipped left-right,
  shifted, elastically deformed, and with a hand-painted grey-matter blob inside white matter; none of
  them is a training slice) are segmented by 3-class k-means on intensity inside the brain, classes
  ordered by mean intensity (T1: CSF < GM < WM), and compared with the conditioning map (Dice per
  tissue). The same measure on the real T1 against its own labels is the ceiling.
- Inpainting: random regions (5-30 mm) of the real T1 are voided and inpainted with the tissue labels as
  guide; PSNR and SSIM inside the region against the truth, beside scikit-image's `inpaint_biharmonic`
  on the same regions; seam: mean gradient magnitude on the region's border over the mean inside the brain.
- Diversity: pixel-wise standard deviation between variants with different seeds, inside the brain.

Writes benchmarks/results/quality.json and PNG panels (labels, result, real) in benchmarks/results/, and
the quality table of docs/quality.md. `--smoke`: a tiny random-weight model, 2 slices, 2 steps, one inpainting case,
results in a temporary folder (a check that the script runs; docs and card untouched).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medgen.engine.model.card import save_card
from napari_medgen.engine.model.loading import LoadedModel, load_model
from napari_medgen.engine.synthesis import generate, inpaint
from napari_medgen.engine.volume import Volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import drive  # noqa: E402

TISSUES = {1: "CSF", 2: "GM", 3: "WM"}
SMOKE = {"slices": 2, "steps": 2, "inpaint_cases": 1}
NEEDS_TRAINED_MODEL = True  # run_all skips this benchmark without it (its figures would mean nothing)


def kmeans_tissues(image: np.ndarray, brain: np.ndarray, seed: int = 0) -> np.ndarray:
    """3-class k-means on intensity inside `brain`; labels 1..3 by increasing mean intensity."""
    from scipy.cluster.vq import kmeans2

    values = image[brain].astype(np.float64)[:, None]
    best = None
    for attempt in range(5):  # k-means++ restarts, keep the lowest within-cluster spread
        centroids, assignment = kmeans2(values, 3, minit="++", seed=seed + attempt)
        spread = sum(((values[assignment == k] - centroids[k]) ** 2).sum() for k in range(3))
        if best is None or spread < best[0]:
            best = (spread, centroids, assignment)
    _, centroids, assignment = best
    order = np.argsort(centroids[:, 0])
    rank = np.empty(3, int)
    rank[order] = np.arange(1, 4)
    out = np.zeros(image.shape, np.uint8)
    out[brain] = rank[assignment]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else float("nan")


def tissue_dice(segmentation: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: dice(segmentation == k, labels == k) for k, name in TISSUES.items()}


def held_out_label_maps(labels: Volume, slices: slice, seed: int) -> dict[str, Volume]:
    """Label maps no training slice had: flipped, shifted, elastically deformed, hand-painted blob."""
    rng = np.random.default_rng(seed)
    base = labels.array
    maps = {"flipped_lr": np.ascontiguousarray(base[:, :, ::-1])}
    maps["shifted_8mm"] = np.roll(base, shift=(4, -4), axis=(1, 2))
    image = sitk.GetImageFromArray(base)
    transform = sitk.BSplineTransformInitializer(image, [4, 4, 4], order=3)
    params = np.asarray(transform.GetParameters())
    transform.SetParameters(tuple(rng.normal(0, 2.5, params.shape)))  # ~5 mm displacements at 2 mm voxels
    maps["elastic"] = sitk.GetArrayFromImage(sitk.Resample(image, image, transform, sitk.sitkNearestNeighbor, 0))
    painted = base.copy()
    zz, yy, xx = np.mgrid[: base.shape[0], : base.shape[1], : base.shape[2]]
    centre = np.argwhere(base == 3).mean(0)
    blob = ((zz - centre[0]) / 6) ** 2 + ((yy - centre[1]) / 5) ** 2 + ((xx - centre[2] - 12) / 5) ** 2 <= 1
    painted[blob & (base == 3)] = 2  # grey matter painted inside white matter
    maps["painted_gm_blob"] = painted
    # Whole volumes: the model conditions on each slice's position in the volume, so the benchmark
    # generates `slices` of the whole map (as the Generate widget does), never a cropped map.
    return {name: Volume(np.ascontiguousarray(array, dtype=np.uint8), labels.spacing, labels.origin, labels.direction) for name, array in maps.items()}


def panel(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), dpi=90)
    axes = np.atleast_2d(axes)
    for r, (title, label, result, real) in enumerate(rows):
        for c, (img, name, cmap) in enumerate(((label, "labels", "viridis"), (result, title, "gray"), (real, "real T1", "gray"))):
            axes[r, c].imshow(img, cmap=cmap)
            axes[r, c].set_title(name, fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def mask_fidelity(
    model: LoadedModel,
    t1: Volume,
    labels: Volume,
    slices: slice,
    steps: int,
    sampler: str,
    seed: int,
    maps: list[str] | None = None,
    panel_path: Path | None | bool = True,
    map_seed: int | None = None,
) -> dict:
    """Dice of k-means tissue classes of images generated from held-out label maps, per map and mean.

    `maps` picks some of the held-out maps (all by default); `panel_path` True writes the default PNG,
    a path writes there, False none; `map_seed` (default: `seed`) makes the maps, so runs with different
    sampling seeds can share them.
    """
    brain_real = labels.array[slices] > 0
    ceiling = tissue_dice(kmeans_tissues(t1.array[slices], brain_real), labels.array[slices])
    results, panels, ran = {}, [], None
    held_out = held_out_label_maps(labels, slices, seed if map_seed is None else map_seed)
    for name, label_map in held_out.items():
        if maps is not None and name not in maps:
            continue
        start = time.perf_counter()
        synthetic = drive(generate(model, label_map, steps=steps, sampler=sampler, seed=seed, preview_every=0,
                                   slice_range=(slices.start, slices.stop)))[0]
        seconds = time.perf_counter() - start
        ran = ran or common.ran(synthetic)
        conditioning = label_map.array[slices]
        brain = conditioning > 0
        scores = tissue_dice(kmeans_tissues(synthetic.array, brain), conditioning)
        results[name] = {**scores, "mean": float(np.mean(list(scores.values()))), "seconds": round(seconds, 2)}
        mid = conditioning.shape[0] // 2
        panels.append((name, conditioning[mid], synthetic.array[mid], t1.array[slices][mid]))
    if panel_path:
        panel(panels, common.result_path(f"quality_generate_{sampler}_{steps}.png") if panel_path is True else Path(panel_path))
    mean = float(np.mean([r["mean"] for r in results.values()]))
    return {"ceiling_real_t1": {**ceiling, "mean": float(np.mean(list(ceiling.values())))}, "held_out": results, "mean_dice": mean,
            "ran": ran}


def inpainting(model: LoadedModel, t1: Volume, labels: Volume, cases: int, steps: int, seed: int) -> dict:
    from scipy.ndimage import binary_erosion, sobel
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from skimage.restoration import inpaint_biharmonic

    rng = np.random.default_rng(seed)
    brain = labels.array > 0
    image = t1.array.astype(np.float32)
    data_range = float(np.percentile(image[brain], 99.5))
    rows, panels, ran = [], [], []
    zz, yy, xx = np.mgrid[: image.shape[0], : image.shape[1], : image.shape[2]]
    candidates = np.argwhere(binary_erosion(brain, iterations=6))
    for case in range(cases):
        diameter_mm = float(rng.uniform(5, 30))
        centre = candidates[int(rng.integers(len(candidates)))]
        radius = diameter_mm / 2 / np.asarray(t1.spacing[::-1])
        region = (((zz - centre[0]) / radius[0]) ** 2 + ((yy - centre[1]) / radius[1]) ** 2 + ((xx - centre[2]) / radius[2]) ** 2) <= 1
        region_volume = t1.with_array(region.astype(np.uint8), metadata={})
        start = time.perf_counter()
        result = drive(inpaint(model, t1, region_volume, labels, steps=steps, seed=seed + case, preview_every=0))[0]
        seconds = time.perf_counter() - start
        ran.append(common.ran(result))
        z0, z1 = np.where(region.any((1, 2)))[0][[0, -1]]
        box = (slice(z0, z1 + 1),) + tuple(slice(max(0, c - 20), c + 21) for c in centre[1:])
        voided = image.copy()
        voided[region] = 0
        biharmonic = np.stack([inpaint_biharmonic(voided[z], region[z]) if region[z].any() else voided[z] for z in range(z0, z1 + 1)])
        truth, ours, classical = image[box], result.array.astype(np.float32)[box], np.zeros_like(image[box])
        classical[:] = biharmonic[:, box[1], box[2]]
        mask = region[box]

        def scores(estimate: np.ndarray) -> tuple[float, float]:
            psnr = peak_signal_noise_ratio(truth[mask], estimate[mask], data_range=data_range)
            ssim_map = structural_similarity(truth, estimate, data_range=data_range, full=True, win_size=3)[1]
            return float(psnr), float(ssim_map[mask].mean())

        grad = np.sqrt(sum(sobel(result.array.astype(np.float32), axis=a) ** 2 for a in (1, 2)))
        border = region & ~binary_erosion(region)
        seam = float(grad[border].mean() / grad[brain].mean())
        ours_psnr, ours_ssim = scores(ours)
        bh_psnr, bh_ssim = scores(classical)
        rows.append({"diameter_mm": round(diameter_mm, 1), "psnr": ours_psnr, "ssim": ours_ssim, "biharmonic_psnr": bh_psnr,
                     "biharmonic_ssim": bh_ssim, "seam_ratio": seam, "seconds": round(seconds, 2)})
        if case < 3:
            mid = int(centre[0])
            panels.append((f"inpainted {diameter_mm:.0f} mm", np.where(region[mid], 4, labels.array[mid]), result.array[mid], image[mid]))
    panel(panels, common.result_path("quality_inpaint.png"))
    summary = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "biharmonic_psnr", "biharmonic_ssim", "seam_ratio")}
    return {"cases": rows, "mean": summary, "ran": ran}


def diversity(model: LoadedModel, labels: Volume, slices: slice, steps: int, seed: int) -> dict:
    variants = drive(generate(model, labels, steps=steps, seed=seed, variants=3, preview_every=0,
                              slice_range=(slices.start, slices.stop)))
    stack = np.stack([v.array for v in variants])
    conditioning = labels.array[slices]
    brain = conditioning > 0
    std = stack.std(0)[brain]
    wm, gm = (np.mean(stack[:, conditioning == k]) for k in (3, 2))
    return {"mean_std_inside_brain": float(std.mean()), "relative_to_wm_gm_contrast": float(std.mean() / max(abs(wm - gm), 1e-6))}


def fill_words(ran: list[dict]) -> str:
    """How inpainting runs filled their regions, from their provenance: 'posterior-mean fill, 4 network calls' (each
    distinct way once, with how many runs took it when they differ)."""
    words = [common.ran_words(r) for r in ran]
    counts = {w: words.count(w) for w in dict.fromkeys(words)}
    return "; ".join(w if len(counts) == 1 else f"{w} ({n} of {len(words)})" for w, n in counts.items())


def load_for_benchmark(model_name: str, checkpoint: Path | None) -> LoadedModel:
    # fp32, as every quality figure in the docs was measured (precision auto would make them depend on the CPU;
    # benchmarks/precision.py measures what bf16 changes).
    model = load_model(model_name, device="auto", precision="fp32")
    if checkpoint is not None:  # evaluate the EMA weights of a training checkpoint
        from safetensors.torch import load_file

        tensors = load_file(str(checkpoint / "training_state.safetensors"))
        model.networks["network"].load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    return model


def summary_table(report: dict) -> str:
    """The quality table (docs/quality.md), from a report of `main`."""
    fid, inp, div = report["mask_fidelity"], report["inpainting"], report["diversity"]
    tissues = lambda r: " / ".join(f"{r[k]:.2f}" for k in TISSUES.values())  # noqa: E731
    ceiling, ran = fid["ceiling_real_t1"], fid["ran"]
    rows = [
        f"| Measure ({report['model']}, {ran['sampler']} {ran['steps']} steps, guidance {ran['guidance']:g}) | Result | Reference |",
        "|---|---|---|",
        f"| Mask fidelity: mean Dice of k-means tissue classes vs the conditioning map, {len(fid['held_out'])} held-out maps "
        f"x {report['slices'][1] - report['slices'][0]} slices | **{fid['mean_dice']:.3f}** | bar 0.80; real T1 on its own labels "
        f"{ceiling['mean']:.3f} (CSF / GM / WM {tissues(ceiling)}) |",
    ]
    for name, r in fid["held_out"].items():
        rows.append(f"| ... {name.replace('_', ' ')} (CSF / GM / WM) | {r['mean']:.3f} ({tissues(r)}) | |")
    m = inp["mean"]
    rows += [
        f"| Inpainting {len(inp['cases'])} random regions of 5-30 mm guided by the tissue labels ({fill_words(inp['ran'])}): "
        "PSNR / SSIM inside the region "
        f"| **{m['psnr']:.1f} dB / {m['ssim']:.3f}** | scikit-image `inpaint_biharmonic`: {m['biharmonic_psnr']:.1f} dB / {m['biharmonic_ssim']:.3f} |",
        f"| Seam: gradient magnitude on the region's border / inside the brain | {m['seam_ratio']:.2f} | the real T1: 1.0 on average |",
        f"| Diversity: std between 3 seeds inside the brain | {div['mean_std_inside_brain']:.1f} ({100 * div['relative_to_wm_gm_contrast']:.0f} % "
        "of the GM-WM contrast) | 0 would mean the seed is ignored |",
        "",
        f"Measured by `python benchmarks/quality.py` on {common.machine_line(report['machine'])} in {report['seconds']:.0f} s "
        f"(weights sha256 {report['weights_sha256'][:12]}).",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--model", default="brain-t1-demo")
    parser.add_argument("--checkpoint", type=Path, default=None, help="evaluate a training checkpoint's EMA weights")
    parser.add_argument("--slices", type=int, default=16, help="axial slices around the middle to generate")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpm++2m", help="the mask-fidelity runs' sampler")
    parser.add_argument("--inpaint-cases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--update-card", action="store_true", help="write the figures into the model card")
    args = common.parse(parser, SMOKE, argv)
    if args.smoke and (args.update_card or args.checkpoint):
        parser.error("--smoke measures a tiny random-weight model: no --update-card or --checkpoint")
    model = common.benchmark_model()[0] if args.smoke else load_for_benchmark(args.model, args.checkpoint)
    t1, labels = common.sample_brain()
    middle = labels.shape[0] // 2 + 4
    slices = slice(middle - args.slices // 2, middle + args.slices // 2)
    started = time.perf_counter()
    report = {
        "model": model.card.name,
        "weights_sha256": model.weights_sha256,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "machine": common.machine(),
        "slices": [slices.start, slices.stop],
        "steps_asked": args.steps,
        "sampler_asked": args.sampler,
        "mask_fidelity": mask_fidelity(model, t1, labels, slices, args.steps, args.sampler, args.seed),
        "inpainting": inpainting(model, t1, labels, args.inpaint_cases, args.steps, args.seed),
        "diversity": diversity(model, labels, slice(middle - 2, middle + 2), args.steps, args.seed),
    }
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"] = common.machine()
    out = common.write_result("quality" if args.checkpoint is None else "quality_checkpoint", report)
    fid = report["mask_fidelity"]
    print(f"mask fidelity: mean Dice {fid['mean_dice']:.3f} (ceiling on real T1 {fid['ceiling_real_t1']['mean']:.3f})")
    for name, r in fid["held_out"].items():
        print(f"  {name:16s} CSF {r['CSF']:.3f} GM {r['GM']:.3f} WM {r['WM']:.3f}")
    m = report["inpainting"]["mean"]
    print(f"inpainting: PSNR {m['psnr']:.2f} dB / SSIM {m['ssim']:.3f} (biharmonic {m['biharmonic_psnr']:.2f} / {m['biharmonic_ssim']:.3f}), seam ratio {m['seam_ratio']:.2f}")
    print(f"diversity: std {report['diversity']['mean_std_inside_brain']:.1f} inside brain")
    print(f"wrote {out} in {report['seconds']} s")
    if args.checkpoint is None:
        common.update_doc("quality-table", summary_table(report))
    if args.update_card and args.checkpoint is None:
        card = model.card.model_copy(deep=True)
        card.provenance["quality"] = {
            f"mask_fidelity_mean_dice_{fid['ran']['sampler']}_{fid['ran']['steps']}": round(fid["mean_dice"], 3),
            "mask_fidelity_ceiling_real_t1": round(fid["ceiling_real_t1"]["mean"], 3),
            "inpainting_psnr_db": round(m["psnr"], 2),
            "inpainting_ssim": round(m["ssim"], 3),
            "biharmonic_psnr_db": round(m["biharmonic_psnr"], 2),
            "seam_ratio": round(m["seam_ratio"], 2),
            "diversity_std": round(report["diversity"]["mean_std_inside_brain"], 1),
            "measured_by": "benchmarks/quality.py",
        }
        # The shipped model is found in the installed package; its card's source is the repository's copy.
        source = Path(__file__).resolve().parents[1] / "resources" / "models" / model.folder.name
        folder = source if model.folder.parent.name == "models" and (source / "model.json").is_file() else model.folder
        save_card(card, folder)
        print(f"updated {folder / 'model.json'}")


if __name__ == "__main__":
    main()
