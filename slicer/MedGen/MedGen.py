"""MedGen: anatomy-conditioned diffusion synthesis in 3D Slicer, through napari-medgen's command line.

Slicer's Python cannot easily hold torch and MONAI, so this module runs `napari-medgen generate|inpaint
--progress jsonl` from a separate environment as a subprocess (or one long-lived `napari-medgen serve`
worker), as SlicerTotalSegmentator and SlicerMONAIAuto3DSeg run their inference. What runs without Slicer
(command lines, processes, jsonl events, cancelling, errors, models, segment names, result names) lives in
MedGenLib, tested in napari-medgen's CI; what needs Slicer is here (Module / Widget / Logic / Test, a timer
polling the run) and in MedGenSlicerLib (the panel's sections, writing and reading nodes).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import qt
import slicer
import vtk
from MedGenLib import cli_runner, label_names, models
from MedGenLib.command_lines import DEVICES
from MedGenLib.results import MedGenJob, describe_results, sampling_arguments
from MedGenLib.serve_client import ServeWorker
from MedGenSlicerLib import nodes
from MedGenSlicerLib.inputs_section import InputsSection
from MedGenSlicerLib.panel import waitCursor
from MedGenSlicerLib.run_controls import RunControls
from MedGenSlicerLib.settings_section import SettingsSection
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

SETTINGS_EXECUTABLE = "MedGen/Executable"
SETTINGS_USE_WORKER = "MedGen/UseWorker"
SETTINGS_DEVICE = "MedGen/Device"
POLL_INTERVAL_MS = 200
logger = logging.getLogger(__name__)


#
# MedGen
#


class MedGen(ScriptedLoadableModule):
    """Module description (Slicer's module panel, help and acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedGen"
        self.parent.categories = ["Image Synthesis"]
        self.parent.dependencies = []
        self.parent.contributors = ["napari-medgen developers"]
        self.parent.helpText = """
Generate a synthetic scan that follows a segmentation, or inpaint one segment of a scan (remove a
structure, insert a lesion, repair an artefact) with a local diffusion model. The work is done by the
<b>napari-medgen</b> command line of a separate Python environment: set its executable under Settings.
Results are new volumes, named and marked as synthetic (node attribute MedGen.Synthetic).
See slicer/README.md in napari-medgen.
"""
        self.parent.acknowledgementText = """
Runs napari-medgen (MONAI networks and schedulers, PyTorch, SimpleITK) as a subprocess; laid out as
Slicer's extension wizard makes scripted modules.
"""


#
# MedGenWidget
#


class MedGenWidget(ScriptedLoadableModuleWidget):
    """The module panel: settings, inputs, segment-to-class table, sampling options, Generate / Inpaint.
    Its sections are built in MedGenSlicerLib; this class connects them and follows the running job."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self.inputs = None
        self.job = None  # the running MedGenJob, if any
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = MedGenLogic()
        self.settings = SettingsSection(self.layout, self.logic, onModels=lambda models: self.inputs.setModels(models))
        self.inputs = InputsSection(self.layout, self.logic, onModelPicked=self.onModelPicked,
                                    onSegments=lambda names: self.controls.setRegions(names),
                                    onChanged=self.updateButtons)
        self.controls = RunControls(self.layout, self.onRunButton)
        self.layout.addStretch(1)
        slicer.app.connect("aboutToQuit()", self.cleanup)
        self.settings.checkIfSet()
        self.updateButtons()

    def cleanup(self) -> None:
        """Module closed or Slicer quitting: cancel a run and end the worker."""
        self.timer.stop()
        if self.inputs is not None:
            self.inputs.removeObservers()
        if self.job is not None:
            self.job.run.cancel()
            self.job.run.wait(2.0)  # stopped within its grace period: nothing of it is written
            self.job.folder.remove()
            self.job = None
        if self.logic is not None:
            self.logic.stopWorker()
            self.logic.removeTemporaryNodes()

    def onModelPicked(self, model: models.ModelInfo | None) -> None:
        """A model was picked: start from its default guidance."""
        if model is not None and model.default_guidance is not None:
            self.controls.guidanceSpin.value = model.default_guidance

    def updateButtons(self, *args) -> None:
        """Enable what can be pressed now (called after any change of the inputs and when a run starts or ends)."""
        self.controls.updateButtons(running=self.job is not None,
                                    model=self.inputs.currentModel() if self.inputs.ready() else None)

    def onRunButton(self, command: str) -> None:
        """Generate / Inpaint: write the inputs and start the run; the same button while it runs: cancel it."""
        if self.job is not None:
            self.job.run.cancel()
            self.controls.statusLabel.text = "Cancelling..."
            return
        inputs = self.inputs
        try:
            with waitCursor():
                self.job = self.logic.start(
                    command, inputs.scanSelector.currentNode(), inputs.anatomySelector.currentNode(),
                    inputs.assignment(), self.controls.options(inputs.currentModel(), self.settings.device),
                    regionSegment=self.controls.regionCombo.currentText,
                    followLabels=self.controls.followLabelsCheck.checked)
        except (cli_runner.MedGenRunError, ValueError) as error:
            slicer.util.errorDisplay(f"{command.capitalize()} could not start:\n{error}")
            return
        self.controls.showStarted(command)
        self.updateButtons()
        self.timer.start()

    def onPoll(self) -> None:
        """The timer's tick: pass the run's new events to the controls; its last one finishes the job."""
        job = self.job
        if job is None:
            self.timer.stop()
            return
        for event in job.run.poll():
            if event.get("event") in cli_runner.TERMINAL_EVENTS:
                self.finish(job, event)
                return
            self.controls.showEvent(event)

    def finish(self, job: MedGenJob, event: dict) -> None:
        """The run has ended: load its results, or say why there are none; its folder goes either way."""
        self.timer.stop()
        self.job = None
        self.controls.showEnded()
        status = self.controls.statusLabel
        try:
            if job.run.state == "succeeded":
                loaded = self.logic.loadResults(job)
                status.text = f"Done in {time.monotonic() - job.run.started_at:.0f} s: " + ", ".join(
                    node.GetName() for node in loaded)
            elif job.run.state == "cancelled":
                status.text = "Cancelled; nothing was added."
            else:
                status.text = "Failed."
                slicer.util.errorDisplay(f"{job.command.capitalize()} failed:\n{job.run.error}")
        except Exception as error:  # loading the result failed: say it in words, keep the scene as it was
            logger.exception("MedGen: loading the result failed")
            slicer.util.errorDisplay(f"The result could not be loaded:\n{error}")
        finally:
            job.folder.remove()
            self.updateButtons()


#
# MedGenLogic
#


class MedGenLogic(ScriptedLoadableModuleLogic):
    """Writes nodes to files, starts runs through MedGenLib, loads results. Usable without the widget:

        logic = MedGenLogic()
        job = logic.start("generate", scanNode, segmentationNode, {"CSF": 1, "grey matter": 2}, {"steps": 20})
        job.run.wait(); nodes = logic.loadResults(job); job.folder.remove()
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.worker = None
        self.importedSegmentations = nodes.ImportedSegmentations()  # the anatomy given as label maps

    # -- settings --
    def executable(self) -> str:
        """The napari-medgen executable kept in Slicer's settings ("" until one is set)."""
        return str(qt.QSettings().value(SETTINGS_EXECUTABLE, "") or "")

    def setExecutable(self, path: str) -> None:
        qt.QSettings().setValue(SETTINGS_EXECUTABLE, str(path or "").strip())
        self.stopWorker()  # a worker of the previous executable

    def useWorker(self) -> bool:
        """Whether runs go to one long-lived `napari-medgen serve` worker rather than a process each."""
        return str(qt.QSettings().value(SETTINGS_USE_WORKER, "false")).lower() == "true"

    def setUseWorker(self, on: bool) -> None:
        qt.QSettings().setValue(SETTINGS_USE_WORKER, "true" if on else "false")
        if not on:
            self.stopWorker()

    def device(self) -> str:
        """The device kept in the settings (one of DEVICES; "auto" for anything else)."""
        value = str(qt.QSettings().value(SETTINGS_DEVICE, "auto") or "auto")
        return value if value in DEVICES else "auto"

    def setDevice(self, device: str) -> None:
        qt.QSettings().setValue(SETTINGS_DEVICE, device)

    def environment(self) -> dict[str, str]:
        """The environment Slicer was started in, without its own Python settings."""
        return cli_runner.clean_environment(slicer.util.startupEnvironment())

    def listModels(self) -> list[models.ModelInfo]:
        """The models of the configured napari-medgen (raises MedGenRunError in words)."""
        return models.list_models(self.executable(), env=self.environment())

    # -- anatomy --
    def segmentationFor(self, anatomyNode):
        """A segmentation node for the anatomy: itself, or one imported (once per change) from a label map,
        whose segments are named after the label map's colour names."""
        if anatomyNode is None or anatomyNode.IsA("vtkMRMLSegmentationNode"):
            return anatomyNode
        return self.importedSegmentations.get(anatomyNode)

    def removeTemporaryNodes(self) -> None:
        """Remove the segmentations imported from label maps (module closed, Slicer quitting)."""
        self.importedSegmentations.removeAll()

    def segmentNames(self, anatomyNode) -> list[str]:
        """The anatomy's segment names (a label map's colour names); none without an anatomy."""
        segmentation = self.segmentationFor(anatomyNode)
        return nodes.segmentNames(segmentation) if segmentation is not None else []

    # -- runs --
    def start(self, command: str, scanNode, anatomyNode, assignment: dict[str, int], options: dict,
              regionSegment: str | None = None, followLabels: bool = True) -> MedGenJob:
        """Write the inputs and start a generate / inpaint run; returns a MedGenJob (raises ValueError or
        MedGenRunError with what to do)."""
        if scanNode is None or scanNode.GetImageData() is None:
            raise ValueError("pick a scan (a scalar volume with voxels)")
        segmentation = self.segmentationFor(anatomyNode)
        if segmentation is None:
            raise ValueError("pick the anatomy: a segmentation or a label map")
        folder = cli_runner.RunFolder(parent=slicer.app.temporaryPath)
        try:
            sampling = sampling_arguments(options)
            out = folder.file("result.nrrd")
            labelsPath = None
            if command == "generate" or followLabels:
                problem = label_names.mapping_problem(assignment, models.model_classes(options.get("model")))
                if problem and command == "generate":
                    raise ValueError(problem)
                if not problem:
                    labelsPath = nodes.writeLabelMap(segmentation, assignment, scanNode, folder.file("labels.nrrd"))
            if command == "generate":
                args = cli_runner.generate_arguments(labelsPath, out, **sampling)
            else:
                regionPath, imagePath = nodes.writeRegionAndScan(segmentation, regionSegment, scanNode, folder)
                args = cli_runner.inpaint_arguments(imagePath, regionPath, out, labels=labelsPath, **sampling)
            run = self._startRun(command, args, folder.path)
        except Exception:
            folder.remove()
            raise
        return MedGenJob(command, run, folder, scanNode, dict(options, region=regionSegment))

    def _startRun(self, command, args, cwd):
        executable = self.executable()
        if not self.useWorker():
            return cli_runner.start_run(executable, command, args, env=self.environment(), cwd=cwd)
        if self.worker is None or not self.worker.alive:
            self.worker = ServeWorker(executable, env=self.environment(), cwd=slicer.app.temporaryPath)
        return self.worker.submit(command, args)

    def stopWorker(self) -> None:
        """End the background worker, if one runs (its running request ends as cancelled)."""
        if self.worker is not None and self.worker.alive:
            self.worker.stop()
        self.worker = None

    def loadResults(self, job: MedGenJob) -> list:
        """Load a finished run's files as new volume nodes, named and marked synthetic."""
        scan = job.scanNode
        results = describe_results(job.command, job.options, job.run.paths, scan.GetName(), scan.GetID())
        loaded = [nodes.loadResult(result, scan) for result in results]
        if loaded:
            slicer.util.setSliceViewerLayers(background=loaded[0])
        return loaded


#
# MedGenTest
#


class MedGenTest(ScriptedLoadableModuleTest):
    """Tests run inside Slicer (Reload and Test, or ctest). The process handling is tested without Slicer
    in napari-medgen's tests/test_slicer_logic.py; here: the Slicer side, end to end when napari-medgen is set."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_SegmentNamesMatchClasses()
        self.setUp()
        self.test_GenerateAndInpaint()

    def test_SegmentNamesMatchClasses(self):
        classes = [(0, "background"), (1, "CSF"), (2, "grey matter"), (3, "white matter")]
        matched, unmatched = label_names.match_segments(["csf", "Gray_Matter", "Segment_1"], classes)
        self.assertEqual(matched, {"csf": 1, "Gray_Matter": 2})
        self.assertEqual(unmatched, ["Segment_1"])

    def _scanAndSegmentation(self):
        shape = (4, 48, 48)
        _, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
        radius = np.hypot(y - 24, x - 24)
        scan = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "test scan")
        scan.SetSpacing(2.0, 2.0, 2.0)
        slicer.util.updateVolumeFromArray(scan, (1000.0 - 30.0 * radius).clip(0).astype(np.float32))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "test anatomy")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(scan)
        for name, low, high in (("white matter", 0, 8), ("grey matter", 8, 14), ("CSF", 14, 18)):
            segmentId = segmentation.GetSegmentation().AddEmptySegment(name, name)
            mask = ((radius >= low) & (radius < high)).astype(np.uint8)
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segmentId, scan)
        return scan, segmentation

    def _wait(self, job, timeout=600):
        deadline = time.monotonic() + timeout
        while not job.run.done and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertTrue(job.run.done, "napari-medgen did not finish")

    def test_GenerateAndInpaint(self):
        logic = MedGenLogic()
        if cli_runner.executable_problem(logic.executable()):
            self.delayDisplay("Skipped: set the napari-medgen executable in the MedGen module's settings")
            return
        available = [m for m in logic.listModels() if m.supports("inpaint") and m.classes]
        self.assertTrue(available, "napari-medgen lists no model that generates and inpaints")
        model = available[0]
        scan, segmentation = self._scanAndSegmentation()
        assignment, _ = label_names.match_segments(logic.segmentNames(segmentation), model.classes)
        options = {"model": model, "steps": 2, "seed": 1, "guidance": 1.0, "variants": 1, "device": "cpu"}

        job = logic.start("generate", scan, segmentation, assignment, options)
        self._wait(job)
        self.assertEqual(job.run.state, "succeeded", job.run.error)
        [generated] = logic.loadResults(job)
        job.folder.remove()
        self.assertEqual(generated.GetAttribute("MedGen.Synthetic"), "true")
        self.assertEqual(generated.GetImageData().GetDimensions(), scan.GetImageData().GetDimensions())
        matrix, scanMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        generated.GetIJKToRASMatrix(matrix)
        scan.GetIJKToRASMatrix(scanMatrix)
        for i in range(3):
            for j in range(4):
                self.assertAlmostEqual(matrix.GetElement(i, j), scanMatrix.GetElement(i, j), places=4)

        job = logic.start("inpaint", scan, segmentation, assignment, options, regionSegment="CSF")
        self._wait(job)
        self.assertEqual(job.run.state, "succeeded", job.run.error)
        [inpainted] = logic.loadResults(job)
        job.folder.remove()
        outside = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, "CSF", scan) == 0
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(inpainted)[outside],
                                       slicer.util.arrayFromVolume(scan)[outside]))

        job = logic.start("generate", scan, segmentation, assignment, dict(options, steps=500, variants=4))
        deadline = time.monotonic() + 300
        while job.run.step == 0 and not job.run.done and time.monotonic() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        job.run.cancel()
        self._wait(job, timeout=10)
        self.assertEqual(job.run.state, "cancelled")
        job.folder.remove()
        self.delayDisplay("MedGen test passed")
