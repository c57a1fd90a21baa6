"""The two tasks a run can do, each as a small object: its problem on the model grid, the input crop it
covers, and how a result on that crop becomes the output volume the user gets (the card's background set
exactly, the inpainted region blended in at its seam). Pixel and latent runs build their tasks here alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.card import ModelCard
from ..volume import Volume
from .anatomy_edges import AnatomyOnScanGrid, anatomy_on_scan_grid
from .fine_detail import fine_detail
from .model_grid import InpaintCrop, ModelGridProblem, as_2d, back_to_source, feather_weights
from .options import SamplingOptions


@dataclass
class SynthesisTask:
    """One run's work. `output_from_crop` turns intensities on the input crop into the output volume."""

    name: str  # "generate" or "inpaint", as recorded in the provenance
    problem: ModelGridProblem
    input_crop: Volume  # canonical orientation, the input's own spacing
    inputs_sha256: dict[str, str]

    def output_from_crop(self, on_crop: Volume, variant: int = 0) -> Volume:
        raise NotImplementedError

    def provenance_extra(self) -> dict:
        """What the task itself settled, for the results' provenance."""
        return {}


@dataclass
class GenerateTask(SynthesisTask):
    """A new image for a label map: the whole volume back in the label map's geometry, or a slice range
    as canonical slices (what a front end shows for the current slice)."""

    label_map: Volume
    whole_volume: bool
    # (label, intensity): where the label map says `label`, the output is exactly `intensity` (the card's
    # background), not the network's near-background values that show as a grey box around the anatomy.
    background: tuple[int, float] | None = None
    # The canonical label map (or slab of it) the output covers, and the anatomy's box in it that the network
    # ran on (`model_grid.anatomy_box`; None: all of it): outside the box the output is the background.
    slab: Volume | None = None
    box: tuple[slice, ...] | None = None

    @classmethod
    def for_label_map(
        cls, card: ModelCard, problem: ModelGridProblem, input_crop: Volume, label_map: Volume, inputs: dict[str, str],
        whole_volume: bool, slab: Volume | None = None, box: tuple[slice, ...] | None = None,
    ) -> GenerateTask:
        """The task of generating for `label_map` through `input_crop` (its canonical form, a slab of it, or the
        box of `slab` around its anatomy), with the card's background value set exactly where the label map has
        the card's background label."""
        norm = card.normalization
        background = None if norm.background_label is None else (norm.background_label, float(norm.background))
        return cls(name="generate", problem=problem, input_crop=input_crop, inputs_sha256=inputs, label_map=label_map,
                   whole_volume=whole_volume, background=background, slab=slab, box=box)

    def output_from_crop(self, on_crop: Volume, variant: int = 0) -> Volume:
        labels = self.input_crop
        if self.box is not None and self.slab is not None and self.background is not None:
            whole = np.full(self.slab.shape, np.float32(self.background[1]), np.float32)
            whole[self.box] = on_crop.array
            on_crop, labels = self.slab.with_array(whole, metadata={}), self.slab
        if self.background is not None:
            label, value = self.background
            on_crop = on_crop.with_array(np.where(labels.array == label, np.float32(value), on_crop.array))
        if self.whole_volume:
            return back_to_source(on_crop, self.label_map)
        return on_crop if self.label_map.ndim == 3 else as_2d(on_crop)

    def provenance_extra(self) -> dict:
        # canonical (z, y, x) [start, stop) of the label map (or slab) that the network ran on; beyond: background
        return {} if self.box is None else {"anatomy_box": [[b.start, b.stop] for b in self.box]}


