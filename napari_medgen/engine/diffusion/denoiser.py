"""The network call of a sampling step: conditioning, classifier-free guidance and tiling.

The conditioning arrives as one channel stack per sample, in the card's order (see
`card.Conditioning`): label one-hot, then known image and mask, then slice-position channels.
The denoiser routes each part where the network takes it (input channels, SPADE's ``seg``, or a
ControlNet) and, for 3-D volumes larger than the training tile, runs MONAI's sliding-window
inference with Gaussian blending of overlapping tiles.

Speed (benchmarks/vs_monai.py): a loaded model is prepared once for inference (`prepare_for_inference`:
fused scaled-dot-product attention and, for 2-D networks, the channels-last layout, the same maths up
to float rounding), and the network's input stack [x_t | conditioning] (with its unconditional half for
guidance) is built once per batch of slices; each step only writes x_t into it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.card import ModelCard
from ..model.loading import LoadedModel
from ..model.networks import monai_module


def one_hot(label_map: np.ndarray, channels: int) -> np.ndarray:
    """(N, ...) integer labels -> (N, channels, ...) float32 one-hot."""
    eye = np.eye(channels, dtype=np.float32)
    return np.moveaxis(eye[label_map.astype(np.int64)], -1, 1)


def label_channels(label_map: np.ndarray, channels: int) -> np.ndarray:
    """The label-map input channels: (N, ...) integer labels -> their one-hot; (N, channels, ...) floats are
    tissue fractions (each voxel's share of every class, summing to 1) and go in as they are.

    Fractions carry what hard labels cannot: how much of a voxel at a boundary is each tissue (partial
    volume). On the demo's template a fit on them leaves 0.064 of CSF's 0.122 intensity standard deviation
    within the label and 0.035 of grey matter's 0.116 (docs/quality.md, Realism).
    """
    if np.issubdtype(label_map.dtype, np.floating):
        if label_map.ndim < 3 or label_map.shape[1] != channels:
            raise ValueError(f"tissue fractions need shape (N, {channels}, ...), got {label_map.shape}")
        return np.ascontiguousarray(label_map, dtype=np.float32)
    return one_hot(label_map, channels)


def position_channels(positions: np.ndarray, frequencies: int, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """Sinusoidal embedding of each sample's normalised slice position, as constant channels.

    Position p in [0, 1] along the scan axis -> sin/cos(2^k * pi * p), k < frequencies: the
    transformer-style encoding slice-wise brain generators use, broadcast over the slice.
    """
    k = 2.0 ** np.arange(frequencies) * np.pi
    angles = positions[:, None] * k[None, :]
    features = np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)
    return np.broadcast_to(features.reshape(features.shape + (1,) * len(spatial_shape)), features.shape + spatial_shape).copy()


def conditioning_stack(
    card: ModelCard,
    label_map: np.ndarray | None,
    known: np.ndarray | None,
    region: np.ndarray | None,
    positions: np.ndarray | None,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """The (N, C, ...) conditioning channels for N samples (label_map: (N, ...) integers or (N, classes, ...)
    tissue fractions, see `label_channels`; known, region: (N, ...)).

    With no known image the known channel is empty and the mask covers everything: plain
    generation, as in training (a fully voided image). `shape` is (N, ...spatial); it is needed
    when neither a label map nor a known image is given (RePaint inpainting without labels).
    """
    cond = card.conditioning
    if shape is None:
        given = label_map if label_map is not None else known
        if given is None:
            raise ValueError("conditioning_stack needs a label map, a known image or an explicit shape")
        fractions = given is label_map and np.issubdtype(given.dtype, np.floating)
        shape = given.shape[:1] + given.shape[2:] if fractions else tuple(given.shape)
    n, spatial = int(shape[0]), tuple(int(v) for v in shape[1:])
    parts = []
    if cond.label_map != "none":
        if label_map is None:
            parts.append(np.zeros((n, card.num_label_channels) + spatial, np.float32))
        else:
            parts.append(label_channels(label_map, card.num_label_channels))
    if cond.known_image:
        if known is None:
            parts.append(np.zeros((n, 1) + spatial, np.float32))
            parts.append(np.ones((n, 1) + spatial, np.float32))
        else:
            assert region is not None
            parts.append((known * (1.0 - region))[:, None].astype(np.float32))
            parts.append(region[:, None].astype(np.float32))
    if cond.slice_position:
        assert positions is not None
        parts.append(position_channels(positions, cond.position_frequencies, spatial))
    if not parts:
        return np.zeros((n, 0) + spatial, np.float32)
    return np.concatenate(parts, axis=1)


def prepare_for_inference(model: LoadedModel) -> None:
    """Make a loaded model's networks fast for sampling, once: the same weights, the same maths.

    - MONAI's attention blocks compute softmax(QK^T)V with explicit matrices by default; switching
      them to PyTorch's fused `scaled_dot_product_attention` (their own `use_flash_attention` path)
      avoids materialising the (tokens x tokens) matrix: at 32x32 tokens that was half of the demo
      model's time on a CPU, and it bounds attention memory for 3-D tiles.
    - 2-D networks on CPU or CUDA take the channels-last layout, which oneDNN and cuDNN convolve
      without reordering (measured 1.2-1.4x on the demo model on a CPU).
    Results differ from the unprepared network only by float rounding.
    """
    if model.extra.get("inference_ready"):
        return
    channels_last = model.card.spatial_dims == 2 and model.device.type in ("cpu", "cuda")
    for network in model.networks.values():
        for module in network.modules():
            if (
                hasattr(module, "use_flash_attention")
                and not getattr(module, "save_attn", False)
                and getattr(module, "rel_positional_embedding", None) is None
            ):
                module.use_flash_attention = True
        if channels_last:
            network.to(memory_format=torch.channels_last)
    model.extra["channels_last"] = channels_last
    model.extra["inference_ready"] = True


class Denoiser:
    """Calls the model's networks on (x_t, t) with a fixed conditioning stack."""

    def __init__(
        self,
        model: LoadedModel,
        conditioning: torch.Tensor,
        guidance: float = 1.0,
        class_index: int | None = None,
        overlap: float = 0.25,
        guidance_rescale: float = 0.0,
    ) -> None:
        prepare_for_inference(model)
        self.model = model
        self.card = model.card
        self.network = model.networks["network"]
        self.controlnet = model.networks.get("controlnet")
        self.conditioning = conditioning
        self.guided = guidance != 1.0 and self.card.supports_guidance
        self.guidance = guidance
        self.guidance_rescale = float(guidance_rescale)
        self.label_channels = self.card.num_label_channels if self.card.conditioning.label_map != "none" else 0
        self.class_labels = None
        if class_index is None and self.card.conditioning.orientations:  # a three-plane network: axial unless told
            class_index = self.card.conditioning.orientations.index("axial")
        if class_index is not None:
            self.class_labels = torch.full((conditioning.shape[0],), int(class_index), device=model.device, dtype=torch.long)
        if self.guided and self.class_labels is not None:
            self.class_labels = torch.cat([self.class_labels, self.class_labels])
        self.tile = tuple(self.card.tile_size[::-1])  # array order
        self.overlap = overlap
        self.calls = 0
        # The network's input, built once: [x_t | conditioning] and, for guidance, the same with the
        # label channels zeroed (the unconditional pass) below it. Each call writes x_t into channel 0.
        n = conditioning.shape[0]
        # (x_t's channel made from the shape: a model conditioned on nothing has no conditioning channel to copy)
        x_channel = conditioning.new_zeros((n, 1) + tuple(conditioning.shape[2:]))
        stack = torch.cat([x_channel, conditioning], 1).to(model.dtype)
        if self.guided:
            unconditional = stack.clone()
            unconditional[:, 1 : 1 + self.label_channels] = 0
            stack = torch.cat([stack, unconditional], 0)
        if model.extra.get("channels_last") and stack.dim() == 4:
            stack = stack.contiguous(memory_format=torch.channels_last)
        self._stack = stack
        self._samples = n

    def _network(self, stack: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """One network pass on [x_t | conditioning] channel stacks."""
        mode = self.card.conditioning.label_map
        if mode == "channels":  # the stack is already the network's input, in its order
            return self.network(stack, t, class_labels=class_labels)
        x = stack[:, :1]
        labels = stack[:, 1 : 1 + self.label_channels]
        rest = stack[:, 1 + self.label_channels :]
        inputs = torch.cat([x, rest], 1)
        if mode == "spade":
            return self.network(inputs, t, seg=labels, class_labels=class_labels)
        if mode == "controlnet":
            assert self.controlnet is not None
            down, mid = self.controlnet(inputs, t, controlnet_cond=labels, class_labels=class_labels)
            return self.network(
                inputs, t, class_labels=class_labels, down_block_additional_residuals=down, mid_block_additional_residual=mid
            )
        return self.network(inputs, t, class_labels=class_labels)

    def _tiled(self, stack: torch.Tensor, t: int, class_labels: torch.Tensor | None) -> torch.Tensor:
        spatial = tuple(stack.shape[2:])
        t_batch = torch.full((stack.shape[0],), t, device=stack.device, dtype=torch.long)
        if self.card.spatial_dims == 2 or all(s <= w for s, w in zip(spatial, self.tile, strict=True)):
            return self._network(stack, t_batch, class_labels)
        sliding_window_inference = monai_module("monai.inferers").sliding_window_inference

        def predictor(window: torch.Tensor) -> torch.Tensor:
            n = window.shape[0]
            return self._network(window, t_batch[:1].expand(n), None if class_labels is None else class_labels[:1].expand(n))

        return sliding_window_inference(
            stack, roi_size=self.tile, sw_batch_size=1, predictor=predictor, overlap=self.overlap, mode="gaussian"
        )

    def __call__(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        self.calls += 1
        stack = self._stack
        n = self._samples
        stack[:n, :1].copy_(x_t)
        if not self.guided:
            return self._tiled(stack, t, self.class_labels).float()
        # Classifier-free guidance: conditional and unconditional passes in one batch.
        stack[n:, :1].copy_(x_t)
        out = self._tiled(stack, t, self.class_labels).float()
        conditional, plain = out.chunk(2)
        guided = plain + self.guidance * (conditional - plain)
        if self.guidance_rescale <= 0:
            return guided
        # Guidance rescaling (Lin et al., 2024): guidance inflates the prediction's spread, which shows as
        # over-contrasted, flat tissues; scale each sample's guided prediction back to the conditional one's
        # standard deviation, mixed with the plain guided one by `guidance_rescale`.
        dims = tuple(range(1, guided.dim()))
        ratio = conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-8)
        return self.guidance_rescale * (guided * ratio) + (1.0 - self.guidance_rescale) * guided
