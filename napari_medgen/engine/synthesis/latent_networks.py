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
from .model_grid import ModelGridProblem

# Latent voxels (per axis, at most) of the tile decoded for a preview; the rest of the preview is a linear map
# of the latent fitted on that tile, so a preview costs a small decode, not a whole one.
PREVIEW_TILE = 8


# -- layouts ----------------------------------------------------------------------------------------------
def to_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """A canonical (z, y, x) LPS array -> the networks' layout (`ras_xyz`: (x, y, z), x left->right, y
    posterior->anterior, z inferior->superior, as MAISI's RAS-oriented training arrays)."""
    if layout == "ras_xyz":
        return np.ascontiguousarray(np.transpose(array, (2, 1, 0))[::-1, ::-1, :])
    return np.ascontiguousarray(array)


def from_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """The inverse of `to_layout`."""
    if layout == "ras_xyz":
        return np.ascontiguousarray(np.transpose(array[::-1, ::-1, :], (2, 1, 0)))
    return np.ascontiguousarray(array)


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

    def __init__(self, loaded: LoadedModel, problem: ModelGridProblem) -> None:
        prepare_for_inference(loaded)
        match_precision(loaded)
        card = loaded.card
        latent = card.latent
        assert latent is not None
        self.network = loaded.networks["network"]
        self.controlnet = loaded.networks.get("controlnet")
        self.dtype, self.device = loaded.dtype, loaded.device
        layout = latent.array_layout
        self.kwargs: dict[str, torch.Tensor] = {}
        self.control_kwargs: dict[str, torch.Tensor] = {}
        if latent.modality_code is not None:
            code = torch.tensor([latent.modality_code], dtype=torch.long, device=self.device)
            self.kwargs["class_labels"] = code
            self.control_kwargs["class_labels"] = code
        if latent.spacing_input:
            spacing = spacing_in_layout(problem.grid.spacing, layout)
            self.kwargs["spacing_tensor"] = torch.tensor([spacing], dtype=self.dtype, device=self.device) * latent.spacing_scale
        labels = to_layout(problem.labels, layout) if problem.labels is not None else None
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
        if isinstance(t, torch.Tensor):  # rectified flow: MAISI's torch.Tensor((t,)), a float timestep
            timesteps = torch.Tensor((t,)).to(self.device)
        else:
            timesteps = torch.full((1,), int(t), dtype=torch.long, device=self.device)
        extra = {}
        if self.controlnet is not None:
            down, mid = self.controlnet(x=x, timesteps=timesteps, controlnet_cond=self.condition, **self.control_kwargs)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return self.network(x, timesteps, **self.kwargs, **extra).float()


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
