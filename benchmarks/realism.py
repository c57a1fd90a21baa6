"""Realism of generated volumes: do they look like the scan, or like a posterized label map?

    python benchmarks/realism.py [--steps 20] [--table-slices 30] [--warps 2]

Each generated volume is measured inside the brain after a 1st-99th percentile rescale, against its own
label map, and divided by the same figure of the real T1 (so 1.0 = as the real scan):
- spread of intensity within CSF, grey and white matter (a posterized image has too little);
- mean gradient magnitude on grey/white boundaries (staircase edges: too much) and inside tissues (voxels
  two or more voxels from any tissue boundary; flat tissues: too little, speckle: too much);
- the same inside-tissue gradient per tissue (grey and white matter), in-plane and through-plane apart: the
  whole-brain figure can hide a tissue that is too rough behind one that is too smooth (card 2.1.0's middle
  block read 0.99 from white matter at 1.44 and grey matter at 0.83), and texture copied from slice to slice
  (correlated noise) shows only through-plane;
- the ratio of through-plane to in-plane gradient energy (stripes across slices: too much);
- the 1-D Wasserstein distance between the brain's intensity histograms (0 = the same histogram), and within
  each tissue, which says where a distance comes from;
- the background: voxels outside the brain that are not exactly the card's background value.

On the sample brain's own map the real T1 is the exact reference; on the same map under smooth random warps
of about 2 voxels (maps no training slice had) the real T1 is only an approximate one. A table over guidance
(with and without guidance rescaling) on a block of slices gives realism, mask fidelity (k-means Dice, as in
quality.py) and time side by side, which is what the card's defaults are chosen from. Writes
benchmarks/results/realism.json, a three-plane picture per map (realism_planes_<map>.png), and the realism
table of docs/quality.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from napari_medgen.engine.synthesis import generate
from napari_medgen.engine.volume import Volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from quality import kmeans_tissues, tissue_dice  # noqa: E402

SMOKE = {"steps": 2, "table_slices": 2, "warps": 1, "whole": False}
NEEDS_TRAINED_MODEL = True
TISSUES = {1: "CSF", 2: "GM", 3: "WM"}
INSIDE_BY_TISSUE = ("inside_in_plane_GM", "inside_in_plane_WM", "inside_through_plane_GM", "inside_through_plane_WM")
RATIOS = ("spread_CSF", "spread_GM", "spread_WM", "gradient_gm_wm_boundary", "gradient_inside_tissue", *INSIDE_BY_TISSUE,
          "through_in_plane", "slice_difference")
# Along each array axis (z, y, x: across axial, coronal and sagittal slices): gradient energy along the axis over
# the mean of the other two, and the neighbouring-slice difference (issue 32's targets: within 1.1x of the real T1's).
AXIS_NAMES = ("z", "y", "x")
PER_AXIS = tuple(f"{kind}_{axis}" for kind in ("energy_ratio", "slice_difference") for axis in AXIS_NAMES)
# Across slices (issue 13's targets): at most this many times the real T1's.
ACROSS_SLICES = ("through_in_plane", "slice_difference")
# Issue 18's targets: (low, high) of each ratio to the real T1; the histogram distance's ceiling.
TARGETS = {
    "sample": {"ratio": (0.9, 1.1), "w1": 0.012},
    "warped": {"ratio": (0.85, 1.15), "w1": 0.015},
    "through_in_plane": 1.2,
}


def figures(image: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, ...], background: float | None) -> dict:
    """The realism figures of one image against its own label map (array order z, y, x)."""
    brain = labels > 0
    low, high = np.percentile(image[brain], [1, 99])
    scaled = (image.astype(np.float64) - low) / max(high - low, 1e-6)
    out: dict = {f"spread_{name}": float(scaled[labels == k].std()) for k, name in TISSUES.items()}
    if image.shape[0] > 1:
        gradient = np.gradient(scaled, *spacing_zyx)
    else:  # one slice: in-plane gradients only
        gradient = [np.zeros_like(scaled)] + [g[None] for g in np.gradient(scaled[0], *spacing_zyx[1:])]
    magnitude = np.sqrt(sum(g**2 for g in gradient))
    gm, wm = labels == 2, labels == 3
    out["gradient_gm_wm_boundary"] = float(magnitude[(gm & ndimage.binary_dilation(wm)) | (wm & ndimage.binary_dilation(gm))].mean())
    edges = np.zeros_like(brain)
    for k in TISSUES:
        tissue = labels == k
        edges |= tissue & ~ndimage.binary_erosion(tissue)
    inside = brain & ~ndimage.binary_dilation(edges)
    out["gradient_inside_tissue"] = float(magnitude[inside].mean()) if inside.any() else float("nan")
    in_plane_magnitude = np.sqrt(gradient[1] ** 2 + gradient[2] ** 2)
    for k in (2, 3):
        tissue_inside = inside & (labels == k)
        enough = tissue_inside.sum() >= 20
        out[f"inside_in_plane_{TISSUES[k]}"] = float(in_plane_magnitude[tissue_inside].mean()) if enough else float("nan")
        out[f"inside_through_plane_{TISSUES[k]}"] = (
            float(np.abs(gradient[0][tissue_inside]).mean()) if enough and image.shape[0] > 1 else float("nan"))
    core = ndimage.binary_erosion(brain, iterations=2)
    in_plane = 0.5 * ((gradient[1][core] ** 2).mean() + (gradient[2][core] ** 2).mean()) if core.any() else 0.0
    out["through_in_plane"] = float((gradient[0][core] ** 2).mean() / in_plane) if core.any() and in_plane > 0 else float("nan")
    # Seams between slices: the mean absolute difference between neighbouring slices, inside the brain.
    both = brain[1:] & brain[:-1]
    out["slice_difference"] = float(np.abs(np.diff(scaled, axis=0))[both].mean()) if both.any() else float("nan")
    # Along every axis (issue 32): stripes across coronal or sagittal slices show along y or x as they do along z.
    for axis, name in enumerate(AXIS_NAMES):
        others = [a for a in range(3) if a != axis]
        energy = (gradient[axis][core] ** 2).mean() if core.any() and image.shape[0] > 1 else float("nan")
        rest = 0.5 * sum((gradient[a][core] ** 2).mean() for a in others) if core.any() else 0.0
        out[f"energy_ratio_{name}"] = float(energy / rest) if rest else float("nan")
        pairs = np.moveaxis(brain, axis, 0)
        pairs = pairs[1:] & pairs[:-1]
        steps = np.abs(np.diff(np.moveaxis(scaled, axis, 0), axis=0))
        out[f"slice_difference_{name}"] = float(steps[pairs].mean()) if pairs.any() else float("nan")
    out["histogram"] = np.quantile(scaled[brain], np.linspace(0, 1, 1001))
    for k, name in TISSUES.items():
        out[f"histogram_{name}"] = np.quantile(scaled[labels == k], np.linspace(0, 1, 1001)) if (labels == k).any() else None
    if background is not None:
        outside = image[~brain]
        out["background_not_exact"] = float((outside != background).mean()) if outside.size else 0.0
    return out


def relative(generated: dict, real: dict) -> dict:
    """Each ratio to the real T1's, the histogram distance, the background figure."""
    row = {key: round(generated[key] / real[key], 3) if real.get(key) else float("nan")
           for key in RATIOS + PER_AXIS if key in generated}
    row["histogram_w1"] = round(float(np.mean(np.abs(generated["histogram"] - real["histogram"]))), 4)
    for name in TISSUES.values():
        ours, theirs = generated[f"histogram_{name}"], real[f"histogram_{name}"]
        row[f"histogram_w1_{name}"] = round(float(np.mean(np.abs(ours - theirs))), 4) if ours is not None and theirs is not None else float("nan")
        # signed: the tissue's median against the real one's, in the brain's 1-99 % range (what W1 hides)
        row[f"level_{name}"] = round(float(ours[500] - theirs[500]), 4) if ours is not None and theirs is not None else float("nan")
    if "background_not_exact" in generated:
        row["background_not_exact"] = round(generated["background_not_exact"], 4)
    return row


