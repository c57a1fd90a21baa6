"""Training a slice-wise anatomy-conditioned diffusion model: `data` (pairs, slices, augmentation,
batches), `optimizer` (AdamW and its warm-up + cosine learning-rate schedule), `checkpoint` (resumable
state as safetensors + JSON) and `loop` (the generator `train`, loss curve). Names are imported when first used."""

from __future__ import annotations

from ..._lazy import lazy_attributes

_WHERE = {
    "TrainingConfig": "loop",
    "TrainingEvent": "loop",
    "train": "loop",
    "find_training_pairs": "data",
    "load_training_slices": "data",
}
__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
