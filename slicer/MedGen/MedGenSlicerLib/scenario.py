"""The MedGen check: one scenario of the module's own functions on a scene. MedGenTest runs it in Slicer
(Reload and Test: a one-click check of an install), napari-medgen's tests/test_slicer_scene.py on Slicer's
core libraries (the `slicer-core` wheel) with a tiny model; the same code either way.

An oblique scan (voxel axes rotated about two axes, anisotropic spacing) and a segmentation whose three
segments are named after the model's first three classes, with a fourth, 'lesion', that matches none:
- the label map the command line reads follows the mapping (the lesion left out, as the table presets it);
  a mapping that leaves the lesion unconfirmed, or gives it a label the model lacks, is refused with the
  module's message and leaves nothing behind;
- generate: a result on the scan's grid with the scan's IJK-to-RAS, marked synthetic, with its provenance;
- inpaint the lesion: every voxel outside it equals the scan's;
- a cancelled run, a failed run and a result that cannot be read add no node and leave no folder.
Each check raises AssertionError saying what failed.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import slicer
from MedGenLib import cli_runner, label_names
from MedGenLib.results import ATTRIBUTE_PREFIX, PROVENANCE_PREFIX, MedGenJob

from . import jobs
from .nodes import addHiddenNode, gridShape, ijkToRas, nodesRemovedAfter, readVolume, sceneNodes, writeNode
from .segments import addSegmentFromArray, segmentNames

UNKNOWN_SEGMENT = "lesion"
SHAPE = (3, 20, 24)  # k, j, i
SPACING_MM = (3.5, 4.0, 4.5)  # i, j, k
RUN_TIMEOUT_S = 600.0  # a cold command line on a busy machine, with a real model on the CPU


def check(condition, message: str) -> None:
    """Raise AssertionError with `message` unless `condition` holds (kept under python -O, unlike assert)."""
    if not condition:
        raise AssertionError(message)


def obliqueIjkToRas() -> np.ndarray:
    """The scan's IJK-to-RAS: voxel axes rotated 20 degrees about S and 10 about R, anisotropic spacing."""
    a, b = math.radians(20.0), math.radians(10.0)
    aboutS = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    aboutR = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(b), -math.sin(b)], [0.0, math.sin(b), math.cos(b)]])
    matrix = np.eye(4)
    matrix[:3, :3] = aboutS @ aboutR @ np.diag(SPACING_MM)
    matrix[:3, 3] = (-30.0, 12.0, 25.0)
    return matrix


def anatomyMasks(classNames: list) -> dict:
    """{segment name: mask (k, j, i)}: three rings (the third class inside, the first outside) and a
    lesion square across the inner two."""
    _, j, i = np.mgrid[0:SHAPE[0], 0:SHAPE[1], 0:SHAPE[2]]
    radius = np.hypot(j - 10, i - 12)
    lesion = (j >= 9) & (j < 13) & (i >= 12) & (i < 17)
    return {classNames[0]: (radius >= 6) & (radius < 9), classNames[1]: (radius >= 3) & (radius < 6),
            classNames[2]: radius < 3, UNKNOWN_SEGMENT: lesion}


def makeScan(scene, masks: dict):
    """The oblique test scan (16-bit, a different level in each ring, some noise) in `scene`."""
    level = np.full(SHAPE, 20.0)
    for value, mask in zip((300.0, 600.0, 900.0), list(masks.values())[:3]):
        level[mask] = value
    noise = np.random.default_rng(7).normal(0.0, 15.0, SHAPE)
    scan = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName("MedGen test scan"))
    scan.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(obliqueIjkToRas()))
    slicer.util.updateVolumeFromArray(scan, (level + noise).round().astype(np.int16))
    scan.CreateDefaultDisplayNodes()
    return scan


def makeAnatomy(scene, scanNode, masks: dict):
    """A segmentation on the scan's grid with one segment per mask, named as the masks are."""
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName("MedGen test anatomy"))
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(scanNode)
    for name, mask in masks.items():
        addSegmentFromArray(scene, segmentation, name, mask, scanNode)
    return segmentation


class EndedRun:
    """A run that has already ended (`state`, `paths`, `error`): loading results that cannot be read."""

    def __init__(self, state: str, paths: list, error: str | None = None) -> None:
        self.state, self.paths, self.error, self.done = state, paths, error, True


def segmentClassNames(classes: list) -> list:
    """The names of the first three classes other than background (index 0): the scenario's segments."""
    return [name for index, name in classes if index > 0][:3]


