"""ROI inpainting (issue 6, item 3): a small region costs what the region needs, not what the image has.

    python benchmarks/roi_inpaint.py [--steps 20] [--repeats 3] [--cases 3] [--sweep-steps 5] [--threads N] [--smoke]

`inpaint` processes only a box around the region plus a context margin (16 mm); the comparison is the
same call with a margin that covers the whole frame (`context_mm=10000`: every in-plane voxel of the
region's slices, what a whole-frame inpainting does). Both with the tissue labels as guide.

- slice: the sample brain's middle axial T1 slice at 1 mm (resampled from 2 mm), padded to 256x256;
  a 20 mm disk in the brain. Time (side by side, median of `--repeats`) and quality inside the region
  (PSNR and SSIM against the real slice; mean over `--cases` region centres).
- volume: the whole sample brain (91x109x91 at 2 mm); a 20 mm ball. Time and quality as above.
- sweeps (`--sweep-steps` steps, one run each): a 20 mm disk in 128x128 ... 512x512 slices (time should
  stay flat for the ROI, grow for the whole frame) and 10 ... 80 mm disks in the 256x256 slice (time
  grows with the region).
What fills the region is the engine's default (`inpaint_estimate="auto"`): a region this small is filled with
the posterior mean, one network call per draw whatever `--steps` asks; the fill and the network calls recorded
are each result's provenance (`ran`), and the table says them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

FULL_FRAME_MM = 10000.0
TARGET_SPEEDUP = 5.0
SMOKE = {"steps": 1, "repeats": 1, "cases": 1, "sweep_steps": 1, "image_sizes": [128], "region_sizes": [10]}


def slice_at_1mm(size: int):
    """The middle axial T1 slice and its labels at 1 mm, centred in a size x size frame (2-D Volumes)."""
    from scipy.ndimage import zoom

    from napari_medgen.engine.volume import Volume

    t1, labels = common.sample_brain()
    z = labels.shape[0] // 2 + 4
    image = zoom(t1.array[z].astype(np.float32), 2, order=1)
    label = zoom(labels.array[z], 2, order=0)
    frames = []
    for array, dtype in ((image, np.float32), (label, np.uint8)):
        out = np.zeros((size, size), dtype)
        h, w = min(size, array.shape[0]), min(size, array.shape[1])
        sy, sx = (array.shape[0] - h) // 2, (array.shape[1] - w) // 2
        oy, ox = (size - h) // 2, (size - w) // 2
        out[oy : oy + h, ox : ox + w] = array[sy : sy + h, sx : sx + w]
        frames.append(Volume(out, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
    return frames[0], frames[1]


def ball(shape: tuple[int, ...], spacing_zyx: np.ndarray, centre: np.ndarray, diameter_mm: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    distance = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing_zyx, strict=True))
    return distance <= (diameter_mm / 2) ** 2


def centres(labels: np.ndarray, count: int, margin_vox: int, seed: int = 0) -> list[np.ndarray]:
    from scipy.ndimage import binary_erosion

    inside = np.argwhere(binary_erosion(labels > 0, iterations=margin_vox))
    rng = np.random.default_rng(seed)
    return [inside[int(rng.integers(len(inside)))] for _ in range(count)]


def region_quality(result: np.ndarray, truth: np.ndarray, region: np.ndarray, brain: np.ndarray) -> dict:
    """PSNR and SSIM inside the region (SSIM map over the image, averaged in the region)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    data_range = float(np.percentile(truth[brain], 99.5))
    psnr = peak_signal_noise_ratio(truth[region], result[region], data_range=data_range)
    ssim_map = structural_similarity(truth, result, data_range=data_range, full=True, win_size=3)[1]
    return {"psnr": float(psnr), "ssim": float(ssim_map[region].mean())}


def run_inpaint(model, image, region, labels, steps: int, seed: int, context_mm: float) -> tuple[np.ndarray, dict]:
    """The inpainted array and what ran (the result's provenance)."""
    from napari_medgen.engine.synthesis import inpaint

    result = common.drive(inpaint(model, image, region, labels, steps=steps, seed=seed, preview_every=0, context_mm=context_mm))
    return result[0].array.astype(np.float32), common.ran(result[0])


