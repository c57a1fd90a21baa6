"""MONAI networks built from a card (allow-listed classes only)."""

from __future__ import annotations

import torch

from ..errors import ModelCardError
from .card import ModelCard


# -- networks -------------------------------------------------------------------------------------
def build_networks(card: ModelCard, device: str | torch.device | None = None) -> dict[str, torch.nn.Module]:
    """The card's MONAI networks with fresh (random) weights; on `device` if given ('meta': shapes only,
    no memory, to check a card against its weights before building anything large)."""
    import contextlib

    from monai.networks import nets

    specs = {"network": card.network}
    if card.controlnet is not None:
        specs["controlnet"] = card.controlnet
    networks = {}
    for role, spec in specs.items():
        try:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                networks[role] = getattr(nets, spec.class_name)(**spec.kwargs)
        except MemoryError:
            raise ModelCardError(
                f"model {card.name}: the card's {role} is too large to build in this machine's memory; check its "
                f"{role}.kwargs (channels)"
            ) from None
        except Exception as error:  # noqa: BLE001 - whatever MONAI's constructor raises on these arguments
            # The schema cannot know every constraint of MONAI's constructors (e.g. channels that
            # norm_num_groups must divide, or a zero that it divides by): a card MONAI refuses is still
            # the card's fault.
            raise ModelCardError(
                f"model {card.name}: the card's {role} arguments are not accepted by MONAI's "
                f"{spec.class_name} ({type(error).__name__}: {str(error)[:300]}); fix the card's {role}.kwargs"
            ) from None
    return networks
