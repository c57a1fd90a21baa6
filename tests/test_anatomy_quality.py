"""Labels from a scan (issue 35): what a user notices of their quality. A deformed scan's labels follow the
deformation better than the atlas alone; demons recovers a known deformation; the mixture model corrects a shifted
atlas by the scan's intensities; a mismatched scan is flagged in one line; tissue fractions sum to 1 and agree with
the label map, on the command line too. Small grids (the atlas at 6 mm, phantoms): seconds each."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from anatomy_fixtures import FAST, dice, drive, model_with_atlas, moved, small_atlas  # noqa: F401 (fixtures)
from scipy import ndimage

from napari_medgen.engine.anatomy import AnatomyOptions, labels_from_scan, registration, segment_scan
from napari_medgen.engine.anatomy.fit_check import POOR_FIT, tissue_fit
from napari_medgen.engine.anatomy.mixture import fit_mixture
from napari_medgen.engine.resample import Grid
from napari_medgen.engine.volume import Volume


def smooth_field(reference: sitk.Image, std_mm: float, scale_mm: float, seed: int) -> sitk.Transform:
    """A smooth random displacement field on `reference`'s grid (std `std_mm` per axis, smoothed at `scale_mm`)."""
    rng = np.random.default_rng(seed)
    spacing = np.asarray(reference.GetSpacing())[::-1]
    axes = []
    for _ in range(3):
        noise = ndimage.gaussian_filter(rng.standard_normal(reference.GetSize()[::-1]), scale_mm / spacing, mode="wrap")
        axes.append(noise / noise.std() * std_mm)
    image = sitk.GetImageFromArray(np.stack(axes, axis=-1), isVector=True)
    image.CopyInformation(reference)
    return sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))


def tissue_dice(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([dice(found == k, truth == k) for k in (1, 2, 3)]))


def test_a_deformed_scan_gets_labels_closer_than_the_atlas_alone(model_with_atlas, small_atlas):
    """The 6 mm atlas under a smooth deformation (6 mm std at 24 mm scale): the labels from the scan match the
    deformed truth better than the undeformed atlas does, by at least 0.08 mean tissue Dice."""
    grid = Grid.of(small_atlas[0])
    transform = smooth_field(small_atlas[0].to_sitk(), 6.0, 24.0, seed=3)
    scan, truth = moved(small_atlas, transform, grid)
    _, labels = drive(labels_from_scan(scan, str(model_with_atlas), **FAST))
    atlas_alone = tissue_dice(small_atlas[1].array, truth.array)
    found = tissue_dice(labels.array, truth.array)
    print(f"atlas alone {atlas_alone:.3f}, from the scan {found:.3f}, fit {labels.metadata['anatomy']['fit']}")
    assert found > atlas_alone + 0.08, (atlas_alone, found)
    assert dice(labels.array > 0, truth.array > 0) > 0.9
    assert "warning" not in labels.metadata["anatomy"]


def test_demons_recovers_a_known_deformation(small_atlas):
    """Demons from the atlas image to the same image under a known smooth deformation (4 mm std per axis, 24 mm scale): the displacement
    inside the brain is recovered to within half its size on average."""
    atlas = sitk.Cast(small_atlas[0].to_sitk(), sitk.sitkFloat32)
    truth = smooth_field(atlas, 4.0, 24.0, seed=5)
    fixed = sitk.Resample(atlas, atlas, truth, sitk.sitkLinear, 0.0)
    options = AnatomyOptions(demons_iterations=60)
    _, found = drive(registration.demons(fixed, atlas, sitk.Transform(3, sitk.sitkIdentity), options, 0, 10, 10))
    brain = np.argwhere(small_atlas[1].array > 0)[::3]
    points = [fixed.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in brain]
    error = np.mean([np.linalg.norm(np.subtract(found.TransformPoint(p), truth.TransformPoint(p))) for p in points])
    size = np.mean([np.linalg.norm(np.subtract(truth.TransformPoint(p), p)) for p in points])
    print(f"displacement {size:.2f} mm, error {error:.2f} mm")
    assert error < 0.5 * size, (size, error)