def compare(model, image, labels, regions: list[np.ndarray], steps: int, repeats: int) -> dict:
    """ROI against whole frame: time on the first region (side by side), quality over all regions."""
    volumes = [image.with_array(r.astype(np.uint8), metadata={}) for r in regions]
    contexts = {"roi": 16.0, "full_frame": FULL_FRAME_MM}
    for context in contexts.values():  # warm-up: the first call at a shape builds oneDNN's kernels
        run_inpaint(model, image, volumes[0], labels, 2, 0, context)
    outputs: dict[str, tuple[np.ndarray, dict]] = {}

    def timed_run(name: str):
        def run():
            outputs[name] = run_inpaint(model, image, volumes[0], labels, steps, 0, contexts[name])
        return run

    times = common.side_by_side({name: timed_run(name) for name in contexts}, repeats, warmup=0)
    medians = {k: common.median(v) for k, v in times.items()}
    quality: dict[str, list[dict]] = {"roi": [], "full_frame": []}
    truth = np.asarray(image.array, np.float32)
    brain = labels.array > 0
    for case, (region, volume) in enumerate(zip(regions, volumes, strict=True)):
        for name, context in contexts.items():
            result = outputs[name][0] if case == 0 else run_inpaint(model, image, volume, labels, steps, case, context)[0]
            quality[name].append(region_quality(result, truth, region, brain))
    mean = {name: {k: float(np.mean([q[k] for q in rows])) for k in ("psnr", "ssim")} for name, rows in quality.items()}
    return {
        "seconds": {k: round(v, 3) for k, v in medians.items()},
        "runs": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "speedup": round(medians["full_frame"] / medians["roi"], 1),
        "ran": {name: output[1] for name, output in outputs.items()},
        "quality_inside_region_mean": mean,
        "quality_cases": quality,
    }


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--sweep-steps", type=int, default=5)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[128, 256, 512], help="the image-size sweep's slices")
    parser.add_argument("--region-sizes", type=int, nargs="+", default=[10, 20, 40, 80], help="the region-size sweep's mm")
    args = common.parse(parser, SMOKE, argv)
    model, kind = common.benchmark_model()

    # A 256x256 slice at 1 mm, a 20 mm disk.
    image, labels = slice_at_1mm(256)
    disks = [ball(image.shape, np.array([1.0, 1.0]), c, 20.0) for c in centres(labels.array, args.cases, 12)]
    run_inpaint(model, image, image.with_array(disks[0].astype(np.uint8), metadata={}), labels, 2, 0, 16.0)  # warm-up
    slice_result = compare(model, image, labels, disks, args.steps, args.repeats)
    print(f"256x256 slice, 20 mm disk: ROI {slice_result['seconds']['roi']:.2f} s, whole frame "
          f"{slice_result['seconds']['full_frame']:.2f} s ({slice_result['speedup']}x)", flush=True)

    # The whole sample brain, a 20 mm ball.
    t1, brain_labels = common.sample_brain()
    spacing = np.asarray(t1.spacing[::-1])
    balls = [ball(t1.shape, spacing, c, 20.0) for c in centres(brain_labels.array, args.cases, 6)]
    volume_result = compare(model, t1, brain_labels, balls, args.steps, args.repeats)
    print(f"91x109x91 volume, 20 mm ball: ROI {volume_result['seconds']['roi']:.2f} s, whole frame "
          f"{volume_result['seconds']['full_frame']:.2f} s ({volume_result['speedup']}x)", flush=True)

    # Sweeps: image size at a fixed region, region size at a fixed image.
    by_image = {}
    for size in args.image_sizes:
        im, lab = slice_at_1mm(size)
        centre = np.array([size // 2, size // 2 - 20])
        region = im.with_array(ball(im.shape, np.array([1.0, 1.0]), centre, 20.0).astype(np.uint8), metadata={})
        roi, (_, roi_ran) = common.timed(lambda: run_inpaint(model, im, region, lab, args.sweep_steps, 0, 16.0))
        full, (_, full_ran) = common.timed(lambda: run_inpaint(model, im, region, lab, args.sweep_steps, 0, FULL_FRAME_MM))
        by_image[f"{size}x{size}"] = {"roi_s": round(roi, 3), "full_frame_s": round(full, 3), "ran": {"roi": roi_ran, "full_frame": full_ran}}
    by_region = {}
    centre = np.array([128, 108])
    for diameter in args.region_sizes:
        region = image.with_array(ball(image.shape, np.array([1.0, 1.0]), centre, diameter).astype(np.uint8), metadata={})
        seconds, (_, ran) = common.timed(lambda: run_inpaint(model, image, region, labels, args.sweep_steps, 0, 16.0))
        by_region[f"{diameter} mm"] = {"roi_s": round(seconds, 3), "ran": ran}

    report = {
        "what": "inpaint on a box around the region (+16 mm context) vs the same call over the whole frame",
        "machine": common.machine(),
        "model": f"{model.card.name} ({kind})",
        "steps_asked": args.steps,
        "slice_256_at_1mm_20mm_disk": slice_result,
        "volume_91x109x91_at_2mm_20mm_ball": volume_result,
        "sweep_steps_asked": args.sweep_steps,
        "sweep_image_size_20mm_disk": by_image,
        "sweep_region_size_256_slice": by_region,
        "quality_note": "quality is meaningful only with trained weights" if kind != "trained" else "",
        "target": f"at least {TARGET_SPEEDUP}x faster than the whole frame for a small region, same quality inside it",
        "met": bool(slice_result["speedup"] >= TARGET_SPEEDUP and volume_result["speedup"] >= TARGET_SPEEDUP),
    }
    path = common.write_result("roi_inpaint", report)
    print(f"image-size sweep {by_image}; region-size sweep {by_region}; wrote {path}")


def table_row(r: dict) -> tuple[str, str, str, str]:
    """The performance table's row (docs/benchmarks.md): what, figure, target, met."""
    s, v = r["slice_256_at_1mm_20mm_disk"], r["volume_91x109x91_at_2mm_20mm_ball"]
    qs, qv = s["quality_inside_region_mean"], v["quality_inside_region_mean"]
    sweep = ", ".join(f"{k} {x['roi_s']:.2f}/{x['full_frame_s']:.2f} s" for k, x in r["sweep_image_size_20mm_disk"].items())
    regions = ", ".join(f"{k} {x['roi_s']:.2f} s" for k, x in r["sweep_region_size_256_slice"].items())
    asked, sweep_asked = r.get("steps_asked", r.get("steps")), r.get("sweep_steps_asked", r.get("sweep_steps"))
    fills = [x.get("ran", {}).get("roi") for x in (s, v)] + [x.get("ran") for x in r["sweep_region_size_256_slice"].values()]
    fill = _fill_words([f for f in fills if f], asked, sweep_asked)
    return (
        f"Inpainting a 20 mm region, ROI box vs whole frame, {fill}, {r['model']}",
        f"256x256 slice: **{s['speedup']}x** ({s['seconds']['roi']} vs {s['seconds']['full_frame']} s), PSNR/SSIM in region "
        f"{qs['roi']['psnr']:.1f}/{qs['roi']['ssim']:.2f} vs {qs['full_frame']['psnr']:.1f}/{qs['full_frame']['ssim']:.2f}; "
        f"volume: **{v['speedup']}x** ({v['seconds']['roi']} vs {v['seconds']['full_frame']} s), "
        f"{qv['roi']['psnr']:.1f}/{qv['roi']['ssim']:.2f} vs {qv['full_frame']['psnr']:.1f}/{qv['full_frame']['ssim']:.2f}; "
        f"ROI/whole by image size ({sweep_asked} steps asked): {sweep}; ROI by region size: {regions}",
        f">= {TARGET_SPEEDUP:g}x, same quality in region",
        common.met(r["met"]),
    )


def _fill_words(fills: list[dict], asked: int, sweep_asked: int) -> str:
    """What filled the regions, from the runs' provenance: 'posterior-mean fill (4 network calls) at 20 and at 5
    steps asked', or the sampler and steps that ran; a result from before the record says only what was asked."""
    if not fills:
        return f"{asked} steps asked (what ran was not recorded)"
    words = sorted({common.ran_words(f) for f in fills})
    return f"{'; '.join(words)} (at {asked} and at {sweep_asked} steps asked)"


if __name__ == "__main__":
    main()
