"""Regenerate the sample brain in resources/sample/ from the ICBM152 2009 template that nilearn ships.

    pip install nilearn && python scripts/make_sample_brain.py

Produces, at 2 mm isotropic in the template's own orientation (RAS-stored NIfTI, MNI space):
- ``mni152_t1_2mm.nii.gz``: the T1-weighted template, brain only, intensities rescaled to 0-1000 (int16);
- ``mni152_tissue_labels_2mm.nii.gz``: 0 background, 1 CSF, 2 grey matter, 3 white matter (uint8);
- ``mni152_tissue_labels_2mm_fraction_<k>.nii.gz``: the share of each voxel that is class k (1 CSF, 2 grey
  matter, 3 white matter; float32, 0 outside the brain), the partial volume whose largest share is the label.

Tissue labels are the most probable class per voxel inside the brain mask, from the template's grey- and
white-matter probability maps, with CSF taking the rest (the template ships no CSF map). The brain mask is
the T1 above 20 % of its maximum, as nilearn's ``load_mni152_brain_mask`` defines it. Only nilearn's
files are used; the plugin itself never imports nilearn.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_medgen.engine.io import write_volume  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402

SPACING_MM = 2.0
OUT = REPO / "resources" / "sample"
TISSUES = {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}


def template_dir() -> Path:
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


def resample_to_spacing(image: sitk.Image, spacing_mm: float, shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> sitk.Image:
    """Linear resampling onto a grid of `spacing_mm` covering the same physical extent, moved by `shift_mm`
    along the image's axes (sub-voxel shifts give other, equally true, partial-volume samplings)."""
    size = [int(round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    # Keep the grid centred on the original extent.
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
    shift = (extent - np.array(size) * spacing_mm) / 2 + (spacing_mm - np.array(image.GetSpacing())) / 2 + np.asarray(shift_mm)
    origin = np.array(image.GetOrigin()) + np.array(image.GetDirection()).reshape(3, 3) @ shift
    return sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32),
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(origin),
        (spacing_mm,) * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def _template_maps(spacing_mm: float, shift_mm: tuple[float, float, float]):
    """The template's T1 image on the grid, its array, the brain mask and the CSF / GM / WM fractions there."""
    data = template_dir()
    read = lambda name: resample_to_spacing(  # noqa: E731
        sitk.ReadImage(str(data / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")), spacing_mm, shift_mm
    )
    t1_image, gm_image, wm_image = read("t1"), read("gm"), read("wm")
    t1 = sitk.GetArrayFromImage(t1_image)
    gm = sitk.GetArrayFromImage(gm_image) / 255.0
    wm = sitk.GetArrayFromImage(wm_image) / 255.0
    brain = t1 > 0.2 * t1.max()
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    fractions = np.stack([csf, gm, wm])
    fractions = np.where(brain, fractions / np.maximum(fractions.sum(axis=0), 1e-6), 0.0).astype(np.float32)
    return t1_image, t1, brain, fractions


def template_pair(
    spacing_mm: float = SPACING_MM, shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> tuple[Volume, Volume, list[Volume]]:
    """The template's T1 (brain only, 0-1000), its tissue labels, and each tissue's fraction of every voxel (CSF,
    grey matter, white matter; 0 outside the brain: the partial volume the labels are the argmax of), on a
    `spacing_mm` grid moved by `shift_mm`."""
    t1_image, t1, brain, fractions = _template_maps(spacing_mm, shift_mm)
    labels = np.where(brain, np.argmax(fractions, axis=0) + 1, 0).astype(np.uint8)
    t1_scaled = np.round(np.clip(t1, 0, None) / t1.max() * 1000).astype(np.int16)
    t1_scaled[~brain] = 0

    geometry = dict(spacing=t1_image.GetSpacing(), origin=t1_image.GetOrigin(), direction=t1_image.GetDirection())
    source = f"ICBM152 2009a symmetric template (nilearn copy), resampled to {spacing_mm:g} mm; see LICENSE-ICBM152.txt"
    image = Volume(t1_scaled, **geometry, metadata={"modality": "MR", "sequence": "T1w", "source": source})
    label_map = Volume(
        labels, **geometry,
        metadata={"label_map": True, "label_names": {str(k): v for k, v in TISSUES.items()}, "source": source},
    )
    shares = [Volume(fraction, **geometry, metadata={"source": source, "tissue": TISSUES[k]})
              for k, fraction in enumerate(fractions, start=1)]
    return image, label_map, shares


def main() -> None:
    image, label_map, fractions = template_pair()
    OUT.mkdir(parents=True, exist_ok=True)
    write_volume(image, OUT / "mni152_t1_2mm.nii.gz")
    write_volume(label_map, OUT / "mni152_tissue_labels_2mm.nii.gz")
    # Beside the label map, as every label map's fraction maps are named (training.data.fraction_paths).
    for k, fraction in enumerate(fractions, start=1):
        write_volume(fraction, OUT / f"mni152_tissue_labels_2mm_fraction_{k}.nii.gz")
    counts = {TISSUES[k]: int((label_map.array == k).sum()) for k in TISSUES}
    print(f"wrote {OUT}: shape {label_map.shape}, voxels per tissue {counts}")


if __name__ == "__main__":
    main()
