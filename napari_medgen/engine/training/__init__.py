"""Training a slice-wise anatomy-conditioned diffusion model: `config` (the run's settings, no torch), `data`
(image / label pairs found and read as slices), `augmentation` (what is done to a slice), `batches` (seeded
batches, made by worker processes), `optimizer` (AdamW and its warm-up + cosine learning-rate schedule),
`checkpoint` (resumable state as safetensors + JSON), `loop` (the generator `train`, loss curve), and step
distillation (`distill`, `distill_config`). Names are imported when first used."""

from __future__ import annotations

from ..._lazy import lazy_attributes

_WHERE = {
    "TrainingConfig": "config",
    "TrainingEvent": "loop",
    "train": "loop",
    "find_training_pairs": "data",
    "load_training_slices": "data",
}
__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
