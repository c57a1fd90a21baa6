"""Does synthetic data train a segmenter? A small MONAI 2-D UNet trained on real slices, synthetic cases, or both.

    python benchmarks/synthetic_training.py [--cases 4] [--steps 5] [--train-steps 300] [--seeds 3] [--workers 2] [--data DIR]
                                             [--result-name NAME] [--smoke]

Training sets (brain-extracted T1 axial slices at 2 mm, intensities over the brain's 99th percentile):
- real: the shipped sample brain (ICBM152 T1 and its tissue labels), the one real labelled brain we have;
- synthetic: `--cases` cases that `napari-medgen batch` makes from the sample's label map (elastic + flip
  augmentation, brain-t1-demo, `--steps` DPM++ steps, on a LocalCluster of `--workers`); the folder `--data`
  is reused, so a rerun skips the cases made already;
- real + synthetic: half of each batch from each.
Every training run gets the same on-the-fly augmentation (MONAI: left-right flips, small rotations and scaling,
intensity gamma), the same network (MONAI UNet, channels 8-64), optimiser, steps and batch size.

Tested on real data the segmenter never saw (tissue Dice, CSF / GM / WM, 3-D over the brain):
- `deformed_t1`: the sample T1 and its labels under 3 smooth random warps (seeds no training case used), with a
  smooth bias field and noise: exact truth;
- `nibabel_anatomical`: nibabel's test T1 (another person's head, 2 mm), brain found by `labels_from_scan`,
  tissues by 3-class k-means inside it, as benchmarks/quality.py makes them (a weak truth).
Writes benchmarks/results/synthetic_training.json, a picture of synthetic cases, and the table in docs/quality.md.
`--smoke`: the tiny random-weight model, 2 cases, a few training steps, the deformed test only.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SMOKE = {"seeds": 1, "cases": 2, "steps": 1, "train_steps": 3, "batch_size": 2, "deformations": 1, "workers": 0, "slab": 6}
NEEDS_TRAINED_MODEL = True
TISSUES = {1: "CSF", 2: "GM", 3: "WM"}
ARMS = ("real", "synthetic", "real+synthetic")
SLICE_SHAPE = (128, 112)  # the sample's 116 x 98 axial slices, padded to what three halvings need


# -- data ---------------------------------------------------------------------------------------------------------
def normalise(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Brain-extracted intensities over the brain's 99th percentile (each volume on its own scale)."""
    scale = float(np.percentile(image[brain], 99)) if brain.any() else 1.0
    return (np.clip(image / max(scale, 1e-6), 0, 1.5) * brain).astype(np.float32)


