"""A network called directly by a benchmark (MONAI's inferer, per-call timings) rather than through the engine's
denoiser, which gives a three-plane network its plane itself."""

from __future__ import annotations

import torch


class AxialPlane(torch.nn.Module):
    """A network trained on three planes (its card's `conditioning.orientations`, the plane as MONAI's class
    embedding) called as a plain one, every call an axial slice: for code that calls a network itself (MONAI's
    inferer, per-call timings), which passes no class labels."""

    def __init__(self, network: torch.nn.Module, plane_index: int) -> None:
        super().__init__()
        self.network, self.plane_index = network, plane_index

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        planes = torch.full((x.shape[0],), self.plane_index, dtype=torch.long, device=x.device)
        return self.network(x, timesteps, context=context, class_labels=planes)


def plain_network(network: torch.nn.Module, card) -> torch.nn.Module:
    """`network` as a caller that gives no class labels can call it (`AxialPlane` where the card has planes)."""
    orientations = card.conditioning.orientations
    return AxialPlane(network, orientations.index("axial")) if orientations else network