@dataclass
class InpaintTask(SynthesisTask):
    """The image with its region regenerated: the crop blended into the canonical image over the seam
    weight, back to the image's geometry and voxel type; every voxel outside the region the input's own."""

    image: Volume
    region: Volume  # on the image's grid, 0/1
    canonical_image: Volume  # float32
    box: tuple[slice, ...]  # the input crop within the canonical image
    seam_weight: np.ndarray  # on the crop: 1 deep inside the region, 0 outside
    # The posterior mean's blend with the known image's interpolation near the border (0: none), and the crop's
    # in-plane spacing (y, x) it is measured in.
    border_interpolation_mm: float = 0.0
    spacing_yx: tuple[float, float] = (1.0, 1.0)
    background: np.ndarray | None = None  # on the crop: voxels outside the anatomy (None: not known)
    # Fine detail at the scan's resolution (`fine_detail`): the model grid's spacing (z, y, x) where the scan is
    # finer and the fill takes it, None otherwise; seeded by the run's seed and the variant.
    detail_spacing_zyx: tuple[float, ...] | None = None
    seed: int = 0
    detail_added: bool = False
    # The label map's tissues at the scan's resolution (`anatomy_edges`): the network's fill takes their edges and
    # local levels; None: the scan is no finer than the model grid, no label map was given, or the fill takes no
    # detail.
    anatomy_on_scan: AnatomyOnScanGrid | None = None
    # What guided the fill: "given" (a label map), "continued" (the tissue around the region continued into it,
    # `continued_anatomy`), or "none".
    anatomy: str = "none"

    @classmethod
    def on_crop(
        cls, card: ModelCard, problem: ModelGridProblem, image: Volume, region: Volume, crop: InpaintCrop,
        inputs: dict[str, str], options: SamplingOptions, anatomy: str = "none",
    ) -> InpaintTask:
        """The task of inpainting `region` of `image` through `crop`, with the estimate `options.inpaint_estimate`
        already settled."""
        detail = options.fine_detail_for(options.inpaint_estimate)
        on_scan = None
        # Only labels the network was conditioned on say where its fill's edges are; a continued anatomy is a guess
        # and is not sharpened (`anatomy_edges`).
        if anatomy == "given" and card.takes_label_map and detail:
            on_scan = anatomy_on_scan_grid(crop.labels, np.asarray(crop.image.array, np.float32),
                                           crop.region.array > 0, problem, card.normalization.background_label)
        reach = options.border_interpolation_mm if options.inpaint_estimate == "mean" else 0.0
        if on_scan is not None:
            # The interpolation helps where the network's coarse voxels straddle the border; a fill brought to the
            # scan's grid with its anatomy needs it only as far in scan voxels as it was in model voxels (1 mm
            # template, 20 mm balls, anatomy given: 2 mm -> 1 mm took a fill over a ventricle from level +0.031 and
            # texture 0.69x to +0.024 and 0.80x, PSNR 23.3 -> 24.3 dB).
            reach *= min(1.0, float(crop.image.spacing[0]) / float(problem.grid.spacing[0]))
        return cls(
            name="inpaint",
            problem=problem,
            input_crop=crop.image,
            inputs_sha256=inputs,
            image=image,
            region=region,
            canonical_image=crop.canonical_image.with_array(np.asarray(crop.canonical_image.array, np.float32), metadata={}),
            box=crop.box,
            seam_weight=feather_weights(crop.region.array > 0, crop.image.spacing, options.feather_mm),
            border_interpolation_mm=reach,
            spacing_yx=(float(crop.image.spacing[1]), float(crop.image.spacing[0])),
            background=outside_anatomy(card, crop.image, crop.labels),
            detail_spacing_zyx=tuple(problem.grid.spacing[::-1]) if detail else None,
            seed=options.seed,
            anatomy=anatomy,
            anatomy_on_scan=on_scan,
        )

    def output_from_crop(self, on_crop: Volume, variant: int = 0) -> Volume:
        blended = self.canonical_image.array.copy()
        fill = on_crop.array
        if self.anatomy_on_scan is not None:
            fill = self.anatomy_on_scan.applied(fill, self.seam_weight > 0)
        filled = matched_to_border(fill, blended[self.box], self.seam_weight > 0)
        if self.border_interpolation_mm > 0:
            filled = interpolated_near_border(filled, blended[self.box], self.seam_weight > 0, self.spacing_yx,
                                              self.border_interpolation_mm, self.background)
        if self.detail_spacing_zyx is not None:
            region = self.seam_weight > 0
            detail = fine_detail(blended[self.box], region, filled, tuple(self.input_crop.spacing[::-1]),
                                 self.detail_spacing_zyx, self.seed + variant, self.background,
                                 None if self.anatomy_on_scan is None else self.anatomy_on_scan.labels)
            if detail is not None:
                filled = filled + detail
                self.detail_added = True
        blended[self.box] = self.seam_weight * filled + (1.0 - self.seam_weight) * blended[self.box]
        generated = back_to_source(self.canonical_image.with_array(blended, metadata={}), self.image).array
        if not np.issubdtype(self.image.array.dtype, np.floating):
            info = np.iinfo(self.image.array.dtype)
            generated = np.clip(np.rint(generated), info.min, info.max)
        kept = np.where(self.region.array > 0, generated, self.image.array).astype(self.image.array.dtype)
        return self.image.with_array(kept, metadata={})

    def provenance_extra(self) -> dict:
        return {"fine_detail": self.detail_added, "anatomy": self.anatomy, "anatomy_at_scan_resolution": self.anatomy_on_scan is not None}