def meets(row: dict, kind: str) -> bool:
    low, high = TARGETS[kind]["ratio"]
    # A ratio that cannot be measured (a tissue without inside voxels) is not held against the map.
    ratios_ok = all(low <= row[key] <= high for key in RATIOS if key not in ACROSS_SLICES and np.isfinite(row[key]))
    return bool(
        ratios_ok
        and all(row[key] <= TARGETS["through_in_plane"] for key in ACROSS_SLICES)
        and row["histogram_w1"] <= TARGETS[kind]["w1"]
        and row.get("background_not_exact", 0.0) == 0.0
    )


def warped(labels: Volume, seed: int, displacement_voxels: float = 2.0, interpolator: int = sitk.sitkNearestNeighbor) -> Volume:
    """The label map under a smooth random warp (a B-spline on a 4^3 mesh, ~`displacement_voxels` voxels); a tissue
    fraction map of the same grid under the same warp with ``interpolator=sitk.sitkLinear``."""
    image = sitk.GetImageFromArray(labels.array)
    transform = sitk.BSplineTransformInitializer(image, [4, 4, 4], order=3)
    rng = np.random.default_rng(seed)
    transform.SetParameters(tuple(rng.normal(0, displacement_voxels, len(transform.GetParameters()))))
    array = sitk.GetArrayFromImage(sitk.Resample(image, image, transform, interpolator, 0))
    return labels.with_array(np.ascontiguousarray(array, dtype=labels.array.dtype))