class Scenario:
    """The check's scan, anatomy and model in `scene`; runs start with `startRun(command, args, cwd)` (a
    process each, or the module's worker) in folders under `temporaryPath`; `idle()` is called while waiting."""

    def __init__(self, scene, model, startRun, temporaryPath: str, idle=None, device: str = "cpu") -> None:
        self.classes = list(model.classes)
        names = segmentClassNames(self.classes)
        if len(names) < 3:
            raise ValueError(f"the model {model.name} has fewer than three label classes: pick another one")
        self.scene, self.model, self.startRun, self.temporaryPath, self.idle = scene, model, startRun, temporaryPath, idle
        self.masks = anatomyMasks(names)
        self.scan = makeScan(scene, self.masks)
        self.segmentation = makeAnatomy(scene, self.scan, self.masks)
        self.assignment = label_names.default_assignment(segmentNames(self.segmentation), self.classes)
        self.options = {"model": model, "steps": 2, "seed": 1, "guidance": 1.0, "variants": 1, "device": device}

    # -- helpers --
    def start(self, command: str, assignment: dict | None = None, startRun=None, **options):
        """Start a run of the scenario's inputs (inpainting: the lesion, following the anatomy)."""
        return jobs.startJob(self.scene, command, self.scan, self.segmentation,
                             self.assignment if assignment is None else assignment, dict(self.options, **options),
                             startRun or self.startRun, self.temporaryPath,
                             regionSegment=UNKNOWN_SEGMENT if command == "inpaint" else None)

    def finish(self, job) -> list:
        """Wait for the run and end it (jobs.endJob): its results, or its error raised."""
        check(jobs.waitForJob(job, RUN_TIMEOUT_S, self.idle), f"napari-medgen did not finish in {RUN_TIMEOUT_S:.0f} s")
        return jobs.endJob(self.scene, job)

    def leftBehind(self, nodeIds: list, folders: list) -> str:
        """What differs from the scene's node IDs and the temporary folder's entries taken before ('' if none)."""
        nodes = sorted({node.GetID() for node in sceneNodes(self.scene)} ^ set(nodeIds))
        entries = sorted(set(os.listdir(self.temporaryPath)) ^ set(folders))
        return (f"nodes {nodes} " if nodes else "") + (f"folders {entries}" if entries else "")

    def snapshot(self) -> tuple:
        return [node.GetID() for node in sceneNodes(self.scene)], os.listdir(self.temporaryPath)

    def expectedLabels(self) -> np.ndarray:
        """The label map the assignment should give, painted from the masks by class index."""
        expected = np.zeros(SHAPE, np.uint8)
        for name, index in label_names.paint_order(self.assignment):
            expected[self.masks[name]] = index
        return expected

    def resultMatchesScanGrid(self, result) -> None:
        check(gridShape(result) == gridShape(self.scan), f"{result.GetName()} is not on the scan's voxel grid")
        check(np.allclose(ijkToRas(result), ijkToRas(self.scan), atol=1e-6),
              f"{result.GetName()}'s IJK-to-RAS {ijkToRas(result).tolist()} is not the scan's {ijkToRas(self.scan).tolist()}")
        check(result.GetAttribute(ATTRIBUTE_PREFIX + "Synthetic") == "true", f"{result.GetName()} is not marked synthetic")

    # -- the checks --
    def checkLabelMap(self) -> np.ndarray:
        """The written label map follows the mapping on the scan's grid; unconfirmed or unknown labels are
        refused with the module's message. Returns the label map as written."""
        folder = cli_runner.RunFolder(parent=self.temporaryPath)
        try:
            args = jobs.writeInputs(self.scene, "generate", self.scan, self.segmentation, self.assignment,
                                    self.options, folder)
            with nodesRemovedAfter(self.scene):
                written = addHiddenNode(self.scene, "vtkMRMLLabelMapVolumeNode", "written labels")
                readVolume(self.scene, written, args["labels"])
                labels, matrix = slicer.util.arrayFromVolume(written).copy(), ijkToRas(written)
        finally:
            folder.remove()
        check(np.allclose(matrix, ijkToRas(self.scan), atol=1e-6), "the label map is not in the scan's geometry")
        check(np.array_equal(labels, self.expectedLabels()),
              f"the label map's values {np.unique(labels).tolist()} do not follow the mapping {self.assignment}")
        unconfirmed = {name: index for name, index in self.assignment.items() if name != UNKNOWN_SEGMENT}
        unknownLabel = dict(self.assignment, **{UNKNOWN_SEGMENT: max(index for index, _ in self.classes) + 1})
        for assignment in (unconfirmed, unknownLabel):
            expected = label_names.mapping_problem(assignment, self.classes, segmentNames(self.segmentation))
            check(expected is not None and UNKNOWN_SEGMENT in expected, f"{assignment} should be refused")
            check(self.refusal(assignment) == expected, f"the mapping {assignment} was not refused with {expected!r}")
        return labels

    def refusal(self, assignment: dict) -> str:
        """The message a run with this assignment is refused with; checks that it started nothing and left
        nothing behind."""
        def mustNotStart(command, args, cwd):
            raise AssertionError(f"a run started with the mapping {assignment}")

        before = self.snapshot()
        try:
            self.start("generate", assignment, startRun=mustNotStart)
        except ValueError as error:
            message = str(error)
        else:
            message = ""
        left = self.leftBehind(*before)
        check(not left, f"a refused run left {left}")
        return message

    def checkGenerate(self):
        """A generated result on the scan's grid and geometry, marked synthetic with its provenance."""
        job = self.start("generate")
        results = self.finish(job)
        check(len(results) == 1, f"generate gave {len(results)} results")
        [result] = results
        self.resultMatchesScanGrid(result)
        check(result.GetAttribute(PROVENANCE_PREFIX + "task") == "generate", "the result carries no provenance")
        check(not os.path.exists(job.folder.path), "the run's folder is still there")
        return result

    def checkInpaint(self):
        """The lesion inpainted: outside it every voxel equals the scan's, inside it changed."""
        job = self.start("inpaint")
        [result] = self.finish(job)
        self.resultMatchesScanGrid(result)
        outside = ~self.masks[UNKNOWN_SEGMENT]
        voxels, scanVoxels = slicer.util.arrayFromVolume(result), slicer.util.arrayFromVolume(self.scan)
        check(np.array_equal(voxels[outside], scanVoxels[outside]), "voxels outside the inpainted segment changed")
        check(not np.array_equal(voxels[~outside], scanVoxels[~outside]), "the inpainted segment did not change")
        return result

    def checkCancel(self) -> None:
        """A run cancelled while sampling adds no node and leaves no folder."""
        before = self.snapshot()
        job = self.start("generate", steps=500, variants=4)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while job.run.step == 0 and not job.run.done and time.monotonic() < deadline:
            jobs.waitForJob(job, 0.05, self.idle)  # cancel once it samples (after start-up), as a user would
        job.run.cancel()
        check(jobs.waitForJob(job, 30.0, self.idle), "the run did not stop within 30 s of cancel")
        check(job.run.state == "cancelled", f"the run ended as {job.run.state} ({job.run.error}), not cancelled")
        check(self.finish(job) == [], "a cancelled run added results")
        left = self.leftBehind(*before)
        check(not left, f"a cancelled run left {left}")

    def checkFailedRun(self) -> None:
        """A run the command line fails (here: a model folder that does not exist) raises its message and
        adds nothing."""
        missing = os.path.join(self.temporaryPath, "no-such-model")

        def startWithMissingModel(command, args, cwd):
            return self.startRun(command, dict(args, model=missing), cwd)

        before = self.snapshot()
        job = self.start("generate", startRun=startWithMissingModel)
        try:
            self.finish(job)
        except cli_runner.MedGenRunError as error:
            check("no-such-model" in str(error), f"the failed run's message does not name the model: {error}")
        else:
            raise AssertionError("a run with a missing model did not fail")
        left = self.leftBehind(*before)
        check(not left, f"a failed run left {left}")

    def checkUnreadableResult(self) -> None:
        """Results of which one cannot be read: none is added (the one read first is removed again)."""
        before = self.snapshot()
        folder = cli_runner.RunFolder(parent=self.temporaryPath)
        readable, unreadable = folder.file("result_seed1.nrrd"), folder.file("result_seed2.nrrd")
        writeNode(self.scene, self.scan, readable)
        with open(unreadable, "w") as file:
            file.write("NRRD0004\nthis is not a volume\n")
        job = MedGenJob("generate", EndedRun("succeeded", [readable, unreadable]), folder, self.scan,
                             dict(self.options))
        try:
            jobs.endJob(self.scene, job)
        except ValueError as error:
            check("result_seed2.nrrd" in str(error), f"the error does not name the unreadable file: {error}")
        else:
            raise AssertionError("an unreadable result was loaded")
        left = self.leftBehind(*before)
        check(not left, f"results that could not be loaded left {left}")

    STEPS = ("checkLabelMap", "checkGenerate", "checkInpaint", "checkCancel", "checkFailedRun", "checkUnreadableResult")

    def runAll(self, report=None) -> None:
        """Every check in turn (STEPS); `report(message)` after each."""
        for name in self.STEPS:
            getattr(self, name)()
            if report is not None:
                report(f"MedGen: {name[5:]} passed")