def outside_anatomy(card: ModelCard, image_crop: Volume, labels_crop: Volume | None) -> np.ndarray | None:
    """The crop's voxels outside the anatomy: the label map's background label where a label map is given,
    else an MR image's voxels at or below the card's background value (a skull-stripped scan's zeros)."""
    norm = card.normalization
    if labels_crop is not None and norm.background_label is not None:
        return np.asarray(labels_crop.array) == norm.background_label
    if norm.kind == "mri_percentile":
        return np.asarray(image_crop.array) <= norm.background
    return None


def matched_to_border(
    generated: np.ndarray, known: np.ndarray, region: np.ndarray, ring: int = 2, reach: float = 4.0
) -> np.ndarray:
    """`generated` with a smooth correction inside `region` that makes it meet `known` on the region's border.

    The network reproduces the known image around the region only approximately (resampled to its grid, in
    its intensity scale); the difference on a thin ring outside the region, carried inwards by biharmonic
    interpolation (slice by slice, as the model works), kept within the ring's own range and fading over
    `reach` voxels from the border (deep inside a large region the network's own image is better than any
    extrapolation of the ring's detail), removes the step at the seam and the offset it implies
    inside (seamless pasting). The anatomy the network put inside is kept: only a smooth field is added."""
    from scipy.ndimage import binary_dilation, distance_transform_edt
    from skimage.restoration import inpaint_biharmonic

    corrected = generated.astype(np.float32, copy=True)
    for z in np.flatnonzero(region.reshape(region.shape[0], -1).any(1)):
        inside = region[z]
        around = binary_dilation(inside, iterations=ring) & ~inside
        if not around.any():  # no known voxel in this slice to match
            continue
        residual = (known[z] - generated[z]).astype(np.float64)
        low, high = np.percentile(residual[around], [5, 95])
        field = np.clip(inpaint_biharmonic(np.where(inside, 0.0, residual), inside), low, high)
        fade = np.exp(-(distance_transform_edt(inside) - 1.0) / reach)
        corrected[z] += np.where(inside, field * fade, 0.0).astype(np.float32)
    return corrected


def interpolated_near_border(
    estimate: np.ndarray,
    known: np.ndarray,
    region: np.ndarray,
    spacing_yx: tuple[float, float],
    reach_mm: float,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """`estimate` inside `region` blended, slice by slice, with the biharmonic interpolation of the known
    voxels around it: the interpolation's weight is 1 on the region's voxels nearest the known tissue and
    falls as exp(-depth / `reach_mm`) inwards. Only voxels outside the region and outside `background` (air
    beyond the anatomy, which says nothing of the tissue next to it) feed the interpolation; whatever `known`
    holds inside the region is never used.

    Why: next to known tissue a smooth interpolation of it is the better guess of a missing voxel, while a few
    millimetres in, the network's anatomy beats any interpolation (benchmarks/unseen_inpainting.py: the
    posterior mean alone loses to biharmonic interpolation on 10 mm regions; blended like this it wins at
    every size on three real brains, two never seen in training)."""
    from scipy.ndimage import distance_transform_edt
    from skimage.restoration import inpaint_biharmonic

    out = estimate.astype(np.float32, copy=True)
    # Each slice's work is a window around the region: the interpolation's weight has fallen to nothing a few reaches
    # in, and the known voxels that matter are those near it (a whole 1 mm slice's background made the solve slow).
    margin = [int(np.ceil(max(4.0 * reach_mm, 8.0) / s)) for s in spacing_yx]
    for z in np.flatnonzero(region.reshape(region.shape[0], -1).any(1)):
        ys, xs = np.nonzero(region[z])
        window = (slice(max(0, ys.min() - margin[0]), ys.max() + 1 + margin[0]),
                  slice(max(0, xs.min() - margin[1]), xs.max() + 1 + margin[1]))
        inside = region[z][window]
        unknown = inside if background is None else inside | background[z][window]
        if unknown.all():  # no known tissue near the region in this slice to interpolate from
            continue
        interpolated = inpaint_biharmonic(np.where(unknown, 0.0, known[z][window]).astype(np.float64), unknown)
        depth = distance_transform_edt(unknown, sampling=spacing_yx)
        weight = np.exp(-(depth - depth[inside].min()) / reach_mm)
        part = estimate[z][window]
        out[z][window] = np.where(inside, weight * interpolated + (1.0 - weight) * part, part)
    return out