def planes_picture(rows: list[tuple[str, np.ndarray]], path: Path) -> None:
    """Axial, coronal and sagittal mid-planes of each (name, volume) row, with 2 mm voxels shown square."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(8.4, 2.9 * len(rows)), dpi=90)
    axes = np.atleast_2d(axes)
    for r, (name, volume) in enumerate(rows):
        z, y, x = (s // 2 for s in volume.shape)
        # Canonical order: axial slices anterior up; coronal and sagittal shown with superior up.
        views = (("axial", volume[z]), ("coronal", volume[::-1, y, :]), ("sagittal", volume[::-1, :, x]))
        for c, (view, plane) in enumerate(views):
            axes[r, c].imshow(plane, cmap="gray", vmin=0, vmax=np.percentile(volume, 99.5))
            axes[r, c].set_title(f"{name}: {view}", fontsize=8)
            axes[r, c].axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def real_floor_w1(image: np.ndarray, labels: np.ndarray) -> float:
    """The histogram distance between two halves of the real scan (odd and even slices): the floor below which
    a generated image's distance to the real one means nothing."""
    brain = labels > 0
    low, high = np.percentile(image[brain], [1, 99])
    scaled = (image.astype(np.float64) - low) / max(high - low, 1e-6)
    quantiles = np.linspace(0, 1, 1001)
    halves = [np.quantile(scaled[start::2][brain[start::2]], quantiles) for start in (0, 1)]
    return round(float(np.mean(np.abs(halves[0] - halves[1]))), 4)


def unseen_anatomy(model, steps: int, background) -> dict:
    """Generation from the anatomy of real brains the model never saw (their 3-class k-means tissue maps, as
    quality.py makes them): k-means Dice against the map, and the realism ratios against that real brain."""
    from unseen_inpainting import load_brain

    rows = {}
    for name in ("nibabel_anatomical", "dipy_t1_coronal"):
        image, labels, _ = load_brain(name)
        image_generated, seconds, _ = generated(model, labels, steps, 0)
        spacing = image.spacing[::-1]
        real = figures(image.array, labels.array, spacing, None)
        row = relative(figures(image_generated, labels.array, spacing, background), real)
        brain = labels.array > 0
        dice = tissue_dice(kmeans_tissues(image_generated, brain), labels.array)
        row.update(mean_dice=round(float(np.mean(list(dice.values()))), 3), real_floor_w1=(
            real_floor_w1(image.array, labels.array) if image.shape[0] > 1 else None), seconds=round(seconds, 1))
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    return rows


def generated(model, labels: Volume, steps: int, seed: int, slice_range=None, fractions=None,
              **options) -> tuple[np.ndarray, float, dict]:
    """The generated array, its seconds, and what ran (the result's provenance)."""
    started = time.perf_counter()
    result = common.drive(generate(model, labels, slice_range=slice_range, steps=steps, seed=seed, preview_every=0,
                                   tissue_fractions=fractions, **options))
    return result[0].array, time.perf_counter() - started, common.ran(result[0])


