"""Inpainting on brains the model never saw, against scikit-image's `inpaint_biharmonic`, by region size.

    python benchmarks/unseen_inpainting.py [--model brain-t1-demo] [--regions-per-size 4] [--sizes 10 15 20 30] [--smoke]

Brains (only the ICBM152 template was used for training; the others ship inside pip packages):
- `icbm152`: the training brain at 2 mm with its own tissue labels, regions other than quality.py's;
- `nibabel_anatomical`: nibabel's test T1 (a 66 x 82 x 50 mm block of a real head at 2 mm, another scanner);
- `dipy_t1_coronal`: dipy's real coronal T1 slice (skull-stripped, 256 x 256; 1 mm pixels assumed).
Tissue labels of the unseen brains: 3-class k-means inside the brain, as benchmarks/quality.py makes them.

For every brain and every region diameter, `--regions-per-size` balls (discs on the 2-D slice) are
placed at random inside the eroded brain, voided and inpainted with the tissue labels as guide: PSNR and
SSIM inside the region against the truth, beside slice-wise `inpaint_biharmonic` on the same region;
and each fill judged as `fill_judge.judge` judges it (issue 33): its level against the scan's (a share of the
brain's intensity range), its texture inside (gradient energy of the region eroded by 3 voxels, over the scan's)
and its seam (gradient energy on the border ring, over the scan's).
Each region is filled twice: with the posterior mean (`inpaint_estimate="mean"`, the faithful fill a
repair asks for, blended with the interpolation of the known tissue near the border: the headline
figures) and with the default `"auto"` (the mean up to `small_region_mm` thick, a textured sample beyond).
Writes benchmarks/results/unseen_inpainting.json, a PNG panel, and the unseen-inpainting table of docs/quality.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from napari_medgen.engine.synthesis import SamplingOptions, inpaint
from napari_medgen.engine.volume import Volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import drive  # noqa: E402
from fill_judge import judge  # noqa: E402
from quality import kmeans_tissues, load_for_benchmark, panel  # noqa: E402

SMOKE = {"regions_per_size": 1, "sizes": [10], "steps": 2, "brains": ["icbm152"]}
NEEDS_TRAINED_MODEL = True
BRAINS = ("icbm152", "nibabel_anatomical", "dipy_t1_coronal")
JUDGED = ("level", "texture", "seam")
FILLS = ("mean", "auto", "sample", "biharmonic")
FIGURES = ("psnr", "ssim", "biharmonic_psnr", "biharmonic_ssim", "auto_psnr", "auto_ssim", "sample_psnr", "sample_ssim",
           *(f"{fill}_{figure}" for fill in FILLS for figure in JUDGED),
           *(f"{fill}_abs_level" for fill in FILLS))


def load_brain(name: str) -> tuple[Volume, Volume, np.ndarray]:
    """(image, tissue labels 0..3, brain mask) of one evaluation brain, in (z, y, x) arrays."""
    if name == "icbm152":
        t1, labels = common.sample_brain()
        return t1, labels, labels.array > 0
    if name == "nibabel_anatomical":
        import nibabel

        from napari_medgen.engine.io import read_volume

        image = read_volume(Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii")
        array = image.array.astype(np.float32)
        brain = array > np.percentile(array, 2)  # the block is all head: drop only the darkest voxels
    elif name == "dipy_t1_coronal":
        import dipy

        slice_2d = np.load(Path(dipy.__file__).parent / "data" / "files" / "t1_coronal_slice.npy").astype(np.float32)
        array = (slice_2d * 1000.0)[None]  # one slice; 1 mm pixels, intensities to a scanner-like range
        image = Volume(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
        brain = array > 0
    else:
        raise ValueError(f"unknown brain {name!r}; one of {', '.join(BRAINS)}")
    from scipy.ndimage import binary_fill_holes

    brain = np.stack([binary_fill_holes(s) for s in brain])
    labels = kmeans_tissues(image.array.astype(np.float32), brain)
    return image.with_array(image.array.astype(np.float32), metadata={}), image.with_array(labels, metadata={}), brain


def ball(shape: tuple[int, ...], centre: np.ndarray, diameter_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    radius = diameter_mm / 2 / spacing_zyx
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radius))
    return np.broadcast_to(inside <= 1, shape).copy()


def in_plane(operation, mask: np.ndarray, **kwargs) -> np.ndarray:
    """A binary morphology operation slice by slice (a single slice has no neighbours to erode against)."""
    return np.stack([operation(s, **kwargs) for s in mask])


def evaluate_brain(model, name: str, sizes: list[float], per_size: int, steps: int, seed: int, average: int = 1,
                   **options) -> dict:
    from scipy.ndimage import binary_erosion
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from skimage.restoration import inpaint_biharmonic

    image, labels, brain = load_brain(name)
    array = image.array.astype(np.float32)
    spacing_zyx = np.asarray(image.spacing[::-1], float)
    if array.shape[0] == 1:
        spacing_zyx[0] = 1e9  # a disc: no extent across the single slice
    data_range = float(np.percentile(array[brain], 99.5))
    rng = np.random.default_rng(seed + 1000)  # other regions than quality.py's
    rows, panels = [], []
    for diameter_mm in sizes:
        margin = [max(1, int(np.ceil(diameter_mm / 2 / s))) if s < 1e8 else 0 for s in spacing_zyx]
        inner = np.zeros_like(brain)
        inner[tuple(slice(m, n - m if m else None) for m, n in zip(margin, brain.shape))] = True
        eroded = in_plane(binary_erosion, brain, iterations=2) & inner
        candidates = np.argwhere(eroded)
        for k in range(per_size):
            centre = candidates[int(rng.integers(len(candidates)))]
            region = ball(array.shape, centre, diameter_mm, spacing_zyx) & brain
            region_volume = image.with_array(region.astype(np.uint8), metadata={})
            fills = {}
            for estimate in ("auto", "mean", "sample"):
                settled = fills.get("auto", (None, None))[1]
                if estimate == settled:  # the default fill settled on this one: the same run, not run again
                    fills[estimate] = fills["auto"]
                    continue
                start = time.perf_counter()
                results = drive(inpaint(model, image, region_volume, labels, steps=steps, seed=seed + k, preview_every=0,
                                        variants=average, inpaint_estimate=estimate, **options))
                fills[estimate] = (np.mean([r.array.astype(np.float32) for r in results], axis=0),
                                   results[0].metadata["provenance"]["inpaint_estimate"], time.perf_counter() - start,
                                   common.ran(results[0]))
            ours, _, seconds, _ = fills["mean"]
            voided = np.where(region, 0, array)
            classical = array.copy()
            for z in np.where(region.any((1, 2)))[0]:
                classical[z] = inpaint_biharmonic(voided[z], region[z])
            zs = np.where(region.any((1, 2)))[0]
            ys, xs = np.where(region.any(0))
            box = (slice(zs[0], zs[-1] + 1), slice(max(0, ys.min() - 8), ys.max() + 9), slice(max(0, xs.min() - 8), xs.max() + 9))
            truth, mask = array[box], region[box]

            def scores(estimate: np.ndarray) -> tuple[float, float]:
                psnr = peak_signal_noise_ratio(truth[mask], estimate[box][mask], data_range=data_range)
                window = 3 if min(truth.shape[1:]) >= 3 else 1
                ssim_map = np.stack([structural_similarity(truth[z], estimate[box][z], data_range=data_range, full=True,
                                                           win_size=window)[1] for z in range(truth.shape[0])])
                return float(psnr), float(ssim_map[mask].mean())

            judged = {fill: judge(estimate, array, region, brain, tuple(image.spacing[::-1])) for fill, estimate in
                      (("mean", ours), ("auto", fills["auto"][0]), ("sample", fills["sample"][0]),
                       ("biharmonic", classical))}
            psnr, ssim = scores(ours)
            auto_psnr, auto_ssim = scores(fills["auto"][0])
            sample_psnr, sample_ssim = scores(fills["sample"][0])
            bh_psnr, bh_ssim = scores(classical)
            rows.append({"diameter_mm": diameter_mm, "psnr": psnr, "ssim": ssim, "biharmonic_psnr": bh_psnr,
                         "biharmonic_ssim": bh_ssim, "seconds": round(seconds, 2),
                         "auto_psnr": auto_psnr, "auto_ssim": auto_ssim, "auto_estimate": fills["auto"][1],
                         "auto_seconds": round(fills["auto"][2], 2), "sample_psnr": sample_psnr,
                         "sample_ssim": sample_ssim,
                         **{f"{fill}_{figure}": judged[fill][figure] for fill in FILLS for figure in JUDGED},
                         **{f"{fill}_abs_level": abs(judged[fill]["level"]) for fill in FILLS},
                         "ran": {estimate: fill[3] for estimate, fill in fills.items()}})
            if k == 0:
                z = int(centre[0])
                panels.append((f"{name} {diameter_mm:.0f} mm", np.where(region[z], 4, labels.array[z]), ours[z], array[z]))
    return {"cases": rows, **summarise(rows, sizes), "panels": panels, "ran": ran_summary(rows)}


def _typical(key: str, values: list[float]) -> float:
    """The mean, but the median for the judge's ratios: a small ball's interior (eroded by 3 voxels) at 2 mm is a
    voxel or two, where the scan's gradient energy can be near zero and one region's ratio swamps the mean."""
    return float(np.median(values) if key.endswith(("_texture", "_seam")) else np.mean(values))


def summarise(rows: list[dict], sizes: list[float]) -> dict:
    """Per size and over all sizes, each figure's typical value (`_typical`), and each fill's worst level."""
    by_size = {}
    for diameter_mm in sizes:
        chosen = [r for r in rows if r["diameter_mm"] == diameter_mm]
        by_size[str(diameter_mm)] = {key: _typical(key, [r[key] for r in chosen]) for key in FIGURES}
        by_size[str(diameter_mm)]["auto_estimates"] = sorted({r["auto_estimate"] for r in chosen})
    mean = {key: _typical(key, [r[key] for r in rows]) for key in FIGURES}
    worst = {fill: max((r[f"{fill}_level"] for r in rows), key=abs) for fill in FILLS}
    return {"by_size": by_size, "mean": mean, "worst_level": worst}


def ran_summary(rows: list[dict]) -> dict[str, str]:
    """How each fill ran over all regions, from the runs' provenance: the mean's network calls (their range), a
    draw's sampler and steps."""
    out = {}
    for estimate in ("mean", "sample"):
        records = [r["ran"][estimate] for r in rows]
        calls = sorted({r["network_calls"] for r in records})
        span = f"{calls[0]}" if len(calls) == 1 else f"{calls[0]}-{calls[-1]}"
        walks = sorted({f"{r['sampler']} {r['steps']} steps" for r in records})
        out[estimate] = (f"{span} network calls" if estimate == "mean" else f"{', '.join(walks)}, {span} network calls")
    return out


