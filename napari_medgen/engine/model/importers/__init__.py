"""Importers of models from elsewhere (MAISI / NV-Generate-CTMR folders, MONAI generative bundles): their JSON
configs read as data (`safe_config`), their `.pt` checkpoints as tensors only (`checkpoint`), written as a
model folder (card + safetensors) that nothing of the original files is ever run or unpickled from again."""

from __future__ import annotations

from ...._lazy import lazy_attributes

_WHERE = {"import_maisi": "maisi", "import_bundle": "bundle", "SafeConfig": "safe_config", "load_checkpoint": "checkpoint"}
__all__ = ["SafeConfig", "import_bundle", "import_maisi", "load_checkpoint"]

__getattr__ = lazy_attributes(__name__, _WHERE)
