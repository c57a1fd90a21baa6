"""The 3D Slicer module's Slicer side (slicer/MedGen/MedGenSlicerLib) run on Slicer's own core libraries.

The `slicer-core` wheel (Kitware) holds Slicer's MRML nodes and storage nodes, the segmentations logic and
`slicer.util`'s array helpers, without the application: a `vtkMRMLScene` made here stands in for
`slicer.mrmlScene`. The scenario is the one MedGenTest runs in Slicer (MedGenSlicerLib/scenario.py): an
oblique scan, a segmentation with three segments named after the model's classes and one unknown, the
label map, generate, inpaint, cancel and errors, through the module's own functions and the napari-medgen
command line of this environment (a process per run) with a tiny random-weight model.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import json

import numpy as np
import pytest

pytest.importorskip(
    "slicer_core", reason="Slicer's core libraries are not installed (pip install 'napari-medgen[slicer]' installs "
    "the slicer-core wheel; it has no wheel for some platforms)")

import slicer_fixtures
from test_importers_zoo import brain_ldm  # noqa: F401 - the tiny brain LDM bundle, a fixture by name
from tiny_models import make_tiny_model

import slicer  # the wheel's package, once the skip above has passed

MODULE_DIR = Path(__file__).resolve().parents[1] / "slicer" / "MedGen"
sys.path.insert(0, str(MODULE_DIR))  # as Slicer finds the module's packages: beside MedGen.py

from MedGenLib import cli_runner, label_names, models
from MedGenSlicerLib import jobs, nodes, scenario, segments

executable = slicer_fixtures.executable  # the fixture, by name


class CoreScene:
    """A scene set up as Slicer's start-up sets up slicer.mrmlScene, as far as the module needs: a
    segmentations logic on it (which registers the segment converter rules) and the default colour tables."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations.SetMRMLScene(self.scene)
        self.colors = slicer.vtkMRMLColorLogic()
        self.colors.SetMRMLScene(self.scene)

    def nodeIds(self) -> list[str]:
        return [node.GetID() for node in nodes.sceneNodes(self.scene)]


@pytest.fixture(scope="module")
def core() -> CoreScene:
    return CoreScene()


@pytest.fixture(scope="module")
def check(core, executable, tmp_path_factory) -> scenario.Scenario:
    """The scenario in the core scene, with a tiny 2-D model whose classes are CSF, grey and white matter."""
    folder = tmp_path_factory.mktemp("slicer-scene")
    model = models.add_card_details(models.ModelInfo(name="tiny-2d", folder=str(make_tiny_model(folder / "tiny-2d"))))
    runs = folder / "runs"
    runs.mkdir()

    def start_run(command, args, cwd):
        return cli_runner.start_run(executable, command, args, cwd=cwd)

    return scenario.Scenario(core.scene, model, start_run, str(runs))


def test_the_scan_is_oblique_and_the_segments_come_back_on_its_grid(core, check):
    matrix = nodes.ijkToRas(check.scan)
    assert np.allclose(matrix, scenario.obliqueIjkToRas())
    assert np.count_nonzero(np.abs(matrix[:3, :3]) > 1e-6) > 6  # rotated, not a permutation of the axes
    assert segments.segmentNames(check.segmentation) == ["CSF", "grey matter", "white matter", "lesion"]
    before = core.nodeIds()
    for name, mask in check.masks.items():
        [segment_id] = segments.segmentIds(check.segmentation, name)
        assert np.array_equal(segments.segmentMask(core.scene, check.segmentation, segment_id, check.scan), mask)
    assert core.nodeIds() == before  # the exports' label maps, display and colour nodes are gone


def test_the_label_map_follows_the_mapping_and_an_unknown_segment_is_refused(core, check):
    assert check.assignment == {"CSF": 1, "grey matter": 2, "white matter": 3, "lesion": label_names.IGNORE}
    labels = check.checkLabelMap()  # the written file, read back with Slicer's reader
    assert np.unique(labels).tolist() == [0, 1, 2, 3]
    for name, index in (("CSF", 1), ("grey matter", 2), ("white matter", 3)):
        assert (labels[check.masks[name]] == index).all()
    assert (labels[check.masks["lesion"] & check.masks["CSF"]] == 1).all()  # left out: what lies under it stays

    unconfirmed = {name: index for name, index in check.assignment.items() if name != "lesion"}
    assert check.refusal(unconfirmed) == (
        "segment 'lesion' has no class in the segment table: pick one of the model's classes "
        "(background, CSF, grey matter, white matter) or leave it out")
    assert check.refusal(dict(check.assignment, lesion=7)).startswith(
        "segment 'lesion' is assigned label 7, which is not a class of the model")


