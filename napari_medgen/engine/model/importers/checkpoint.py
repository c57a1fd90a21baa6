"""Reading a `.pt` checkpoint without running anything in it: ``torch.load(weights_only=True)`` only.

PyTorch's restricted unpickler accepts tensors, numbers, strings and containers; a file that names any
other Python object (a class, a function, a `__reduce__` payload) raises before the object is made.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ...errors import ModelWeightsError


def load_checkpoint(path: str | Path) -> Any:
    """The checkpoint's contents (tensors and plain containers), on the CPU; refuses anything else."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelWeightsError(f"{path}: checkpoint not found; check the folder layout (or name the file explicitly)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # PyTorch's own message suggests loading the file unsafely: not advice to pass on.
        first = " ".join(str(error).split("\n\n")[-1].split())[:160]
        raise ModelWeightsError(
            f"{path}: the checkpoint holds Python objects besides tensors, which could run code when loaded; refusing "
            f"to load it ({first}). Re-save the state dict alone (torch.save(model.state_dict(), path)) and import that"
        ) from None
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file is the user's file's fault
        reason = " ".join(str(error).split())[:200]
        raise ModelWeightsError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: {reason}); check the file"
        ) from None


def state_dict_in(checkpoint: Any, path: str | Path, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The state dict inside a checkpoint: under the first of `keys` present (e.g. 'unet_state_dict'), under
    'state_dict', or the checkpoint itself; every value must be a tensor."""
    import torch

    state = checkpoint
    if isinstance(checkpoint, dict):
        for key in keys + ("state_dict",):
            if isinstance(checkpoint.get(key), dict):
                state = checkpoint[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        wanted = " or ".join(repr(k) for k in keys) or "a state dict"
        raise ModelWeightsError(f"{path}: expected {wanted} (a dict of tensors) in the checkpoint; it holds something else")
    return dict(state)


def scalar_in(checkpoint: Any, key: str) -> float | None:
    """A number stored in a checkpoint dict (a Python number or a one-element tensor), else None."""
    import torch

    if not isinstance(checkpoint, dict) or key not in checkpoint:
        return None
    value = checkpoint[key]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.reshape(()).item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
