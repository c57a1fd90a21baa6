"""Shared fixtures of the test suite.

Tests import the installed package (``--import-mode=importlib``); helper modules that live beside the
tests (``geometry_cases``, ``tiny_models``) are made importable here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# `--precision auto` means fp32 in the tests (and in the commands they start), whatever the CI machine's
# processor: results compared across runs and processes must not depend on it. test_precision.py tests auto.
os.environ.setdefault("NAPARI_MEDGEN_AUTO_PRECISION", "fp32")

from geometry_cases import DIRECTIONS, make_volume

from napari_medgen.engine.volume import Volume


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "packaging: builds a wheel (a few seconds); deselect with -m 'not packaging'"
    )


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """Each test leaves torch's thread count as it found it: a command run in-process with --threads (distill,
    a benchmark) would otherwise change the float rounding of later tests that compare against a subprocess."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    if before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture
def oblique_volume() -> Volume:
    """A float volume with anisotropic spacing, an off-centre origin and an oblique direction."""
    return make_volume(DIRECTIONS["oblique_1"], metadata={"modality": "MR", "description": "test scan"})


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """A model folder (``model.json`` + ``weights.safetensors``) of the tiny 2-D model ``tiny-2d``:
    `tiny_models.make_tiny_model` with its defaults, random weights, built fresh for each test."""
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path / "tiny-2d")


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    """pydicom's shipped test DICOM files."""
    pydicom = pytest.importorskip("pydicom")
    return Path(pydicom.__file__).parent / "data" / "test_files"

