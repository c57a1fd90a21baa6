"""Tri-planar sampling: one 2-D network, trained on axial, coronal and sagittal slices (its card's
`conditioning.orientations`), denoises a whole volume with the planes in turn.

The whole noisy volume is kept on the model's isotropic grid. Each network call of the sampling loop cuts it
into the slices of one plane, runs the network on them (the plane given as the class embedding, the slice's
position along the axis it cuts as the position channels) and hands the loop one prediction for the whole
volume; the loop's step then moves every voxel, and the next call takes the next plane. So neighbouring
slices of every plane are denoised together in turn, and no plane keeps the stripes a stack of independent
slices has (TPDM alternates two perpendicular networks the same way; here one network, told the plane).

The samplers are untouched: to them this is a denoiser like any other (`Denoiser`), of a (Z, 1, Y, X) batch.
A call costs one pass of the network over the volume's voxels whatever the plane, as slice-wise sampling does.
Inpainting: slices of a plane that hold no region voxel are not run; their prediction is the one whose
clean estimate is the known image (which is what the final image keeps there anyway). Generation: slices that
hold none of the anatomy (only the card's background label, or the UNet's padding) are not run either; their
clean estimate is the background (-1), which is what the final image is there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..diffusion.denoiser import Denoiser, conditioning_stack
from ..diffusion.schedule import NoiseSchedule
from ..model.card import ModelCard
from ..model.loading import LoadedModel
from ..orientation import PLANE_AXES
from ..resample import grid_at_spacing
from ..volume import Volume

# The order the planes take the sampling loop's network calls: one plane a call, round and round.
PLANE_CYCLE: tuple[str, ...] = ("axial", "coronal", "sagittal")

# Fewer voxels than this along an axis (on the model's grid) and that axis' plane cannot be cut into slices
# the network knows (its UNet halves a slice three times): the run falls back to axial slices.
MIN_PLANE_VOXELS = 8


def planes_for(card: ModelCard, planes: str, model_grid_shape: tuple[int, ...]) -> tuple[str, str]:
    """The planes a run uses and why: `planes` as asked, unless the volume is too thin along an axis for
    tri-planar sampling (a single slice, a thin slab), which then goes axial, slice by slice."""
    if planes != "tri":
        return "axial", ""
    thin = [name for name, axis in PLANE_AXES.items() if model_grid_shape[axis] < MIN_PLANE_VOXELS]
    if thin:
        return "axial", (
            f"tri-planar sampling needs {MIN_PLANE_VOXELS} voxels along every axis at {card.spacing_mm[0]:g} mm; "
            f"this volume is thinner across the {', '.join(thin)} plane{'s' if len(thin) > 1 else ''}: axial slices"
        )
    return "tri", ""


def settle_planes(card: ModelCard, planes: str | None, crop: Volume) -> tuple[str, str]:
    """`planes_for` the canonical `crop` once on the model's isotropic grid."""
    if card.spatial_dims != 2 or planes != "tri":
        return "axial", ""
    shape = grid_at_spacing(crop, (card.spacing_mm[0],) * 3).shape
    return planes_for(card, planes, shape)


