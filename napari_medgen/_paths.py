"""Where the package's shipped resources (sample data, models, manifest) lie.

In a built wheel `napari.yaml` and `resources/` are placed inside the package; in a source checkout
they sit at the repository's top level. Both layouts resolve here, and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resources_dir() -> Path:
    installed = _PACKAGE / "resources"
    return installed if installed.is_dir() else _PACKAGE.parent / "resources"


def sample_dir() -> Path:
    return resources_dir() / "sample"


def shipped_models_dir() -> Path:
    return resources_dir() / "models"