def test_generate_gives_a_synthetic_volume_in_the_scans_geometry(core, check):
    before = len(core.nodeIds())
    result = check.checkGenerate()
    assert result.GetName().startswith("MedGen test scan generated (synthetic, seed 1)")
    assert result.GetAttribute("MedGen.Model") == "tiny-2d" and result.GetAttribute("MedGen.Steps") == "2"
    assert result.GetAttribute("MedGen.Provenance.model") == "tiny-2d"
    assert result.GetAttribute("MedGen.Provenance.steps") == "2" and result.GetAttribute("MedGen.Provenance.seed") == "1"
    assert len(result.GetAttribute("MedGen.Provenance.weights_sha256")) == 64
    assert result.GetStorageNode() is None and result.GetDisplayNode() is not None
    assert len(core.nodeIds()) == before + 2  # the volume and its display node, nothing else


def test_inpaint_keeps_every_voxel_outside_the_segment(check):
    result = check.checkInpaint()
    assert result.GetAttribute("MedGen.Provenance.task") == "inpaint"
    assert "inpainted lesion (synthetic, seed 1)" in result.GetName()


def test_after_a_cancel_no_node_is_left(check):
    check.checkCancel()


def test_after_an_error_no_node_is_left(check):
    check.checkFailedRun()
    check.checkUnreadableResult()


def test_a_label_map_volume_is_imported_once_as_segments_named_by_its_colours(core, check):
    before = core.nodeIds()
    colors = core.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "tissues")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(4)
    for index, name in enumerate(["background", "CSF", "grey matter", "white matter"]):
        colors.SetColor(index, name, 0.2 * index, 0.5, 0.5, 1.0)
    label_map = core.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "tissue labels")
    label_map.CopyOrientation(check.scan)
    slicer.util.updateVolumeFromArray(label_map, check.expectedLabels())
    label_map.CreateDefaultDisplayNodes()
    label_map.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())

    imported = segments.ImportedSegmentations(core.scene)
    segmentation = imported.get(label_map)
    assert segmentation.GetHideFromEditors() and imported.get(label_map) is segmentation  # imported once
    assert sorted(segments.segmentNames(segmentation)) == ["CSF", "grey matter", "white matter"]
    [csf] = segments.segmentIds(segmentation, "CSF")
    assert np.array_equal(segments.segmentMask(core.scene, segmentation, csf, check.scan), check.masks["CSF"])
    imported.removeAll()
    for node in (label_map, colors):
        nodes.removeNode(core.scene, node)
    assert core.nodeIds() == before


def test_a_model_without_a_label_map_generates_on_the_scans_grid_with_its_attributes(core, check, brain_ldm, tmp_path):
    """The brain LDM (context attributes, no label map): no segmentation, the scan's grid via --like, an attribute
    set, the rest the card's; the result lies on the oblique scan's grid, marked synthetic, the attributes in its
    provenance."""
    from napari_medgen.engine.model.importers import import_bundle

    folder = import_bundle(brain_ldm[0], tmp_path / "ldm", scale_factor=1.0)
    model = models.add_card_details(models.ModelInfo(name="ldm", folder=str(folder)))
    assert not model.takes_label_map and [a.name for a in model.attributes] == ["gender", "age", "ventricular_vol", "brain_vol"]
    before = core.nodeIds()
    options = dict(check.options, model=model, attributes={"age": 0.7})
    job = jobs.startJob(core.scene, "generate", check.scan, None, {}, options, check.startRun, check.temporaryPath)
    assert "labels" not in job.run.args and job.run.args["attribute"] == {"age": 0.7}
    [result] = check.finish(job)
    check.resultMatchesScanGrid(result)
    attributes = json.loads(result.GetAttribute("MedGen.Provenance.attributes"))
    assert attributes == {"gender": 0.0, "age": 0.7, "ventricular_vol": 0.2, "brain_vol": 0.4}
    nodes.removeNode(core.scene, result)
    assert core.nodeIds() == before


def test_medgen_test_in_slicer_runs_the_same_scenario():
    """Reload and Test in Slicer runs scenario.Scenario(...).runAll on slicer.mrmlScene."""
    tree = ast.parse((MODULE_DIR / "MedGen.py").read_text(encoding="utf-8"))
    [test_class] = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "MedGenTest"]
    called = {ast.unparse(node.func) for node in ast.walk(test_class) if isinstance(node, ast.Call)}
    assert {"Scenario", "scenario.runAll"} <= called
    checks = sorted(name for name in dir(scenario.Scenario) if name.startswith("check"))
    assert sorted(scenario.Scenario.STEPS) == checks  # runAll runs every check
    source = Path(__file__).read_text(encoding="utf-8")
    assert all(f"check.{name}()" in source for name in checks)  # and so do these tests