def tri_planar_positions(
    model_shape: tuple[int, ...], model_spacing: float, crop: Volume, offsets: tuple[int, ...], whole_shape: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Per plane, each model-grid slice's position along the axis it cuts (`axis_positions`), for a canonical
    `crop` that starts at `offsets` (z, y, x) of a canonical volume of `whole_shape`."""
    spacing_zyx = crop.spacing[::-1]
    return {
        plane: axis_positions(model_shape[axis], model_spacing, crop.shape[axis], spacing_zyx[axis], offsets[axis],
                              whole_shape[axis])
        for plane, axis in PLANE_AXES.items()
    }


def axis_positions(model_count: int, model_spacing: float, crop_count: int, crop_spacing: float,
                   offset: int, whole_count: int) -> np.ndarray:
    """Each model-grid slice's place along one axis of the whole volume, in [0, 1] (the network's slice-position
    condition), for a crop of `crop_count` voxels starting at voxel `offset` of a volume of `whole_count`,
    resampled to `model_count` voxels of `model_spacing` (centred as `resample.grid_at_spacing` centres them)."""
    shift = (model_spacing - crop_spacing) / 2 + (crop_count * crop_spacing - model_count * model_spacing) / 2
    index = offset + (shift + np.arange(model_count) * model_spacing) / crop_spacing
    return np.clip(index / max(whole_count - 1, 1), 0.0, 1.0).astype(np.float32)


class TriPlanarDenoiser:
    """The network on a whole (Z, 1, Y, X) volume, one plane per call (`PLANE_CYCLE`), in batches of slices.

    `positions` holds, per plane, each slice's position along the axis it cuts (`axis_positions`).
    Conditioning stacks are built the first time a plane is used and kept (one pass of each plane's
    channels over the volume, as slice-wise sampling holds one).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        labels: np.ndarray | None,
        fractions: np.ndarray | None,
        known: np.ndarray | None,
        region: np.ndarray | None,
        positions: dict[str, np.ndarray],
        guidance: float,
        guidance_rescale: float,
        batch_size: Callable[[int, int], int],
        average_from: int | None = None,
        first_call: int = 0,
        unpadded: tuple[int, ...] | None = None,
        anatomy: np.ndarray | None = None,
    ) -> None:
        self.loaded, self.card = loaded, loaded.card
        self.labels, self.fractions, self.known, self.region = labels, fractions, known, region
        self.positions = positions
        self.guidance, self.guidance_rescale = guidance, guidance_rescale
        self.batch_size = batch_size  # (height, width) of a plane's slice -> slices per network call
        self.schedule = NoiseSchedule(self.card.scheduler)
        self.calls = 0
        self.first_call = first_call  # the plane cycle starts at PLANE_CYCLE[first_call % 3]
        self.average_from = average_from  # from this call on: every plane, their estimates averaged
        self._batches: dict[str, list[tuple[slice, Denoiser]]] = {}
        self._known_t = None if known is None else torch.from_numpy(known).to(loaded.device)
        # (z, y, x) of the volume before the UNet's padding: a plane's slices within the padding are not run
        self.unpadded = unpadded
        # generation: the voxels that are not the card's background label; a plane's slices without one are not run
        self.anatomy = anatomy

    def plane_at(self, call: int) -> str:
        return PLANE_CYCLE[call % len(PLANE_CYCLE)]

    def __call__(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        call = self.calls
        self.calls += 1
        if self.average_from is not None and call >= self.average_from:
            # The network's output is linear in the clean estimate at fixed x_t and t: averaging outputs averages
            # the planes' estimates.
            return sum(self._plane_call(plane, x_t, t) for plane in PLANE_CYCLE) / len(PLANE_CYCLE)
        return self._plane_call(self.plane_at(self.first_call + call), x_t, t)

    def _plane_call(self, plane: str, x_t: torch.Tensor, t: int) -> torch.Tensor:
        axis = PLANE_AXES[plane]
        volume = x_t[:, 0]
        # where no slice is run: the output whose clean estimate is the known image, or the background (-1) of the
        # padding
        clean = self._known_t.to(volume.dtype) if self._known_t is not None else torch.full_like(volume, -1.0)
        out = self.schedule.output_for(clean, volume, t)
        across, out_across = volume.movedim(axis, 0), out.movedim(axis, 0)  # views: slices of the plane first
        for cut, denoise in self._plane_batches(plane):
            out_across[cut] = denoise(across[cut][:, None], t)[:, 0].to(out.dtype)
        return out[:, None]

    def _plane_batches(self, plane: str) -> list[tuple[slice, Denoiser]]:
        if plane not in self._batches:
            self._batches[plane] = list(self._build(plane))
        return self._batches[plane]

    def _build(self, plane: str):
        axis = PLANE_AXES[plane]
        count = self._shape()[axis]
        run = range(count if self.unpadded is None else self.unpadded[axis])  # the padding's slices are background
        needed = self.region if self.region is not None else self.anatomy
        if needed is not None:  # only slices that hold some of the region (inpainting) or of the anatomy
            holds = np.moveaxis(needed, axis, 0).reshape(count, -1).any(axis=1)
            run = [k for k in run if holds[k]]
        height, width = [s for a, s in enumerate(self._shape()) if a != axis]
        batch = max(1, int(self.batch_size(height, width)))
        plane_index = self.card.conditioning.orientations.index(plane)
        for start, stop in _runs(list(run), batch):
            cut = slice(start, stop)
            take = lambda a: None if a is None else np.ascontiguousarray(np.moveaxis(a, axis, 0)[cut])  # noqa: E731
            condition = take(self.labels)
            if self.fractions is not None:
                # (classes, z, y, x) -> (slices, classes, the plane's two axes)
                condition = np.ascontiguousarray(np.moveaxis(self.fractions, axis + 1, 0)[cut])
            known, region = take(self.known), take(self.region)
            inpaint_channels = self.card.conditioning.known_image
            stack = conditioning_stack(
                self.card,
                condition,
                known if inpaint_channels else None,
                region.astype(np.float32) if (inpaint_channels and region is not None) else None,
                self.positions[plane][cut],
                shape=(stop - start, height, width),
            )
            conditioning = torch.from_numpy(stack).to(self.loaded.device)
            yield cut, Denoiser(self.loaded, conditioning, self.guidance, plane_index, guidance_rescale=self.guidance_rescale)

    def _shape(self) -> tuple[int, ...]:
        for array in (self.labels, self.known, self.region):
            if array is not None:
                return tuple(array.shape)
        assert self.fractions is not None
        return tuple(self.fractions.shape[1:])


def _runs(indices: list[int], batch: int) -> list[tuple[int, int]]:
    """Contiguous runs of `indices` (sorted) of at most `batch` each, as (start, stop)."""
    runs: list[tuple[int, int]] = []
    for k in indices:
        if runs and runs[-1][1] == k and runs[-1][1] - runs[-1][0] < batch:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    return runs