def summary_table(report: dict) -> str:
    sizes = report["sizes"]
    head = ("| brain | ours, mean fill (all sizes) | biharmonic | " + " | ".join(f"{s:g} mm: ours / biharmonic" for s in sizes)
            + " | default fill (auto), all sizes | a draw (sample), all sizes | level off, mean (worst, signed): mean / draw / "
            "biharmonic | texture inside: mean / draw / biharmonic | seam: mean / draw / biharmonic |")
    rows = [head, "|" + "---|" * (8 + len(sizes))]
    for name, result in report["brains"].items():
        m = result["mean"]
        cells = [f"{name}", f"**{m['psnr']:.1f} dB / {m['ssim']:.2f}**", f"{m['biharmonic_psnr']:.1f} dB / {m['biharmonic_ssim']:.2f}"]
        for s in sizes:
            b = result["by_size"][str(s)]
            cells.append(f"{b['psnr']:.1f} / {b['biharmonic_psnr']:.1f} dB, {b['ssim']:.2f} / {b['biharmonic_ssim']:.2f}")
        cells.append(f"{m['auto_psnr']:.1f} dB / {m['auto_ssim']:.2f}")
        cells.append(f"{m['sample_psnr']:.1f} dB / {m['sample_ssim']:.2f}")
        worst = result.get("worst_level", {})
        cells.append(" / ".join(f"{m[f'{fill}_abs_level']:.3f} ({worst.get(fill, float('nan')):+.3f})"
                                for fill in ("mean", "sample", "biharmonic")))
        for figure in ("texture", "seam"):
            cells.append(" / ".join(f"{m[f'{fill}_{figure}']:.2f}" for fill in ("mean", "sample", "biharmonic")))
        rows.append("| " + " | ".join(cells) + " |")
    rows += ["", "Ours: the posterior mean (`--inpaint-estimate mean`), blended with the interpolation of the known tissue "
             "within about 2 mm of the border (`--border-interpolation-mm`). The default fill (auto) is the mean up to "
             f"{SamplingOptions().small_region_mm:g} mm thick and a textured sample beyond. Level, texture and seam as "
             "`benchmarks/fill_judge.py` judges a fill (issue 33): the fill's mean minus the scan's as a share of the "
             "brain's 1-99 % range; gradient energy inside the region eroded by 3 voxels, and on its border ring, "
             "over the scan's (1 = as the scan; a smooth fill has less inside); the medians over the regions.",
             "", f"PSNR / SSIM inside the region, {report['regions_per_size']} regions per size and brain; {ran_words(report)}; "
             f"measured by `python benchmarks/unseen_inpainting.py` on {common.machine_line(report['machine'])} "
             f"in {report['seconds']:.0f} s."]
    return "\n".join(rows)