def guidance_table(model, t1: Volume, labels: Volume, steps: int, block: slice, background) -> list[dict]:
    """Realism, mask fidelity and time on a block of slices, for guidance 1, 1.5, 2, 3 (with and without rescaling)."""
    spacing = t1.spacing[::-1]
    real = figures(t1.array[block], labels.array[block], spacing, None)
    brain = labels.array[block] > 0
    rows = []
    # The guidance sweep with the card's sampler and slice-noise correlation, then the other samplers, step
    # counts and correlations at guidance 1 (DDIM's few steps pull towards the mean: smooth tissues).
    settings = [{"guidance": 1.0}, {"guidance": 1.15}, {"guidance": 1.25}]
    settings += [{"guidance": g, "guidance_rescale": r} for g in (1.5, 2.0, 3.0) for r in (0.0, 0.7)]
    settings += [{"guidance": 1.0, "sampler": "ddim"}, {"guidance": 1.0, "sampler": "ddim", "steps": 2 * steps},
                 {"guidance": 1.0, "sampler": "ddim", "slice_noise_correlation": 0.5},
                 {"guidance": 1.0, "steps": 2 * steps}, {"guidance": 1.0, "sampler": "dpm++2m-sde"}]
    settings += [{"guidance": 1.0, "slice_noise_correlation": c} for c in (0.0, 0.5, 0.7, 0.85)]  # one for every tissue
    for setting in settings:
        options = {key: value for key, value in setting.items() if key != "steps"}
        if "slice_noise_correlation" in setting:  # a correlation is for slice-by-slice sampling (tri-planar refuses it)
            options["planes"] = "axial"
        run_steps = setting.get("steps", steps)
        image, seconds, ran = generated(model, labels, run_steps, 0, (block.start, block.stop), **options)
        row = relative(figures(image, labels.array[block], spacing, background), real)
        dice = tissue_dice(kmeans_tissues(image, brain), labels.array[block])
        row.update(guidance=ran["guidance"], guidance_rescale=setting.get("guidance_rescale", 0.0), sampler=ran["sampler"],
                   steps=ran["steps"], network_calls=ran["network_calls"], planes=ran.get("planes", "axial"),
                   slice_noise_correlation=None if ran.get("slice_noise_correlation_by_label") else ran["slice_noise_correlation"],
                   mean_dice=round(float(np.mean(list(dice.values()))), 3), seconds=round(seconds, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def defaults_words(model, ran: dict) -> str:
    """The card's defaults as the sample map's run applied them (its provenance): sampler, steps, guidance and the
    slice-noise correlation (per tissue where the card gives tissues their own)."""
    correlation = ran["slice_noise_correlation"]
    by_label = ran.get("slice_noise_correlation_by_label") or {}
    per_tissue = ", ".join(f"{model.card.label_schema.name_of(int(k)) or k} {v:g}" for k, v in by_label.items())
    return (f"{ran['sampler']} {ran['steps']} steps, {ran.get('planes', 'axial')} planes, guidance {ran['guidance']:g}, "
            f"slice-noise correlation {correlation:g}"
            + (f" ({per_tissue})" if per_tissue else ""))


def _f(value, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None and np.isfinite(value) else "-"


def _cells(row: dict) -> str:
    """The realism cells every table shares: spreads, gradients (whole brain, then per tissue), across slices, W1."""
    return (
        f"{_f(row['spread_CSF'])} / {_f(row['spread_GM'])} / {_f(row['spread_WM'])} | "
        f"{_f(row['gradient_gm_wm_boundary'])} / {_f(row['gradient_inside_tissue'])} | "
        f"{_f(row['inside_in_plane_GM'])} / {_f(row['inside_in_plane_WM'])}, "
        f"{_f(row['inside_through_plane_GM'])} / {_f(row['inside_through_plane_WM'])} | "
        f"{_f(row['through_in_plane'])} | {_f(row['slice_difference'])} | "
        f"{_f(row['histogram_w1'], 4)} ({_f(row['histogram_w1_CSF'], 3)} / {_f(row['histogram_w1_GM'], 3)} / "
        f"{_f(row['histogram_w1_WM'], 3)})"
    )


REALISM_HEAD = ("spread CSF / GM / WM | gradient GM-WM edge / inside | inside GM / WM: in-plane, through-plane | "
                "through/in-plane | neighbouring-slice difference | histogram W1 (CSF / GM / WM)")


def table(report: dict) -> str:
    head = f"| map (card defaults: {report['defaults']}) | {REALISM_HEAD} | background not exact | target met |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["maps"].items():
        lines.append(f"| {name} | {_cells(row)} | {100 * row['background_not_exact']:.1f} % | "
                     f"{'yes' if row['met'] else '**no**'} |")
    if "real_floor_w1" in report:
        lines.append(f"| the real T1 against itself (odd vs even slices): the floor | | | | | | {report['real_floor_w1']:.4f} | | |")
    for name, row in report.get("unseen_anatomy", {}).items():
        lines.append(f"| {name.replace('_', ' ')}'s own anatomy (unseen brain; k-means Dice {row['mean_dice']:.3f}) | "
                     f"{_cells(row)} | {100 * row.get('background_not_exact', 0.0):.1f} % | |")
    lines.append("")
    lines.append(f"| sampler, steps, planes | guidance (rescale) | slice-noise correlation | mean Dice | {REALISM_HEAD} | s |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in report["guidance_table"]:
        correlation = row.get("slice_noise_correlation")
        lines.append(
            f"| {row['sampler']}, {row['steps']}, {row.get('planes', 'axial')} | {row['guidance']:g}"
            + (f" ({row['guidance_rescale']:g})" if row["guidance_rescale"] else "")
            + f" | {'card' if correlation is None else f'{correlation:g}'} | {row['mean_dice']:.3f} | {_cells(row)} | "
            f"{row['seconds']:.0f} |"
        )
    lines.append("")
    lines.append("Ratios to the real T1 (1 = as the scan); '-' where a figure cannot be measured (one slice has no "
                 f"through-plane). {common.machine_line(report['machine'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--table-slices", type=int, default=30, help="slices of the guidance table's block")
    parser.add_argument("--warps", type=int, default=2, help="warped maps (seeds 1..N)")
    parser.add_argument("--whole", action=__import__("argparse").BooleanOptionalAction, default=True,
                        help="generate whole volumes (else the table's block only)")
    args = common.parse(parser, SMOKE, argv)
    model, weights = common.benchmark_model()
    t1, labels = common.sample_brain()
    norm = model.card.normalization
    background = float(norm.background) if norm.background_label is not None else None
    middle = labels.shape[0] // 2 + 4
    block = slice(middle - args.table_slices // 2, middle + (args.table_slices + 1) // 2)
    region = slice(None) if args.whole else block
    spacing = t1.spacing[::-1]
    started = time.perf_counter()
    maps = {"sample map": (labels, None)}
    maps.update({f"warped map (seed {s})": (warped(labels, s), None) for s in range(1, args.warps + 1)})
    if model.card.conditioning.tissue_fractions:  # the same maps given as the sample's tissue fractions
        fractions = common.sample_fractions()
        maps["sample map, tissue fractions"] = (labels, fractions)
        maps.update({f"warped map (seed {s}), tissue fractions": (
            warped(labels, s), [warped(f, s, interpolator=sitk.sitkLinear) for f in fractions]) for s in range(1, args.warps + 1)})
    report: dict = {"model": model.card.name, "weights": weights, "steps_asked": args.steps, "maps": {}, "seconds": {}}
    real = figures(t1.array[region], labels.array[region], spacing, None)
    pictures, ran = [], {}
    for name, (label_map, fractions) in maps.items():
        slice_range = None if args.whole else (block.start, block.stop)
        image, seconds, ran[name] = generated(model, label_map, args.steps, 0, slice_range, fractions)
        row = relative(figures(image, label_map.array[region], spacing, background), real)
        row["met"] = meets(row, "warped" if name.startswith("warped") else "sample")
        report["maps"][name] = row
        report["seconds"][name] = round(seconds, 1)
        pictures.append((f"generated, {name}", image))
        print(name, json.dumps(row), f"{seconds:.0f} s", flush=True)
    pictures.append(("real T1", t1.array[region]))
    report["real_floor_w1"] = real_floor_w1(t1.array[region], labels.array[region])
    report["unseen_anatomy"] = unseen_anatomy(model, args.steps, background) if not common.smoke() else {}
    planes_picture(pictures, common.result_path("realism_planes.png"))
    report["guidance_table"] = guidance_table(model, t1, labels, args.steps, block, background)
    report["ran"] = ran
    report["defaults"] = defaults_words(model, ran["sample map"])
    report["machine"] = common.machine()
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    common.write_result("realism", report)
    text = table(report)
    print(text)
    if common.official_results():
        common.update_doc("realism-table", text)


if __name__ == "__main__":
    main()
