"""Fixtures the tests of the 3D Slicer module share (test_slicer_logic.py, test_slicer_scene.py).

Test modules import the fixtures by name (`from slicer_fixtures import executable`)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def executable() -> str:
    """The napari-medgen command of the environment the tests run in."""
    beside = Path(sys.executable).parent / ("napari-medgen.exe" if os.name == "nt" else "napari-medgen")
    found = str(beside) if beside.exists() else shutil.which("napari-medgen")
    assert found, "napari-medgen is not installed in the test environment"
    return found
