"""Training a slice-wise anatomy-conditioned diffusion model: `data` (pairs, slices, augmentation,
batches), `optimizer` (AdamW and its warm-up + cosine learning-rate schedule), `checkpoint` (resumable
state as safetensors + JSON) and `loop` (the generator `train`, loss curve). Names are imported when first used."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "TrainingConfig": "loop",
    "TrainingEvent": "loop",
    "train": "loop",
    "find_training_pairs": "data",
    "load_training_slices": "data",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