def pad(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(array.shape[:-2] + shape, array.dtype)
    h, w = min(shape[0], array.shape[-2]), min(shape[1], array.shape[-1])
    oy, ox = (shape[0] - h) // 2, (shape[1] - w) // 2
    iy, ix = (array.shape[-2] - h) // 2, (array.shape[-1] - w) // 2
    out[..., oy : oy + h, ox : ox + w] = array[..., iy : iy + h, ix : ix + w]
    return out


def slices(image: np.ndarray, labels: np.ndarray, min_fraction: float = 0.03) -> list[tuple[np.ndarray, np.ndarray]]:
    """Axial slices (canonical volumes) with some brain in them, padded to SLICE_SHAPE."""
    brain = labels > 0
    normalised = normalise(image, brain)
    keep = [z for z in range(labels.shape[0]) if brain[z].mean() >= min_fraction]
    return [(pad(normalised[z], SLICE_SHAPE), pad(labels[z].astype(np.int64), SLICE_SHAPE)) for z in keep]


def synthetic_cases(labels, folder: Path, cases: int, steps: int, workers: int, model: str) -> tuple[list, dict]:
    """Make (or reuse) the synthetic data set with the batch engine; its slices and how long it took."""
    from napari_medgen.engine.batch import run_synthesis, synthesize_dataset
    from napari_medgen.engine.batch.layout import image_path, label_path
    from napari_medgen.engine.io import read_volume
    from napari_medgen.engine.orientation import to_canonical
    from napari_medgen.engine.synthesis.options import SamplingOptions

    start = time.perf_counter()
    summary = run_synthesis(
        synthesize_dataset([labels], folder, cases, model=model, options=SamplingOptions(sampler="dpm++2m", steps=steps),
                           augment="elastic,flip", seed=100, workers=workers, device="cpu"),
        lambda event: print(f"synthesis: {event.message}", file=sys.stderr, flush=True),
    )
    seconds = time.perf_counter() - start
    if summary.failed:
        raise RuntimeError(f"synthesis failed: {summary.failed}")
    out, volumes, ran = [], [], []
    for case in sorted(summary.done + summary.skipped):
        image_volume = read_volume(image_path(folder, case))  # with its sidecar: the case's provenance
        ran.append(common.ran(image_volume))
        image = to_canonical(image_volume).array.astype(np.float32)
        label = to_canonical(read_volume(label_path(folder, case))).array
        volumes.append((image, label))
        out += slices(image, label)
    # What made the cases, from their own provenance (reused cases may have been made with other settings than asked).
    made_with = sorted({(r["sampler"], r["steps"]) for r in ran})
    info = {"cases": cases, "made_now": len(summary.done), "reused": len(summary.skipped), "seconds": round(seconds, 1),
            "where": summary.where, "made_with": [{"sampler": a, "steps": b} for a, b in made_with],
            "asked": {"sampler": "dpm++2m", "steps": steps}, "augment": "elastic,flip", "folder": str(folder)}
    return out, info, volumes


def deformed_tests(t1, labels, count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The sample T1 and labels under smooth random warps (seeds 9000+), with a bias field and noise: exact truth."""
    tests = []
    image_itk = sitk.GetImageFromArray(t1.array.astype(np.float32))
    labels_itk = sitk.GetImageFromArray(labels.array.astype(np.uint8))
    for k in range(count):
        rng = np.random.default_rng(9000 + k)
        transform = sitk.BSplineTransformInitializer(image_itk, [3, 3, 3], order=3)
        transform.SetParameters(tuple(rng.normal(0, 2.0, len(transform.GetParameters()))))  # voxels here (unit spacing): ~4 mm
        warped = sitk.GetArrayFromImage(sitk.Resample(image_itk, image_itk, transform, sitk.sitkLinear, 0.0))
        truth = sitk.GetArrayFromImage(sitk.Resample(labels_itk, labels_itk, transform, sitk.sitkNearestNeighbor, 0))
        zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n) for n in warped.shape], indexing="ij")
        coefficients = rng.normal(0, 0.08, 4)
        bias = np.exp(coefficients[0] * zz + coefficients[1] * yy + coefficients[2] * xx + coefficients[3] * xx * yy)
        noisy = warped * bias + rng.normal(0, 0.02 * float(np.percentile(warped, 99)), warped.shape)
        tests.append((f"deformed_t1_{k}", noisy.astype(np.float32), truth.astype(np.int64)))
    return tests


def nibabel_test() -> tuple[str, np.ndarray, np.ndarray] | None:
    """nibabel's test T1 (another head): brain from labels_from_scan, tissues by k-means inside it (quality.py's way)."""
    try:
        import nibabel
    except ImportError:
        return None
    path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    if not path.is_file():
        return None
    import quality

    from napari_medgen.engine.anatomy import labels_from_scan
    from napari_medgen.engine.io import read_volume
    from napari_medgen.engine.orientation import to_canonical

    scan = to_canonical(read_volume(path))
    found = common.drive(labels_from_scan(scan))
    brain = to_canonical(found).array > 0 if found.shape == scan.shape else found.array > 0
    image = np.asarray(scan.array, np.float32)
    return "nibabel_anatomical", image, quality.kmeans_tissues(image, brain).astype(np.int64)


# -- the segmenter ---------------------------------------------------------------------------------------------
def segmenter() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)


def augmenter(seed: int):
    from monai.transforms import Compose, RandAdjustContrastd, RandAffined, RandFlipd

    transform = Compose([
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),
        RandAffined(keys=("image", "label"), prob=0.8, rotate_range=0.15, scale_range=0.1, mode=("bilinear", "nearest"),
                    padding_mode="zeros"),
        RandAdjustContrastd(keys="image", prob=0.5, gamma=(0.8, 1.25)),
    ])
    transform.set_random_state(seed=seed)
    return transform


def train(pools: list[list[tuple[np.ndarray, np.ndarray]]], steps: int, batch_size: int, seed: int) -> torch.nn.Module:
    """Same recipe for every arm; each batch draws evenly from the pools (one pool: all from it)."""
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = segmenter()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, steps))
    augment = augmenter(seed)
    net.train()
    for step in range(steps):
        images, labels = [], []
        for item in range(batch_size):
            pool = pools[item % len(pools)]
            image, label = pool[int(rng.integers(len(pool)))]
            sample = augment({"image": image[None], "label": label[None].astype(np.float32)})
            images.append(torch.as_tensor(np.asarray(sample["image"]), dtype=torch.float32))
            labels.append(torch.as_tensor(np.asarray(sample["label"])).round().long())
        loss = loss_fn(net(torch.stack(images)), torch.stack(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def segment(net: torch.nn.Module, image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Slice by slice, padded to a multiple of 8 (what the UNet's halvings need)."""
    normalised = normalise(image, brain)
    shape = tuple(int(np.ceil(n / 8) * 8) for n in normalised.shape[1:])
    batch = torch.as_tensor(pad(normalised, shape)[:, None])
    predicted = torch.cat([net(part).argmax(1) for part in torch.split(batch, 16)]).numpy()
    out = np.zeros(image.shape, np.int64)
    h, w = image.shape[1:]
    oy, ox = (shape[0] - h) // 2, (shape[1] - w) // 2
    out[:] = predicted[:, oy : oy + h, ox : ox + w]
    return out * brain


def tissue_dice(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    out = {}
    for value, name in TISSUES.items():
        a, b = predicted == value, truth == value
        total = a.sum() + b.sum()
        out[name] = float(2 * np.logical_and(a, b).sum() / total) if total else float("nan")
    out["mean"] = float(np.mean([out[n] for n in TISSUES.values()]))
    return out


def picture(volumes: list, real: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [("real T1 (training)", *real)] + [(f"synthetic case {k}", *v) for k, v in enumerate(volumes[:3])]
    fig, axes = plt.subplots(2, len(shown), figsize=(2.4 * len(shown), 5), dpi=90)
    for c, (title, image, labels) in enumerate(shown):
        z = labels.shape[0] // 2
        axes[0, c].imshow(normalise(image, labels > 0)[z], cmap="gray", origin="lower", vmin=0, vmax=1.2)
        axes[0, c].set_title(title, fontsize=8)
        axes[1, c].imshow(labels[z], cmap="viridis", origin="lower", vmin=0, vmax=3)
        for a in axes[:, c]:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- the benchmark ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--cases", type=int, default=4, help="synthetic cases")
    parser.add_argument("--steps", type=int, default=5, help="sampling steps per synthetic case")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers for the synthesis (0: a plain loop)")
    parser.add_argument("--data", type=Path, default=None, help="synthetic data set folder (reused; default: a temporary one)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per arm")
    parser.add_argument("--deformations", type=int, default=3)
    parser.add_argument("--slab", type=int, default=0, help="use only this many central slices of the sample (0: all)")
    parser.add_argument("--result-name", default="synthetic_training",
                        help="benchmarks/results/NAME.json; only the default updates docs/quality.md")
    args = common.parse(parser, SMOKE, argv)
    t1, labels = common.sample_brain()
    model = str(common.random_weights_folder(common.tiny_demo_card())) if common.smoke() else common.DEMO
    label_volume = labels
    if args.slab:  # smoke: a few central slices only (the model's slice positions then mean nothing)
        from napari_medgen.engine.volume import Volume

        z0 = labels.shape[0] // 2 - args.slab // 2
        origin = labels.index_to_physical(np.array([0.0, 0.0, float(z0)]))
        label_volume = Volume(np.ascontiguousarray(labels.array[z0 : z0 + args.slab]), labels.spacing, tuple(origin), labels.direction)
    folder = args.data or Path(tempfile.mkdtemp(prefix="medgen-synthetic-training-"))
    if not args.slab:  # the shipped file itself, as `napari-medgen batch --labels` reads it (a folder it made is reused)
        from napari_medgen._paths import sample_dir

        label_volume = sample_dir() / "mni152_tissue_labels_2mm.nii.gz"
    synthetic, synthesis, volumes = synthetic_cases(label_volume, folder, args.cases, args.steps, args.workers, model)
    real = slices(np.asarray(t1.array, np.float32), labels.array)
    print(f"training slices: real {len(real)}, synthetic {len(synthetic)}", file=sys.stderr, flush=True)
    tests = deformed_tests(t1, labels, args.deformations)
    if not common.smoke():
        extra = nibabel_test()
        if extra is not None:
            tests.append(extra)
    pools = {"real": [real], "synthetic": [synthetic], "real+synthetic": [real, synthetic]}
    scores: dict[str, dict[str, list]] = {arm: {} for arm in ARMS}
    train_seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm in ARMS:
            start = time.perf_counter()
            net = train(pools[arm], args.train_steps, args.batch_size, seed)
            train_seconds[arm].append(round(time.perf_counter() - start, 1))
            for name, image, truth in tests:
                dice = tissue_dice(segment(net, image, truth > 0), truth)
                scores[arm].setdefault(name, []).append(dice)
            print(f"seed {seed} {arm}: trained in {train_seconds[arm][-1]} s; "
                  + ", ".join(f"{n} {np.mean([d['mean'] for d in v]):.3f}" for n, v in scores[arm].items()), file=sys.stderr, flush=True)
    table = {}
    for arm in ARMS:
        row: dict = {}
        for test in ("deformed_t1", "nibabel_anatomical"):
            names = [name for name in scores[arm] if name.startswith(test)]
            if not names:
                continue
            runs = [d for name in names for d in scores[arm][name]]
            row[test] = {k: round(float(np.mean([d[k] for d in runs])), 4) for k in (*TISSUES.values(), "mean")}
            # The spread between training seeds (each seed's mean over the test volumes).
            per_seed = [float(np.mean([scores[arm][name][seed]["mean"] for name in names])) for seed in range(args.seeds)]
            row[test]["mean_sd_over_seeds"] = round(float(np.std(per_seed, ddof=1)), 4) if len(per_seed) > 1 else None
        row["train_seconds"] = train_seconds[arm]
        table[arm] = row
    picture(volumes, (np.asarray(t1.array, np.float32), labels.array), common.result_path("synthetic_training_cases.png"))
    result = {
        "what": "tissue Dice of a small MONAI 2-D UNet trained on real, synthetic, or real + synthetic slices, on unseen real data",
        "machine": common.machine(),
        "model": "tiny random weights" if common.smoke() else "brain-t1-demo (trained)",
        "synthesis": synthesis,
        "training": {"network": "monai UNet 2-D, channels 8-64, 1 residual unit", "steps": args.train_steps,
                     "batch_size": args.batch_size, "seeds": args.seeds, "slices": {"real": len(real), "synthetic": len(synthetic)},
                     "augmentation": "MONAI flips, rotation 0.15 rad, scale 0.1, gamma 0.8-1.25 (every arm)"},
        "tests": {"deformed_t1": f"{args.deformations} warps of the sample T1 + bias + noise (exact truth)",
                  "nibabel_anatomical": "nibabel's anatomical.nii, brain by labels_from_scan, k-means tissues (weak truth)"},
        "table": table,
        "per_test": scores,
    }
    common.write_result(args.result_name, result)
    if args.result_name == "synthetic_training":
        common.update_doc("synthetic-training-table", readme_table(result))
    print({arm: {k: v["mean"] for k, v in row.items() if isinstance(v, dict)} for arm, row in table.items()})
    return result


def readme_table(result: dict) -> str:
    rows = ["| Trained on | Deformed real T1: CSF / GM / WM (mean) | nibabel's real T1, k-means truth: CSF / GM / WM (mean) |",
            "|---|---|---|"]
    for arm, row in result["table"].items():
        cells = []
        for test in ("deformed_t1", "nibabel_anatomical"):
            d = row.get(test)
            spread = f" ± {d['mean_sd_over_seeds']:.3f}" if d and d.get("mean_sd_over_seeds") is not None else ""
            cells.append(f"{d['CSF']:.3f} / {d['GM']:.3f} / {d['WM']:.3f} (**{d['mean']:.3f}**{spread})" if d else "-")
        rows.append(f"| {arm} | {cells[0]} | {cells[1]} |")
    gains = paired_gains(result)
    for test, title in (("deformed_t1", "deformed real T1"), ("nibabel_anatomical", "nibabel's T1")):
        if test in gains:
            rows.append("")
            rows.append(f"Gain over real-only training on {title}, same training seed (mean ± sd over seeds): " + "; ".join(
                f"{arm} {g[0]:+.3f} ± {g[1]:.3f}" for arm, g in gains[test].items()))
    s = result["synthesis"]
    t = result["training"]
    rows.append("")
    made = s["where"] if s["made_now"] else "made earlier by `napari-medgen batch` into --data and reused"
    how = (" / ".join(f"{m['sampler']} {m['steps']} steps" for m in s["made_with"]) if "made_with" in s
           else f"{s['sampler']} {s['steps']} steps asked (what ran was not recorded)")
    rows.append(f"{s['cases']} synthetic cases of brain-t1-demo ({s['augment']}, {how}, {made}); "
                f"{t['slices']['real']} real and {t['slices']['synthetic']} synthetic training slices; {t['steps']} steps of "
                f"batch {t['batch_size']}, {t['seeds']} training seed(s) (± is their standard deviation). "
                f"Machine: {common.machine_line(result['machine'])}"
                + "".join(f" ({words})" for words in [common.machine_record.disturbance(result["machine"])] if words) + ".")
    return "\n".join(rows)


def paired_gains(result: dict) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per test set and arm: the mean Dice gain over `real` of the run with the same training seed (mean, sd, seeds)."""
    gains: dict[str, dict[str, tuple[float, float, int]]] = {}
    scores = result["per_test"]
    for test in ("deformed_t1", "nibabel_anatomical"):
        names = [name for name in scores["real"] if name.startswith(test)]
        if not names:
            continue
        seeds = len(scores["real"][names[0]])
        per_seed = {arm: [float(np.mean([scores[arm][n][k]["mean"] for n in names])) for k in range(seeds)] for arm in scores}
        for arm in scores:
            if arm == "real":
                continue
            diffs = np.asarray(per_seed[arm]) - np.asarray(per_seed["real"])
            spread = float(np.std(diffs, ddof=1)) if seeds > 1 else float("nan")
            gains.setdefault(test, {})[arm] = (float(diffs.mean()), spread, seeds)
    return gains


if __name__ == "__main__":
    main()
