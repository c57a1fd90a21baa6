"""Labels from a scan (issues 20, 35): accuracy and time of `labels_from_scan` against known truth, beside ANTs SyN.

    python benchmarks/anatomy_accuracy.py [--smoke | --quick] [--seeds N] [--no-1mm] [--allow-disturbed]

Truth (issue 35's protocol): the ICBM152 template (the shipped 2 mm sample; nilearn's 1 mm copy) under a smooth
random deformation (white noise smoothed at 12 mm, scaled to 1, 2 or 4 mm standard deviation per axis, plus a
shift of up to 4 mm), a multiplicative bias field of +-20 %, a gamma change and Rician noise (3 % of the maximum),
its labels moved by the same deformation (nearest neighbour); three seeds per size. Where antspyx is installed,
ANTs SyN with the same atlas on the same case is the reference (`anatomy_reference.py`). Variants at 2 mm: the
warped atlas alone (no mixture model), a synthetic skull, scalp and neck on a grid extended 120 mm down, and the
contrast inverted inside the brain (T2-like). The atlas is this same template, so the task is to undo the
deformation: real brains differ more. Figures: Dice per tissue (CSF, grey, white matter), their mean, brain-mask
Dice, seconds, and the registration's fit measures.

Real brains that pip packages ship (nibabel's and dipy's test data): no truth, so the weak reference is a
3-class k-means of the scan's own intensities inside the brain mask we found; agreement (Dice per class) and
pictures (benchmarks/results/anatomy_<name>.png) are shown. Needs nilearn (1 mm template) and dipy (its T2),
both optional: a case whose package is missing is skipped and says so.

`--smoke` runs one small case in seconds (6 mm working grid, few iterations) to check the script, its results and
pictures in a temporary folder; `--quick` one seed of each 2 mm case, printed only. A full run writes
benchmarks/results/anatomy_accuracy.json and the pictures; every run prints its figures as one JSON line last.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import anatomy_reference
import common

from napari_medgen._paths import sample_dir
from napari_medgen.engine.anatomy import labels_from_scan
from napari_medgen.engine.io import read_volume
from napari_medgen.engine.volume import Volume

TISSUES = {1: "CSF", 2: "grey matter", 3: "white matter"}
TARGETS = {
    "mean_tissue_dice": 0.85,
    "csf_dice_2mm": 0.70,
    "brain_dice": 0.95,
    "seconds_2mm": 60.0,
    "seconds_1mm": 300.0,
}
STDS_MM = (1.0, 2.0, 4.0)  # displacement standard deviations per axis (issue 35)
SMOKE = {
    "working_spacing_mm": 6.0,
    "similarity_iterations": 30,
    "affine_iterations": 30,
    "demons_iterations": 10,
    "em_iterations": 4,
}


# -- truth -------------------------------------------------------------------------------------------
def random_deformation(
    reference: sitk.Image, rng: np.random.Generator, std_mm: float, scale_mm: float = 12.0, shift_mm: float = 4.0
) -> sitk.Transform:
    """Issue 35's deformation: per axis, white noise smoothed at `scale_mm` and scaled to a standard deviation of
    `std_mm`, plus one shift of up to `shift_mm` per axis."""
    spacing = np.asarray(reference.GetSpacing())[::-1]
    axes = []
    for _ in range(3):
        smooth = ndimage.gaussian_filter(
            rng.standard_normal(reference.GetSize()[::-1]), scale_mm / spacing, mode="wrap"
        )
        axes.append(smooth / smooth.std() * std_mm)
    field = np.stack(axes, axis=-1) + rng.uniform(-shift_mm, shift_mm, 3)
    image = sitk.GetImageFromArray(field, isVector=True)
    image.CopyInformation(reference)
    return sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))


def deformed(
    t1: Volume, labels: Volume, rng: np.random.Generator, std_mm: float, pad_mm: float = 0.0
) -> tuple[np.ndarray, Volume]:
    """The template's intensities (0-1) and labels under a random deformation of `std_mm`, on its grid padded by
    `pad_mm` below (room for a neck)."""
    reference = t1.to_sitk()
    if pad_mm:  # more voxels along the array axis nearest to inferior-superior, at the inferior end
        pad = round(pad_mm / t1.spacing[2])
        size = list(reference.GetSize())
        size[2] += pad
        column = t1.direction_matrix[:, 2]
        origin = np.asarray(t1.origin) - (column * pad * t1.spacing[2] if column[2] > 0 else 0.0)
        reference = sitk.Image(size, sitk.sitkFloat32)
        reference.SetSpacing(t1.spacing)
        reference.SetOrigin(tuple(float(v) for v in origin))
        reference.SetDirection(t1.direction)
    transform = random_deformation(reference, rng, std_mm)
    image = sitk.Resample(sitk.Cast(t1.to_sitk(), sitk.sitkFloat32), reference, transform, sitk.sitkLinear, 0.0)
    moved = sitk.Resample(labels.to_sitk(), reference, transform, sitk.sitkNearestNeighbor, 0)
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    return array / array.max(), Volume.from_sitk(moved)


def add_head(
    array: np.ndarray, brain: np.ndarray, spacing_zyx: tuple[float, ...], superior_axis_sign: float
) -> np.ndarray:
    """A synthetic head around the brain (T1 contrast, WM ~ 0.85): a dark CSF/dura layer (3 mm), skull (6 mm,
    dark), scalp with fat (5 mm, bright), and a neck (muscle, a rim of fat) below the brain."""
    outside = ndimage.distance_transform_edt(~brain, sampling=spacing_zyx)
    head = array.copy()
    head[(outside > 0) & (outside <= 3)] = 0.15
    head[(outside > 3) & (outside <= 9)] = 0.04
    head[(outside > 9) & (outside <= 14)] = 0.95
    z_index = np.argwhere(brain.any(axis=(1, 2)))[:, 0]
    low_z = z_index.min() if superior_axis_sign > 0 else z_index.max()
    zz, yy, xx = np.indices(array.shape)
    cy, cx = np.argwhere(brain).mean(axis=0)[1:]
    radius = ((yy - cy) * spacing_zyx[1] / 45.0) ** 2 + ((xx - cx) * spacing_zyx[2] / 55.0) ** 2
    below = (zz <= low_z + 25 / spacing_zyx[0]) if superior_axis_sign > 0 else (zz >= low_z - 25 / spacing_zyx[0])
    neck = below & (outside > 14) & (radius < 1.0)
    head[neck] = 0.45
    head[below & (outside > 14) & (radius >= 1.0) & (radius < 1.25)] = 0.9
    return head


def degrade(
    array: np.ndarray, rng: np.random.Generator, bias: float = 0.2, noise: float = 0.03
) -> tuple[np.ndarray, float]:
    """Gamma, a smooth multiplicative bias of +-`bias`, Rician noise of `noise` x the maximum; scaled to 0-1000."""
    gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
    out = np.clip(array, 0, None) ** gamma
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in out.shape], indexing="ij")
    c = rng.standard_normal(6)
    z, y, x = axes
    field = c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * y * z + c[5] * (x**2 - y**2)
    field = (field - field.min()) / (field.max() - field.min()) * 2 - 1
    out = out * (1 + bias * field)
    out = np.sqrt((out + rng.normal(0, noise, out.shape)) ** 2 + rng.normal(0, noise, out.shape) ** 2)
    return (out * 1000).astype(np.float32), gamma


def template_1mm() -> tuple[Volume, Volume] | None:
    """nilearn's 1 mm ICBM152 T1 and tissue labels made as scripts/make_sample_brain.py makes the 2 mm ones."""
    try:
        import nilearn.datasets
    except ImportError:
        return None
    data = Path(nilearn.datasets.__file__).parent / "data"
    read = lambda name: sitk.ReadImage(str(data / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"))
    t1_image = read("t1")
    t1 = sitk.GetArrayFromImage(t1_image).astype(np.float32)
    gm, wm = (sitk.GetArrayFromImage(read(n)) / 255.0 for n in ("gm", "wm"))
    brain = t1 > 0.2 * t1.max()
    labels = np.where(brain, np.argmax(np.stack([np.clip(1 - gm - wm, 0, 1), gm, wm]), axis=0) + 1, 0).astype(np.uint8)
    t1[~brain] = 0
    geometry = {"spacing": t1_image.GetSpacing(), "origin": t1_image.GetOrigin(), "direction": t1_image.GetDirection()}
    return Volume(t1, **geometry), Volume(labels, **geometry)


# -- measuring ---------------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum() + b.sum())
    return round(2 * float((a & b).sum()) / total, 4) if total else 1.0


def run(scan: Volume, options: dict[str, Any]) -> tuple[Volume, float, float]:
    """labels_from_scan on the demo model: (labels, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    labels = common.drive(labels_from_scan(scan, common.DEMO, **options))
    return labels, round(time.perf_counter() - wall, 1), round(time.process_time() - cpu, 1)


def scores(found: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    tissue = {name: dice(found == k, truth == k) for k, name in TISSUES.items()}
    return {
        "tissue_dice": tissue,
        "mean_tissue_dice": round(float(np.mean(list(tissue.values()))), 4),
        "brain_dice": dice(found > 0, truth > 0),
    }


def synthetic_case(
    name: str,
    t1: Volume,
    labels: Volume,
    seed: int,
    options: dict[str, Any],
    std_mm: float = 2.0,
    head: bool = False,
    invert: bool = False,
    reference: bool = False,
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, round(10 * std_mm)])
    array, truth = deformed(t1, labels, rng, std_mm, pad_mm=120.0 if head else 0.0)
    brain = truth.array > 0
    if invert:  # T2-like: CSF bright, white matter dark, outside the brain untouched
        array = np.where(brain, np.clip(1.05 - array, 0, 1), array)
    if head:
        array = add_head(array, brain, truth.spacing[::-1], float(np.sign(truth.direction_matrix[2, 2])))
    image, gamma = degrade(array, rng)
    scan = truth.with_array(image, metadata={})
    found, wall, cpu = run(scan, options)
    anatomy = found.metadata["anatomy"]
    result = {"case": name, "seed": seed, "displacement_std_mm": std_mm, "gamma": round(gamma, 3)}
    result.update({"shape": list(scan.shape), "spacing_mm": list(scan.spacing)})
    result.update(scores(found.array, truth.array))
    result.update({"seconds": wall, "cpu_seconds": cpu, "stage_seconds": anatomy["seconds"]})
    result.update({"placement": anatomy["placement"], "fit": anatomy["fit"], "warning": anatomy.get("warning", "")})
    syn = anatomy_reference.syn_labels(scan, t1, labels) if reference else None
    if syn is not None:
        result["ants_syn"] = {**scores(syn[0], truth.array), "seconds": syn[1]}
    versus = f", ANTs SyN {result['ants_syn']['mean_tissue_dice']} in {syn[1]} s" if syn else ""
    print(
        f"{name} {std_mm} mm seed {seed}: mean tissue Dice {result['mean_tissue_dice']}, brain {result['brain_dice']}, "
        f"{wall} s{versus}",
        flush=True,
    )
    if seed == 0 and std_mm == 2.0:
        picture(f"anatomy_{name}", scan, {"truth": truth.array, "labels from scan": found.array})
    return result


def summarize(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds of the tissue, mean and brain Dice, median seconds; ANTs SyN's the same where measured."""

    def of(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "tissue_dice": {n: round(float(np.mean([r["tissue_dice"][n] for r in rows])), 3) for n in TISSUES.values()},
            "mean_tissue_dice": round(float(np.mean([r["mean_tissue_dice"] for r in rows])), 3),
            "brain_dice": round(float(np.mean([r["brain_dice"] for r in rows])), 3),
            "seconds": round(float(np.median([r["seconds"] for r in rows])), 1),
        }

    summary = {**of(cases), "seeds": len(cases)}
    if cases and all("ants_syn" in c for c in cases):
        summary["ants_syn"] = of([c["ants_syn"] for c in cases])
    return summary


# -- real brains ---------------------------------------------------------------------------------------
def real_brains() -> list[tuple[str, Path, str]]:
    """(name, file, contrast) of the head scans that pip packages ship, those installed."""
    found = []
    try:
        import nibabel

        data = Path(nibabel.__file__).parent / "tests" / "data"
        found += [
            ("nibabel_anatomical", data / "anatomical.nii", "T1"),
            ("nibabel_small_mnc", data / "small.mnc", "T1"),
        ]
    except ImportError:
        pass
    try:
        import dipy

        found.append(("dipy_aniso_vox", Path(dipy.__file__).parent / "data" / "files" / "aniso_vox.nii.gz", "T2"))
    except ImportError:
        pass
    return [item for item in found if item[1].is_file()]


def read_any(path: Path) -> Volume:
    """A volume by the project's reader, or by nibabel (MINC), converted from RAS to ITK's LPS."""
    if path.suffix != ".mnc":
        return read_volume(path)
    import nibabel

    image = nibabel.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32)
    lps = np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    return Volume(
        np.ascontiguousarray(data.transpose(2, 1, 0)),
        tuple(spacing),
        tuple(lps[:, 3]),
        tuple((lps[:, :3] / spacing).ravel()),
    )


def kmeans_tissues(values: np.ndarray, contrast: str, iterations: int = 50) -> np.ndarray:
    """3-class k-means of intensities, classes numbered CSF, grey, white by intensity (T1 rising, T2 falling)."""
    centres = np.percentile(values, [15, 50, 85])
    for _ in range(iterations):
        nearest = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        centres = np.array([values[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(3)])
    order = np.argsort(centres if contrast == "T1" else -centres)
    rank = np.empty(3, int)
    rank[order] = np.arange(3)
    return rank[np.argmin(np.abs(values[:, None] - centres[None]), axis=1)] + 1


def real_case(name: str, path: Path, contrast: str, options: dict[str, Any]) -> dict[str, Any]:
    scan = read_any(path)
    if scan.ndim == 4 or scan.array.ndim != 3:
        return {"case": name, "skipped": "not a 3-D volume"}
    found, wall, cpu = run(scan, options)
    brain = found.array > 0
    reference = np.zeros(scan.shape, np.uint8)
    reference[brain] = kmeans_tissues(np.asarray(scan.array, np.float64)[brain], contrast)
    result = {"case": name, "file": f"{path.parent.parent.name}/{path.parent.name}/{path.name}", "contrast": contrast}
    result.update(
        {
            "shape": list(scan.shape),
            "spacing_mm": [round(s, 3) for s in scan.spacing],
            "brain_ml": round(float(brain.sum() * np.prod(scan.spacing)) / 1000, 1),
        }
    )
    result["agreement_with_kmeans"] = {n: dice(found.array == k, reference == k) for k, n in TISSUES.items()}
    anatomy = found.metadata["anatomy"]
    result.update({"seconds": wall, "cpu_seconds": cpu, "placement": anatomy["placement"]})
    result.update({"brain_volume_vs_atlas": anatomy["brain_volume_vs_atlas"], "fit": anatomy["fit"]})
    result["warning"] = anatomy.get("warning", "")
    print(
        f"{name}: brain {result['brain_ml']} ml, agreement with k-means {result['agreement_with_kmeans']}, {wall} s",
        flush=True,
    )
    picture(
        f"anatomy_{name}", scan, {"labels from scan": found.array, "k-means in that brain (weak reference)": reference}
    )
    return result


# -- pictures -----------------------------------------------------------------------------------------
def picture(name: str, scan: Volume, overlays: dict[str, np.ndarray]) -> None:
    """Three orthogonal slices through the brain: the scan, then each label map over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from napari_medgen.engine.orientation import to_canonical

    canonical = to_canonical(scan)
    maps = {k: to_canonical(scan.with_array(v, metadata={})).array for k, v in overlays.items()}
    centre = (
        np.round(np.argwhere(next(iter(maps.values())) > 0).mean(axis=0)).astype(int)
        if any(np.any(m) for m in maps.values())
        else np.array(canonical.shape) // 2
    )
    colours = ListedColormap(["#00000000", "#3c8dd6", "#d98c3c", "#f2ecc8"])
    rows = 1 + len(maps)
    figure, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows))
    spacing = canonical.spacing[::-1]
    for column, axis in enumerate(range(3)):
        aspect = [spacing[a] for a in range(3) if a != axis]
        for row in range(rows):
            image = np.take(canonical.array, centre[axis], axis=axis)
            ax = axes[row, column]
            ax.imshow(image, cmap="gray", aspect=aspect[0] / aspect[1], origin="lower" if axis != 0 else "upper")
            if row:
                label = np.take(list(maps.values())[row - 1], centre[axis], axis=axis)
                ax.imshow(
                    label,
                    cmap=colours,
                    vmin=0,
                    vmax=3,
                    alpha=0.45,
                    interpolation="nearest",
                    aspect=aspect[0] / aspect[1],
                    origin="lower" if axis != 0 else "upper",
                )
            ax.set_axis_off()
            if column == 0:
                ax.set_title("scan" if row == 0 else list(maps)[row - 1], fontsize=9, loc="left")
    figure.suptitle(f"{name.removeprefix('anatomy_')}: CSF blue, grey matter orange, white matter cream", fontsize=10)
    figure.tight_layout()
    figure.savefig(common.result_path(f"{name}.png"), dpi=70)
    plt.close(figure)


# -- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="one seed of each 2 mm case, no 1 mm, no real brains")
    parser.add_argument("--seeds", type=int, default=3, help="deformations of the 2 mm template (full run)")
    parser.add_argument("--no-1mm", action="store_true")
    args = common.parse(parser, {}, argv)  # --threads: torch's (SimpleITK uses every core)
    if args.smoke and args.quick:
        parser.error("--smoke and --quick are different runs: choose one")
    t1 = read_volume(sample_dir() / "mni152_t1_2mm.nii.gz")
    labels = read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz")
    options: dict[str, Any] = dict(SMOKE) if args.smoke else {}
    seeds = 1 if (args.smoke or args.quick) else args.seeds
    stds = (2.0,) if args.smoke else STDS_MM
    cases: list[dict[str, Any]] = []
    for std in stds:
        for seed in range(seeds):
            cases.append(synthetic_case("template_2mm", t1, labels, seed, options, std, reference=not args.smoke))
    if not args.smoke:
        cases += [
            synthetic_case("template_2mm_warped_atlas_only", t1, labels, 0, {**options, "mixture": False}),
            synthetic_case("head_2mm", t1, labels, 0, options, head=True),
            synthetic_case("inverted_contrast_2mm", t1, labels, 0, options, invert=True),
        ]
    full = not (args.smoke or args.quick)
    if full and not args.no_1mm:
        fine = template_1mm()
        cases.append(
            synthetic_case("template_1mm", *fine, 0, options)
            if fine
            else {"case": "template_1mm", "skipped": "nilearn is not installed"}
        )
    real = [real_case(name, path, contrast, options) for name, path, contrast in real_brains()] if full else []
    summary = {
        f"{std:g}mm": summarize([c for c in cases if c["case"] == "template_2mm" and c["displacement_std_mm"] == std])
        for std in stds
    }
    fine_case = next((c for c in cases if c.get("case") == "template_1mm" and "seconds" in c), None)
    if fine_case:
        summary["template_1mm"] = {k: fine_case[k] for k in ("mean_tissue_dice", "brain_dice", "seconds")}
    at_2mm = summary["2mm"]
    met = {
        "mean_tissue_dice_2mm": at_2mm["mean_tissue_dice"] >= TARGETS["mean_tissue_dice"],
        "csf_dice_2mm": at_2mm["tissue_dice"]["CSF"] >= TARGETS["csf_dice_2mm"],
        "brain_dice": min(v["brain_dice"] for k, v in summary.items() if k.endswith("mm")) >= TARGETS["brain_dice"],
        "seconds_2mm": at_2mm["seconds"] <= TARGETS["seconds_2mm"],
    }
    if all("ants_syn" in v for k, v in summary.items() if k[0].isdigit()):
        met["at_least_ants_syn"] = all(
            v["mean_tissue_dice"] >= v["ants_syn"]["mean_tissue_dice"] for k, v in summary.items() if k[0].isdigit()
        )
    if fine_case:
        met["seconds_1mm"] = fine_case["seconds"] <= TARGETS["seconds_1mm"]
    met["no_failed_real_brain"] = not any(c.get("warning") for c in real) if real else None
    payload = {
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "summary": summary,
        "targets": TARGETS,
        "met": met,
        "cases": cases,
        "real_brains": real,
        "options": options or "defaults (AnatomyOptions)",
        "machine": common.machine(),
    }
    if not args.quick:
        print(f"wrote {common.write_result('anatomy_accuracy', payload)}")
    print(json.dumps(payload, default=common._plain))


if __name__ == "__main__":
    main()
