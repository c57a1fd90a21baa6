"""Package attributes imported on first use (PEP 562), so that importing a package costs only what is used.

`napari-medgen --help`, `models` and the napari reader must not pay for torch and MONAI, which the modules
behind `generate` or `train` import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for `package` that imports ``package.<where[name]>`` when `name` is asked for."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__