def ran_words(report: dict) -> str:
    """What ran, per brain, from the runs' provenance (a report from before the record: the steps asked)."""
    if not all("ran" in result for result in report["brains"].values()):
        return f"{report.get('steps_asked', report.get('steps'))} steps asked (what ran was not recorded)"
    return "; ".join(f"{name}: the mean {r['ran']['mean']}, a draw {r['ran']['sample']}" for name, r in report["brains"].items())


def main(argv: list[str] | None = None) -> dict:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--model", default="brain-t1-demo")
    parser.add_argument("--brains", nargs="+", default=list(BRAINS), choices=BRAINS)
    parser.add_argument("--sizes", nargs="+", type=float, default=[10, 15, 20, 30, 40])
    parser.add_argument("--regions-per-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = common.parse(parser, SMOKE, argv)
    model = common.benchmark_model()[0] if args.smoke else load_for_benchmark(args.model, None)
    started = time.perf_counter()
    report = {"model": model.card.name, "model_version": model.card.version, "weights_sha256": model.weights_sha256,
              "sizes": args.sizes,
              "regions_per_size": args.regions_per_size, "steps_asked": args.steps, "brains": {}}
    panels = []
    for name in args.brains:
        result = evaluate_brain(model, name, args.sizes, args.regions_per_size, args.steps, args.seed)
        panels += result.pop("panels")
        report["brains"][name] = result
        m = result["mean"]
        print(f"{name:20s} ours {m['psnr']:.2f} dB / {m['ssim']:.3f}  biharmonic {m['biharmonic_psnr']:.2f} / "
              f"{m['biharmonic_ssim']:.3f}  seam {m['mean_seam']:.2f}  default fill {m['auto_psnr']:.2f} / "
              f"{m['auto_ssim']:.3f}", flush=True)
        for size, b in result["by_size"].items():
            print(f"    {float(size):4.0f} mm  ours {b['psnr']:.2f} / {b['ssim']:.3f}   biharmonic {b['biharmonic_psnr']:.2f} / "
                  f"{b['biharmonic_ssim']:.3f}   default fill ({', '.join(b['auto_estimates'])}) {b['auto_psnr']:.2f} / "
                  f"{b['auto_ssim']:.3f}   sample {b['sample_psnr']:.2f} / {b['sample_ssim']:.3f}   texture mean / sample / "
                  f"biharmonic {b['mean_texture']:.2f} / {b['sample_texture']:.2f} / {b['biharmonic_texture']:.2f}", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"] = common.machine()
    common.write_result("unseen_inpainting", report)
    panel(panels[:6], common.result_path("unseen_inpainting.png"))
    common.update_doc("unseen-inpainting-table", summary_table(report))
    return report


if __name__ == "__main__":
    main()
