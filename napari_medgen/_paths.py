"""Where the package's shipped resources (sample data, models) lie.

In a built wheel `resources/` is placed inside the package; in a source checkout or an editable
install it sits at the repository's top level. Both layouts resolve here, and nowhere else.
(`napari.yaml` is always inside the package.)
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
