"""A latent model's networks on a run's arrays: the networks' array layout (MAISI: RAS (x, y, z)), their
conditioning (ControlNet label channels, body regions, spacing, modality), the denoiser the samplers call,
and tiled encoding and decoding (MONAI's sliding-window inference, so memory stays bounded) with a cheap
preview. `latent` runs the diffusion with these.
"""

from __future__ import annotations

import numpy as np
import torch

from ..diffusion.denoiser import one_hot, prepare_for_inference
from ..model.card import ModelCard
from ..model.loading import LoadedModel
from ..model.networks import monai_module
from .conditions import modality_code, resolved_attributes
from .model_grid import ModelGridProblem
from .options import SamplingOptions

# Latent voxels (per axis, at most) of the tile decoded for a preview; the rest of the preview is a linear map
# of the latent fitted on that tile, so a preview costs a small decode, not a whole one.
PREVIEW_TILE = 8


# -- layouts ----------------------------------------------------------------------------------------------
# Which of (x, y) run against the canonical LPS order in a layout: `ras_xyz` (MAISI, MONAI's Orientationd("RAS"))
# x towards the right and y towards the front; `las_xyz` (the brain LDM) y only. z runs inferior -> superior in all.
_FLIPS = {"ras_xyz": (True, True), "las_xyz": (False, True)}


def _layout_index(layout: str, slices: bool) -> tuple[tuple[int, ...], tuple[slice, ...]]:
    flip_x, flip_y = _FLIPS[layout]
    axes = (0, 2, 1) if slices else (2, 1, 0)  # (z, x, y) per slice, or (x, y, z)
    x_axis, y_axis = (1, 2) if slices else (0, 1)
    index = [slice(None)] * 3
    if flip_x:
        index[x_axis] = slice(None, None, -1)
    if flip_y:
        index[y_axis] = slice(None, None, -1)
    return axes, tuple(index)


def to_layout(array: np.ndarray, layout: str, slices: bool = False) -> np.ndarray:
    """A canonical (z, y, x) LPS array -> the networks' layout: (x, y, z) arrays (``ras_xyz``: x left->right,
    y posterior->anterior, z inferior->superior, as MAISI's RAS-oriented training arrays; ``las_xyz``: x
    right->left), or with `slices` (a 2-D model) (z, x, y): each axial slice in that in-plane order."""
    if layout == "zyx":
        return np.ascontiguousarray(array)
    axes, index = _layout_index(layout, slices)
    return np.ascontiguousarray(np.transpose(array, axes)[index])


def from_layout(array: np.ndarray, layout: str, slices: bool = False) -> np.ndarray:
    """The inverse of `to_layout`."""
    if layout == "zyx":
        return np.ascontiguousarray(array)
    axes, index = _layout_index(layout, slices)
    return np.ascontiguousarray(np.transpose(array[index], axes))


def spacing_in_layout(spacing_xyz: tuple[float, ...], layout: str) -> list[float]:
    return [float(s) for s in (spacing_xyz if layout == "ras_xyz" else spacing_xyz[::-1])]


def label_channels(card: ModelCard, labels: np.ndarray) -> np.ndarray:
    """(C, ...) float32 ControlNet input: the label indices' bit-planes (MAISI's binarisation) or one-hot."""
    assert card.latent is not None
    if card.latent.label_encoding == "bits":
        bits = np.arange(card.latent.label_bits)
        return ((labels.astype(np.int64)[None] >> bits.reshape((-1,) + (1,) * labels.ndim)) & 1).astype(np.float32)
    return one_hot(labels[None], card.num_label_channels)[0]