def test_the_mixture_model_corrects_a_shifted_atlas():
    """A phantom of three nested tissues (dark, mid, bright) whose atlas prior is shifted by 3 voxels: the mixture
    model's labels follow the intensities, far closer to the truth than the shifted prior."""
    shape = (40, 40, 40)
    z, y, x = np.indices(shape) - 20.0
    radius = np.sqrt(x**2 + y**2 + z**2)
    truth = np.select([radius < 8, radius < 12, radius < 16], [3, 2, 1], 0)
    rng = np.random.default_rng(0)
    intensity = np.choose(truth, [5.0, 30.0, 60.0, 90.0]) * (1 + 0.05 * rng.standard_normal(shape)) + 1
    shifted = np.roll(truth, 3, axis=2)
    priors = np.stack([(shifted == k).astype(np.float32) for k in range(4)])
    priors[1:] = 0.9 * priors[1:] + 0.1 / 3 * (shifted > 0)  # the atlas's floor inside its brain
    priors = ndimage.gaussian_filter(priors, (0, 1.5, 1.5, 1.5))
    run = fit_mixture(intensity, priors, priors[0] < 1 - 1e-6, (1.0, 1.0, 1.0), 10, 30.0, 0.0, 0.5)
    _, fit = drive(run)
    found = np.argmax(fit.posteriors, axis=0)
    before, after = tissue_dice(shifted, truth), tissue_dice(found, truth)
    assert after > 0.9 and after > before + 0.15, (before, after)


def test_a_mismatched_scan_is_flagged_in_one_line(model_with_atlas, small_atlas):
    """The scan upside down under a correct-looking header: the run ends, the labels are still returned, and the
    last event and the metadata say in one line that the registration looks poor."""
    scan = small_atlas[0].with_array(np.ascontiguousarray(small_atlas[0].array[::-1]), metadata={})
    events, labels = drive(labels_from_scan(scan, str(model_with_atlas), **FAST))
    fit = labels.metadata["anatomy"]["fit"]
    print(fit)
    notice = events[-1].notice
    assert "registration looks poor" in notice and "\n" not in notice
    assert labels.metadata["anatomy"]["warning"] == notice and labels.shape == scan.shape


def test_tissue_fit_falls_when_the_labels_lie_across_the_tissues(small_atlas):
    t1, labels = small_atlas
    own = tissue_fit(t1.array, labels.array)
    assert own > 0.5 and tissue_fit(t1.array, np.roll(labels.array, 2, axis=2)) < POOR_FIT * own


def test_fractions_sum_to_one_and_their_argmax_is_the_label_map(model_with_atlas, small_atlas):
    scan, _ = moved(small_atlas, sitk.Transform(3, sitk.sitkIdentity), Grid.of(small_atlas[0]))
    _, result = drive(segment_scan(scan, str(model_with_atlas), fractions=True, **FAST))
    shares = np.stack([f.array for f in result.fractions])
    assert len(result.fractions) == 3 and all(f.same_grid(scan) for f in result.fractions)
    background = 1 - shares.sum(axis=0, keepdims=True)  # with it, every voxel's shares sum to 1
    assert shares.min() >= 0 and background.min() >= -1e-5 and np.all(background[:, result.labels.array == 0] > 0)
    everything = np.concatenate([background, shares])
    assert np.array_equal(np.argmax(everything, axis=0), result.labels.array)
    assert 0 < np.mean((shares > 0.01) & (shares < 0.99)) < 0.5  # partial volume at borders, not everywhere


def test_segment_writes_fractions_that_generate_takes(model_with_atlas, small_atlas, tmp_path):
    import json

    from napari_medgen.cli import main
    from napari_medgen.engine.io import read_volume, write_volume

    card = json.loads((model_with_atlas / "model.json").read_text())
    card.setdefault("conditioning", {})["tissue_fractions"] = True  # a model trained on fractions takes them
    (model_with_atlas / "model.json").write_text(json.dumps(card))
    scan, _ = moved(small_atlas, sitk.Transform(3, sitk.sitkIdentity), Grid.of(small_atlas[0]))
    write_volume(Volume(scan.array, scan.spacing, scan.origin, scan.direction), tmp_path / "scan.nii.gz")
    out = tmp_path / "labels.nii.gz"
    args = ["segment", "--image", str(tmp_path / "scan.nii.gz"), "--out", str(out), "--model", str(model_with_atlas)]
    assert main([*args, "--fractions-out", str(tmp_path / "case")]) == 0
    maps = [tmp_path / f"case_fraction_{k}.nii.gz" for k in (1, 2, 3)]
    assert all(path.is_file() for path in maps)
    assert read_volume(maps[0]).same_grid(read_volume(out))
    code = main(["generate", "--labels", str(out), "--fractions", *map(str, maps), "--out", str(tmp_path / "g.nii.gz"),
                 "--model", str(model_with_atlas), "--steps", "2"])
    assert code == 0
