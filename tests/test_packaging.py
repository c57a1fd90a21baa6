"""The built wheel carries the manifest, the sample data with its licence, and the napari entry point."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = "napari_medgen/resources/sample"

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """One wheel built from the checkout (no network, the current environment's hatchling)."""
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("napari_medgen-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_wheel_holds_manifest_and_sample_data(wheel):
    names = set(wheel.namelist())
    for required in (
        "napari_medgen/__init__.py",
        "napari_medgen/napari.yaml",
        "napari_medgen/napari_io.py",
        "napari_medgen/sample_data.py",
        "napari_medgen/layer_geometry.py",
        "napari_medgen/engine/io/__init__.py",
            "napari_medgen/engine/synthesis/api.py",
        f"{SAMPLE}/mni152_t1_2mm.nii.gz",
        f"{SAMPLE}/mni152_tissue_labels_2mm.nii.gz",
        f"{SAMPLE}/LICENSE-ICBM152.txt",
        "napari_medgen/resources/models/brain-t1-demo/model.json",
        "napari_medgen/resources/models/brain-t1-demo/weights.safetensors",
    ):
        assert required in names, f"{required} missing from the wheel"
    # The sample volumes are real gzip files, not placeholders (e.g. Git LFS pointers).
    for name in ("mni152_t1_2mm.nii.gz", "mni152_tissue_labels_2mm.nii.gz"):
        assert wheel.read(f"{SAMPLE}/{name}")[:2] == b"\x1f\x8b"
    # The demo weights are a real safetensors file: an 8-byte header length, then a JSON header.
    weights = wheel.read("napari_medgen/resources/models/brain-t1-demo/weights.safetensors")
    assert weights[8:9] == b"{" and len(weights) > 1_000_000
    assert "ICBM" in wheel.read(f"{SAMPLE}/LICENSE-ICBM152.txt").decode()
    # Nothing from the test suite or a virtual environment slipped in.
    assert not [n for n in names if n.startswith(("tests/", ".venv/")) or "/__pycache__/" in n]


def test_wheel_declares_the_napari_manifest_entry_point(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert parser["napari.manifest"]["napari-medgen"] == "napari_medgen:napari.yaml"
    assert parser["console_scripts"]["napari-medgen"] == "napari_medgen.cli:main"


def test_wheel_manifest_contributes_reader_writers_and_sample(wheel):
    manifest = yaml.safe_load(wheel.read("napari_medgen/napari.yaml"))
    assert manifest["name"] == "napari-medgen"
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    (reader,) = manifest["contributions"]["readers"]
    assert commands[reader["command"]] == "napari_medgen.napari_io:napari_get_reader"
    assert {"*.nii", "*.nii.gz", "*.mha", "*.nrrd", "*.dcm"} <= set(reader["filename_patterns"])
    assert reader["accepts_directories"] is True
    writers = {w["layer_types"][0]: w for w in manifest["contributions"]["writers"]}
    assert commands[writers["image"]["command"]] == "napari_medgen.napari_io:write_image"
    assert commands[writers["labels"]["command"]] == "napari_medgen.napari_io:write_labels"
    for writer in writers.values():
        assert {".nii.gz", ".nii", ".mha", ".nrrd"} <= set(writer["filename_extensions"])
    (sample,) = manifest["contributions"]["sample_data"]
    assert sample["key"] == "brain_t1_tissue"
    assert commands[sample["command"]] == "napari_medgen.sample_data:sample_brain"


def test_installed_plugin_resolves_its_reader_writers_and_sample():
    """npe2 finds the installed manifest and its I/O commands point at real functions."""
    import importlib

    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("napari-medgen")
    io_commands = {r.command for r in manifest.contributions.readers}
    io_commands |= {w.command for w in manifest.contributions.writers}
    io_commands |= {s.command for s in manifest.contributions.sample_data}
    for command in manifest.contributions.commands:
        if command.id not in io_commands:
            continue  # widgets are checked by the widget tests
        module, _, attribute = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute))


def test_npe2_validates_the_installed_manifest():
    """napari's own validator accepts the manifest the installed package exposes."""
    npe2 = Path(sys.executable).parent / "npe2"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}  # it prints a check mark; CI's locale may be ASCII
    result = subprocess.run(
        [str(npe2), "validate", "napari_medgen"], capture_output=True, encoding="utf-8", errors="replace",
        env=env, timeout=120, check=False,
    )
    assert result.returncode == 0 and "valid" in result.stdout, result.stdout + result.stderr


def test_package_manifest_is_the_top_level_manifest():
    """napari.yaml lives at the repository's top level; the package holds a copy for editable installs and
    npe2, which must never drift from it (a wheel is built from the top-level file)."""
    root = Path(__file__).resolve().parents[1]
    top, packaged = root / "napari.yaml", root / "napari_medgen" / "napari.yaml"
    if not top.is_file():
        pytest.skip("not a source checkout")
    assert packaged.read_bytes() == top.read_bytes(), (
        "napari_medgen/napari.yaml differs from the top-level napari.yaml: edit the top-level file and copy it "
        "(cp napari.yaml napari_medgen/napari.yaml)"
    )


def test_wheel_manifest_is_the_top_level_manifest(wheel):
    root = Path(__file__).resolve().parents[1]
    if not (root / "napari.yaml").is_file():
        pytest.skip("not a source checkout")
    assert wheel.read("napari_medgen/napari.yaml") == (root / "napari.yaml").read_bytes()