def body_region_vectors(card: ModelCard, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MAISI's top and bottom body-region one-hots: the first and last region any of whose labels is present."""
    assert card.latent is not None and card.latent.body_regions is not None
    present = set(np.unique(labels).tolist())
    regions = card.latent.body_regions
    hits = [i for i, indices in enumerate(regions) if present & set(indices)]
    if not hits:
        hits = [0]
    eye = np.eye(len(regions), dtype=np.float32)
    return eye[min(hits)], eye[max(hits)]


# -- the networks -----------------------------------------------------------------------------------------
class LatentDenoiser:
    """The UNet (with its ControlNet) on a latent, with the run's fixed conditioning."""

    def __init__(self, loaded: LoadedModel, problem: ModelGridProblem, options: SamplingOptions | None = None) -> None:
        prepare_for_inference(loaded)
        match_precision(loaded)
        card = loaded.card
        latent = card.latent
        assert latent is not None
        self.network = loaded.networks["network"]
        self.controlnet = loaded.networks.get("controlnet")
        self.dtype, self.device = loaded.dtype, loaded.device
        layout = latent.array_layout
        options = options or SamplingOptions()
        self.kwargs: dict[str, torch.Tensor] = {}
        self.control_kwargs: dict[str, torch.Tensor] = {}
        code_value = modality_code(card, options.modality)
        # Classifier-free guidance on the modality (MAISI's diff_model_infer): class label 0 is the unconditional.
        self.guidance = float(options.guidance or 1.0) if latent.modality_guidance else 1.0
        self.unconditional = None
        if code_value is not None:
            code = torch.tensor([code_value], dtype=torch.long, device=self.device)
            self.kwargs["class_labels"] = code
            self.control_kwargs["class_labels"] = code
            if self.guidance != 1.0:
                self.unconditional = torch.zeros_like(code)
        self.context = None
        self.context_channels = card.conditioning.context_channels
        if card.conditioning.context:
            values = resolved_attributes(card, options.attributes)
            vector = [values[a.name] for a in card.conditioning.context]
            self.context = torch.tensor([[vector]], dtype=self.dtype, device=self.device)  # (1, 1, attributes)
        if latent.spacing_input:
            spacing = spacing_in_layout(problem.grid.spacing, layout)
            self.kwargs["spacing_tensor"] = torch.tensor([spacing], dtype=self.dtype, device=self.device) * latent.spacing_scale
        labels = to_layout(problem.labels, layout) if problem.labels is not None and card.spatial_dims == 3 else None
        if latent.body_regions is not None:
            top, bottom = body_region_vectors(card, labels if labels is not None else np.zeros(1, np.int64))
            self.kwargs["top_region_index_tensor"] = torch.from_numpy(top[None] * latent.body_region_scale).to(self.device, self.dtype)
            self.kwargs["bottom_region_index_tensor"] = torch.from_numpy(bottom[None] * latent.body_region_scale).to(self.device, self.dtype)
        self.condition = None
        if self.controlnet is not None:
            if labels is None:
                labels = to_layout(np.zeros(problem.grid.shape, np.int64), layout)
            self.condition = torch.from_numpy(label_channels(card, labels)[None]).to(self.device, self.dtype)
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        self.calls += 1
        x = x_t.to(self.dtype)
        batch = x.shape[0]  # a 2-D model's slices go through as one batch
        if isinstance(t, torch.Tensor):  # rectified flow: MAISI's torch.Tensor((t,)), a float timestep
            timesteps = torch.Tensor((t,)).to(self.device).expand(batch)
        else:
            timesteps = torch.full((batch,), int(t), dtype=torch.long, device=self.device)
        extra = {}
        if self.controlnet is not None:
            down, mid = self.controlnet(x=x, timesteps=timesteps, controlnet_cond=self.condition, **self.control_kwargs)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        kwargs = dict(self.kwargs)
        if self.context is not None:
            kwargs["context"] = self.context.expand(batch, -1, -1)
            if self.context_channels:  # the brain LDM's sampler: the vector broadcast as channels after the latent
                planes = self.context[:, 0].reshape((1, -1) + (1,) * (x.ndim - 2)).expand((batch, -1) + tuple(x.shape[2:]))
                x = torch.cat([x, planes], dim=1)
        output = self.network(x, timesteps, **kwargs, **extra).float()
        if self.unconditional is None:
            return output
        self.calls += 1
        kwargs["class_labels"] = self.unconditional
        unconditional = self.network(x, timesteps, **kwargs, **extra).float()
        return unconditional + self.guidance * (output - unconditional)


def match_precision(loaded: LoadedModel) -> None:
    """MAISI's group norms compute in float32 and hand back float16 only when told (`norm_float16`, which the
    importer turns off for the CPU): on a model loaded in fp16 they must, or the next fp16 convolution refuses
    their float32 output."""
    if loaded.extra.get("norm_precision") == str(loaded.dtype):
        return
    for network in loaded.networks.values():
        for module in network.modules():
            if hasattr(module, "norm_float16"):
                module.norm_float16 = loaded.dtype == torch.float16
    loaded.extra["norm_precision"] = str(loaded.dtype)


def decode(loaded: LoadedModel, z: torch.Tensor, tile: list[int] | None = None) -> torch.Tensor:
    """Latent -> image (the autoencoder's range), in overlapping tiles of `tile` latent voxels (the card's
    decode_tile) blended with Gaussian weights; the output accumulates on the CPU."""
    latent = loaded.card.latent
    assert latent is not None
    autoencoder = loaded.networks["autoencoder"]
    scale = float(latent.scale_factor)
    match_precision(loaded)
    tile = [min(int(t), int(s)) for t, s in zip(tile or latent.decode_tile, z.shape[2:], strict=True)]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return autoencoder.decode_stage_2_outputs(window.to(loaded.dtype) / scale).float()

    z = z.to(loaded.device)
    if all(s <= t for s, t in zip(z.shape[2:], tile, strict=True)):
        return predictor(z).cpu()
    inference = monai_module("monai.inferers").sliding_window_inference
    return inference(
        z, roi_size=tile, sw_batch_size=1, predictor=predictor, overlap=latent.decode_overlap, mode="gaussian",
        sw_device=loaded.device, device=torch.device("cpu"),
    )


def encode(loaded: LoadedModel, image: torch.Tensor) -> torch.Tensor:
    """Image (the autoencoder's range) -> latent (the encoder's mean x scale factor), in tiles."""
    latent = loaded.card.latent
    assert latent is not None
    autoencoder = loaded.networks["autoencoder"]
    scale = float(latent.scale_factor)
    match_precision(loaded)
    tile = [min(int(t) * latent.compression, int(s)) for t, s in zip(latent.decode_tile, image.shape[2:], strict=True)]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        z_mu, _ = autoencoder.encode(window.to(loaded.dtype))
        return (z_mu * scale).float()

    image = image.to(loaded.device)
    if all(s <= t for s, t in zip(image.shape[2:], tile, strict=True)):
        return predictor(image)
    inference = monai_module("monai.inferers").sliding_window_inference
    return inference(
        image, roi_size=tile, sw_batch_size=1, predictor=predictor, overlap=latent.decode_overlap, mode="gaussian"
    ).to(loaded.device)


def preview_image(loaded: LoadedModel, z: torch.Tensor) -> np.ndarray:
    """A low-cost decode of latent `z` (layout order, image resolution, the autoencoder's range): a central
    tile of at most PREVIEW_TILE latent voxels per axis is decoded, a linear map latent -> intensity is fitted on
    it (least squares against the tile's decode averaged over each latent voxel), applied everywhere and
    upsampled."""
    latent = loaded.card.latent
    assert latent is not None
    f = latent.compression
    spatial = z.shape[2:]
    box = tuple(slice(max(0, (s - PREVIEW_TILE) // 2), max(0, (s - PREVIEW_TILE) // 2) + min(s, PREVIEW_TILE)) for s in spatial)
    tile = z[(slice(None), slice(None)) + box]
    decoded = decode(loaded, tile, tile=list(tile.shape[2:]))
    pooled = torch.nn.functional.avg_pool3d(decoded, kernel_size=f).double()[0, 0].reshape(-1)
    features = torch.cat([tile[0].cpu().double().reshape(tile.shape[1], -1), torch.ones(1, pooled.numel(), dtype=torch.float64)])
    coefficients = torch.linalg.lstsq(features.T, pooled[:, None]).solution[:, 0]
    weights, bias = coefficients[:-1], coefficients[-1]
    coarse = torch.einsum("c...,c->...", z[0].cpu().double(), weights) + bias
    fine = torch.nn.functional.interpolate(coarse[None, None].float(), scale_factor=f, mode="trilinear", align_corners=False)
    return fine[0, 0].numpy()
