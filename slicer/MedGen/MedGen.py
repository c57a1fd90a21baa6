"""MedGen: anatomy-conditioned diffusion synthesis in 3D Slicer, through napari-medgen's command line.

Slicer's Python cannot easily hold torch and MONAI, so this module runs `napari-medgen generate|inpaint
--progress jsonl` from a separate environment as a subprocess (or one long-lived `napari-medgen serve`
worker), as SlicerTotalSegmentator and SlicerMONAIAuto3DSeg run their inference. Everything that can
run without Slicer (command lines, process groups, the jsonl events, cancelling, errors, model lists,
segment-name matching) lives in MedGenLib and is tested in napari-medgen's CI; this file holds only
what needs Slicer: the widgets, writing and reading nodes, and a timer that polls the run.
"""

import contextlib
import logging
import os
import re
import time

import ctk
import numpy as np
import qt
import slicer
import vtk
from MedGenLib import cli_runner, label_names, models
from MedGenLib.serve_client import ServeWorker
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SETTINGS_EXECUTABLE = "MedGen/Executable"
SETTINGS_USE_WORKER = "MedGen/UseWorker"
SETTINGS_DEVICE = "MedGen/Device"
DEVICES = ("auto", "cpu", "cuda", "mps")
POLL_INTERVAL_MS = 200
IGNORE_TEXT = "(leave out)"
logger = logging.getLogger(__name__)


@contextlib.contextmanager
def waitCursor():
    """A busy cursor for the few seconds of a synchronous step (listing models, writing inputs)."""
    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    finally:
        slicer.app.restoreOverrideCursor()


def addHiddenNode(className, name):
    """A node in the scene that node selectors do not list (the module's temporary nodes)."""
    node = slicer.mrmlScene.CreateNodeByClass(className)
    node.SetName(name)
    node.SetHideFromEditors(True)
    slicer.mrmlScene.AddNode(node)
    node.UnRegister(None)
    return node


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


class MedGenWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: settings, inputs, segment-to-class table, sampling options, Generate / Inpaint."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.job = None  # the running MedGenJob, if any
        self.runButton = None  # the button that turned into Cancel
        self.models = []
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)

    # -- building the panel -----------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = MedGenLogic()

        settingsBox = ctk.ctkCollapsibleButton()
        settingsBox.text = "Settings"
        self.layout.addWidget(settingsBox)
        settingsForm = qt.QFormLayout(settingsBox)
        self.executableEdit = ctk.ctkPathLineEdit()
        self.executableEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Executable
        self.executableEdit.currentPath = self.logic.executable()
        self.executableEdit.toolTip = "The napari-medgen command of an environment where napari-medgen is installed"
        settingsForm.addRow("napari-medgen executable:", self.executableEdit)
        self.checkButton = qt.QPushButton("Check and list models")
        self.checkButton.toolTip = "Runs `napari-medgen models` with this executable"
        settingsForm.addRow(self.checkButton)
        self.settingsStatus = qt.QLabel("")
        self.settingsStatus.wordWrap = True
        settingsForm.addRow(self.settingsStatus)
        self.workerCheck = qt.QCheckBox("Keep napari-medgen loaded between runs (a background worker)")
        self.workerCheck.checked = self.logic.useWorker()
        self.workerCheck.toolTip = "The first run pays the imports and model loading; later runs start at once"
        settingsForm.addRow(self.workerCheck)
        self.deviceCombo = qt.QComboBox()
        self.deviceCombo.addItems(list(DEVICES))
        self.deviceCombo.currentText = self.logic.device()
        settingsForm.addRow("Device:", self.deviceCombo)

        inputsBox = ctk.ctkCollapsibleButton()
        inputsBox.text = "Inputs"
        self.layout.addWidget(inputsBox)
        inputsForm = qt.QFormLayout(inputsBox)
        self.scanSelector = self._nodeSelector(["vtkMRMLScalarVolumeNode"], "The scan: its geometry is the result's")
        inputsForm.addRow("Scan:", self.scanSelector)
        self.anatomySelector = self._nodeSelector(
            ["vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"],
            "The anatomy: a segmentation, or a label map with named colours")
        inputsForm.addRow("Anatomy:", self.anatomySelector)
        self.modelCombo = qt.QComboBox()
        inputsForm.addRow("Model:", self.modelCombo)
        self.segmentTable = qt.QTableWidget()
        self.segmentTable.setColumnCount(2)
        self.segmentTable.setHorizontalHeaderLabels(["Segment", "Model class"])
        self.segmentTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.segmentTable.verticalHeader().visible = False
        self.segmentTable.toolTip = "Segments are matched to the model's classes by name; change any here"
        inputsForm.addRow(self.segmentTable)

        samplingBox = ctk.ctkCollapsibleButton()
        samplingBox.text = "Sampling"
        self.layout.addWidget(samplingBox)
        samplingForm = qt.QFormLayout(samplingBox)
        self.stepsSpin = self._spin(1, 1000, 20, "Network calls per slice batch: more is slower and finer")
        samplingForm.addRow("Steps:", self.stepsSpin)
        self.seedSpin = self._spin(0, 2**31 - 1, 0, "Same seed and inputs: the same result; variant k uses seed + k")
        samplingForm.addRow("Seed:", self.seedSpin)
        self.guidanceSpin = qt.QDoubleSpinBox()
        self.guidanceSpin.setRange(0.0, 20.0)
        self.guidanceSpin.singleStep = 0.25
        self.guidanceSpin.value = 1.0
        self.guidanceSpin.toolTip = "Classifier-free guidance (1 = none); set to the model's default when it is picked"
        samplingForm.addRow("Guidance:", self.guidanceSpin)
        self.variantsSpin = self._spin(1, 16, 1, "Number of results, with seeds seed, seed + 1, ...")
        samplingForm.addRow("Variants:", self.variantsSpin)

        runBox = ctk.ctkCollapsibleButton()
        runBox.text = "Run"
        self.layout.addWidget(runBox)
        runForm = qt.QFormLayout(runBox)
        self.generateButton = qt.QPushButton("Generate")
        self.generateButton.toolTip = "A new synthetic scan that follows the anatomy, in the scan's geometry"
        runForm.addRow(self.generateButton)
        self.regionCombo = qt.QComboBox()
        self.regionCombo.toolTip = "The segment whose voxels are regenerated; everything outside it is kept"
        runForm.addRow("Inpaint region:", self.regionCombo)
        self.followLabelsCheck = qt.QCheckBox("Follow the anatomy labels inside the region")
        self.followLabelsCheck.checked = True
        runForm.addRow(self.followLabelsCheck)
        self.inpaintButton = qt.QPushButton("Inpaint")
        self.inpaintButton.toolTip = "Regenerate the region segment of the scan"
        runForm.addRow(self.inpaintButton)
        self.progressBar = qt.QProgressBar()
        self.progressBar.visible = False
        runForm.addRow(self.progressBar)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        runForm.addRow(self.statusLabel)
        self.layout.addStretch(1)

        self.executableEdit.connect("currentPathChanged(QString)", self.onExecutableChanged)
        self.checkButton.connect("clicked(bool)", self.onCheckExecutable)
        self.workerCheck.connect("toggled(bool)", self.logic.setUseWorker)
        self.deviceCombo.connect("currentIndexChanged(int)", lambda index: self.logic.setDevice(DEVICES[index]))
        self.scanSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.anatomySelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onAnatomyChanged)
        self.modelCombo.connect("currentIndexChanged(int)", self.onModelChanged)
        self.generateButton.connect("clicked(bool)", lambda checked: self.onRunButton("generate"))
        self.inpaintButton.connect("clicked(bool)", lambda checked: self.onRunButton("inpaint"))
        slicer.app.connect("aboutToQuit()", self.cleanup)

        settingsBox.collapsed = cli_runner.executable_problem(self.logic.executable()) is None
        if settingsBox.collapsed:
            self.onCheckExecutable(quiet=True)
        self.updateButtons()

    def _nodeSelector(self, nodeTypes, toolTip):
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = nodeTypes
        selector.selectNodeUponCreation = True
        selector.addEnabled = False
        selector.removeEnabled = False
        selector.noneEnabled = True
        selector.showHidden = False
        selector.showChildNodeTypes = False  # a label map is not a scan
        selector.setMRMLScene(slicer.mrmlScene)
        selector.toolTip = toolTip
        return selector

    def _spin(self, low, high, value, toolTip):
        spin = qt.QSpinBox()
        spin.setRange(low, high)
        spin.value = value
        spin.toolTip = toolTip
        return spin

    def cleanup(self):
        """Module closed or Slicer quitting: cancel a run and end the worker."""
        self.timer.stop()
        self.removeObservers()
        if self.job is not None:
            self.job.run.cancel()
            self.job.run.wait(2.0)  # stopped within its grace period: nothing of it is written
            self.job.folder.remove()
            self.job = None
        if self.logic is not None:
            self.logic.stopWorker()
            self.logic.removeTemporaryNodes()

    # -- settings and models ----------------------------------------------------------------------
    def onExecutableChanged(self, path):
        self.logic.setExecutable(path)
        self.settingsStatus.text = ""

    def onCheckExecutable(self, checked=False, quiet=False):
        try:
            with waitCursor():
                self.models = self.logic.listModels()
        except cli_runner.MedGenRunError as error:
            self.models = []
            self.settingsStatus.text = f"Not usable: {error}"
            if not quiet:
                slicer.util.errorDisplay(f"napari-medgen cannot be used:\n{error}")
        else:
            names = ", ".join(model.name for model in self.models) or "none"
            self.settingsStatus.text = f"napari-medgen works; models: {names}"
        self.modelCombo.clear()
        for model in self.models:
            self.modelCombo.addItem(model.label)
        self.updateButtons()

    def currentModel(self):
        index = self.modelCombo.currentIndex
        return self.models[index] if 0 <= index < len(self.models) else None

    def onModelChanged(self, index=None):
        model = self.currentModel()
        if model is not None and model.default_guidance is not None:
            self.guidanceSpin.value = model.default_guidance
        self.fillSegmentTable()
        self.updateButtons()

    # -- anatomy and the segment table ------------------------------------------------------------
    def onAnatomyChanged(self, node=None):
        self.removeObservers(self.onSegmentsChanged)
        try:
            segmentation = self.logic.segmentationFor(self.anatomySelector.currentNode())
        except ValueError as error:
            slicer.util.errorDisplay(f"The anatomy cannot be used:\n{error}")
            segmentation = None
        if segmentation is not None and segmentation.IsA("vtkMRMLSegmentationNode"):
            for event in (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                          slicer.vtkSegmentation.SegmentModified):
                self.addObserver(segmentation.GetSegmentation(), event, self.onSegmentsChanged)
        self.fillSegmentTable()
        self.updateButtons()

    def onSegmentsChanged(self, caller=None, event=None):
        self.fillSegmentTable()
        self.updateButtons()

    def fillSegmentTable(self):
        """One row per segment: its name and a class of the model, preset by name."""
        try:
            names = self.logic.segmentNames(self.anatomySelector.currentNode())
        except ValueError:  # a label map that cannot be read as segments: said when it was picked
            names = []
        model = self.currentModel()
        classes = model.classes if model is not None else []
        matched, _ = label_names.match_segments(names, classes)
        self.segmentTable.setRowCount(len(names))
        for row, name in enumerate(names):
            item = qt.QTableWidgetItem(name)
            item.setFlags(qt.Qt.ItemIsEnabled)
            self.segmentTable.setItem(row, 0, item)
            combo = qt.QComboBox()
            combo.addItem(IGNORE_TEXT)
            for index, className in classes:
                combo.addItem(f"{index}: {className}")
            if name in matched:
                combo.currentIndex = 1 + [index for index, _ in classes].index(matched[name])
            self.segmentTable.setCellWidget(row, 1, combo)
        self.regionCombo.clear()
        self.regionCombo.addItems(names)

    def segmentAssignment(self):
        """{segment name: class index or IGNORE} as set in the table."""
        model = self.currentModel()
        classes = model.classes if model is not None else []
        assignment = {}
        for row in range(self.segmentTable.rowCount):
            name = self.segmentTable.item(row, 0).text()
            choice = self.segmentTable.cellWidget(row, 1).currentIndex
            assignment[name] = classes[choice - 1][0] if choice > 0 else label_names.IGNORE
        return assignment

    # -- running ----------------------------------------------------------------------------------
    def updateButtons(self, *args):
        running = self.job is not None
        model = self.currentModel()
        ready = (self.scanSelector.currentNode() is not None and self.anatomySelector.currentNode() is not None
                 and model is not None)
        for button, command in ((self.generateButton, "generate"), (self.inpaintButton, "inpaint")):
            if running:
                button.enabled = button is self.runButton  # the Cancel button
            else:
                button.text = command.capitalize()
                button.enabled = bool(ready and model.supports(command)
                                      and (command == "generate" or self.regionCombo.count > 0))

    def onRunButton(self, command):
        if self.job is not None:
            self.job.run.cancel()
            self.statusLabel.text = "Cancelling..."
            return
        options = {"model": self.currentModel(), "steps": self.stepsSpin.value, "seed": self.seedSpin.value,
                   "guidance": self.guidanceSpin.value, "variants": self.variantsSpin.value,
                   "device": self.deviceCombo.currentText}
        try:
            with waitCursor():
                self.job = self.logic.start(
                    command, self.scanSelector.currentNode(), self.anatomySelector.currentNode(),
                    self.segmentAssignment(), options, regionSegment=self.regionCombo.currentText,
                    followLabels=self.followLabelsCheck.checked)
        except (cli_runner.MedGenRunError, ValueError) as error:
            slicer.util.errorDisplay(f"{command.capitalize()} could not start:\n{error}")
            return
        self.runButton = self.generateButton if command == "generate" else self.inpaintButton
        self.runButton.text = "Cancel"
        self.progressBar.visible = True
        self.progressBar.setRange(0, 0)  # busy until the first progress event
        self.statusLabel.text = "Starting napari-medgen (imports and model loading take a few seconds)..."
        self.updateButtons()
        self.timer.start()

    def onPoll(self):
        job = self.job
        if job is None:
            self.timer.stop()
            return
        for event in job.run.poll():
            kind = event.get("event")
            if kind == "progress" and event.get("total"):
                self.progressBar.setRange(0, int(event["total"]))
                self.progressBar.value = int(event["step"])
                self.statusLabel.text = f"Sampling: step {event['step']} of {event['total']} {event.get('message', '')}"
                if event.get("notice"):
                    logger.warning(f"MedGen: {event['notice']}")
            elif kind == "started":
                self.statusLabel.text = "Running..."
            elif kind in cli_runner.TERMINAL_EVENTS:
                self.finish(job, event)
                return

    def finish(self, job, event):
        self.timer.stop()
        self.job = None
        self.runButton = None
        self.progressBar.visible = False
        try:
            if job.run.state == "succeeded":
                nodes = self.logic.loadResults(job)
                self.statusLabel.text = f"Done in {time.monotonic() - job.run.started_at:.0f} s: " + ", ".join(
                    node.GetName() for node in nodes)
            elif job.run.state == "cancelled":
                self.statusLabel.text = "Cancelled; nothing was added."
            else:
                self.statusLabel.text = "Failed."
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


class MedGenJob:
    """One run and what it needs afterwards: its folder, the scan and the options (to name the results)."""

    def __init__(self, command, run, folder, scanNode, options):
        self.command = command
        self.run = run
        self.folder = folder
        self.scanNode = scanNode
        self.options = options


class MedGenLogic(ScriptedLoadableModuleLogic):
    """Writes nodes to files, starts runs through MedGenLib, loads results. Usable without the widget:

        logic = MedGenLogic()
        job = logic.start("generate", scanNode, segmentationNode, {"CSF": 1, "grey matter": 2}, {"steps": 20})
        job.run.wait(); nodes = logic.loadResults(job); job.folder.remove()
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.worker = None
        self.temporaryNodes = {}  # label map node ID -> (its MTime, the segmentation imported from it)

    # -- settings --
    def executable(self):
        return str(qt.QSettings().value(SETTINGS_EXECUTABLE, "") or "")

    def setExecutable(self, path):
        qt.QSettings().setValue(SETTINGS_EXECUTABLE, str(path or "").strip())
        self.stopWorker()  # a worker of the previous executable

    def useWorker(self):
        return str(qt.QSettings().value(SETTINGS_USE_WORKER, "false")).lower() == "true"

    def setUseWorker(self, on):
        qt.QSettings().setValue(SETTINGS_USE_WORKER, "true" if on else "false")
        if not on:
            self.stopWorker()

    def device(self):
        value = str(qt.QSettings().value(SETTINGS_DEVICE, "auto") or "auto")
        return value if value in DEVICES else "auto"

    def setDevice(self, device):
        qt.QSettings().setValue(SETTINGS_DEVICE, device)

    def environment(self):
        """The environment Slicer was started in, without its own Python settings."""
        return cli_runner.clean_environment(slicer.util.startupEnvironment())

    def listModels(self):
        """The models of the configured napari-medgen (raises MedGenRunError in words)."""
        return models.list_models(self.executable(), env=self.environment())

    # -- anatomy --
    def segmentationFor(self, anatomyNode):
        """A segmentation node for the anatomy: itself, or one imported (once per change) from a label map,
        whose segments are named after the label map's colour names."""
        if anatomyNode is None or anatomyNode.IsA("vtkMRMLSegmentationNode"):
            return anatomyNode
        mtime = anatomyNode.GetMTime() + (anatomyNode.GetImageData().GetMTime() if anatomyNode.GetImageData() else 0)
        cached = self.temporaryNodes.get(anatomyNode.GetID())
        if cached is not None and cached[0] == mtime and slicer.mrmlScene.IsNodePresent(cached[1]):
            return cached[1]
        if cached is not None and slicer.mrmlScene.IsNodePresent(cached[1]):
            slicer.mrmlScene.RemoveNode(cached[1])
        segmentation = addHiddenNode("vtkMRMLSegmentationNode", f"{anatomyNode.GetName()} (MedGen)")
        segmentation.SetSaveWithScene(False)
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(anatomyNode, segmentation):
            slicer.mrmlScene.RemoveNode(segmentation)
            raise ValueError(f"the label map {anatomyNode.GetName()} could not be read as segments")
        if segmentation.GetDisplayNode() is not None:
            segmentation.GetDisplayNode().SetVisibility(False)
        self.temporaryNodes[anatomyNode.GetID()] = (mtime, segmentation)
        return segmentation

    def removeTemporaryNodes(self):
        for _, node in self.temporaryNodes.values():
            if slicer.mrmlScene.IsNodePresent(node):
                slicer.mrmlScene.RemoveNode(node)
        self.temporaryNodes = {}

    def segmentNames(self, anatomyNode):
        segmentation = self.segmentationFor(anatomyNode)
        if segmentation is None:
            return []
        segments = segmentation.GetSegmentation()
        return [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]

    def _segmentIds(self, segmentation, name):
        segments = segmentation.GetSegmentation()
        return [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())
                if segments.GetNthSegment(i).GetName() == name]

    def segmentMask(self, segmentation, segmentId, scanNode):
        """A segment's voxels on the scan's grid (k, j, i) as a boolean array; all False for an empty segment."""
        try:
            return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, scanNode) > 0
        except RuntimeError:  # some Slicer versions refuse to export an empty segment
            return np.zeros(tuple(reversed(scanNode.GetImageData().GetDimensions())), bool)

    def labelArray(self, segmentation, assignment, scanNode):
        """The segments painted into one label map on the scan's voxel grid (k, j, i), by class index."""
        shape = tuple(reversed(scanNode.GetImageData().GetDimensions()))
        largest = max([index for index in assignment.values()] + [0])
        array = np.zeros(shape, np.uint8 if largest < 256 else np.uint16)
        for name, index in label_names.paint_order(assignment):
            for segmentId in self._segmentIds(segmentation, name):
                array[self.segmentMask(segmentation, segmentId, scanNode)] = index
        return array

    def writeArray(self, array, scanNode, path, name):
        """A label map node with `array` in the scan's geometry, written to `path` and removed again."""
        node = addHiddenNode("vtkMRMLLabelMapVolumeNode", name)
        try:
            node.CopyOrientation(scanNode)  # origin, spacing, directions
            slicer.util.updateVolumeFromArray(node, array)
            self.writeNode(node, path)
        finally:
            slicer.mrmlScene.RemoveNode(node)

    def writeNode(self, node, path):
        """Write a volume node with a storage node of its own, so the node's own file name stays as it was."""
        storage = slicer.mrmlScene.CreateNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        try:
            storage.SetFileName(path)
            storage.UseCompressionOff()
            if not storage.WriteData(node):
                raise ValueError(f"{node.GetName()} could not be written to {path}")
        finally:
            storage.UnRegister(None)

    # -- runs --
    def start(self, command, scanNode, anatomyNode, assignment, options, regionSegment=None, followLabels=True):
        """Write the inputs and start a generate / inpaint run; returns a MedGenJob (raises ValueError or
        MedGenRunError with what to do)."""
        if scanNode is None or scanNode.GetImageData() is None:
            raise ValueError("pick a scan (a scalar volume with voxels)")
        segmentation = self.segmentationFor(anatomyNode)
        if segmentation is None:
            raise ValueError("pick the anatomy: a segmentation or a label map")
        model = options.get("model")
        classes = model.classes if model is not None else []
        folder = cli_runner.RunFolder(parent=slicer.app.temporaryPath)
        try:
            sampling = {key: options.get(key) for key in ("steps", "seed", "guidance", "variants", "device")}
            sampling["model"] = model.folder if model is not None else None
            out = folder.file("result.nrrd")
            useLabels = command == "generate" or followLabels
            labelsPath = None
            if useLabels:
                problem = label_names.mapping_problem(assignment, classes)
                if problem and command == "generate":
                    raise ValueError(problem)
                if not problem:
                    labelsPath = folder.file("labels.nrrd")
                    self.writeArray(self.labelArray(segmentation, assignment, scanNode), scanNode, labelsPath, "labels")
            if command == "generate":
                args = cli_runner.generate_arguments(labelsPath, out, **sampling)
            else:
                ids = self._segmentIds(segmentation, regionSegment or "")
                if not ids:
                    raise ValueError("pick the segment to inpaint (the region)")
                region = np.zeros(tuple(reversed(scanNode.GetImageData().GetDimensions())), np.uint8)
                for segmentId in ids:
                    region[self.segmentMask(segmentation, segmentId, scanNode)] = 1
                if not region.any():
                    raise ValueError(f"the region segment {regionSegment!r} is empty inside the scan")
                regionPath, imagePath = folder.file("region.nrrd"), folder.file("image.nrrd")
                self.writeArray(region, scanNode, regionPath, "region")
                self.writeNode(scanNode, imagePath)
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

    def stopWorker(self):
        if self.worker is not None and self.worker.alive:
            self.worker.stop()
        self.worker = None

    def loadResults(self, job):
        """Load a finished run's files as new volume nodes, named and marked synthetic."""
        options, scan = job.options, job.scanNode
        model = options.get("model")
        nodes = []
        for k, path in enumerate(job.run.paths):
            found = re.search(r"_seed(-?\d+)\.", os.path.basename(path))
            seed = int(found.group(1)) if found else int(options.get("seed") or 0) + k
            what = "generated" if job.command == "generate" else f"inpainted {options.get('region')}"
            name = slicer.mrmlScene.GenerateUniqueName(f"{scan.GetName()} {what} (synthetic, seed {seed})")
            node = slicer.util.loadVolume(path, properties={"name": name, "show": False, "singleFile": True})
            attributes = {"Synthetic": "true", "Command": job.command, "Model": model.name if model else "",
                          "Seed": str(seed), "Steps": str(options.get("steps")),
                          "Guidance": str(options.get("guidance")), "Source": scan.GetID()}
            for key, value in attributes.items():
                node.SetAttribute(f"MedGen.{key}", value)
            if node.GetImageData().GetDimensions() != scan.GetImageData().GetDimensions():
                logger.warning(f"MedGen: {name} is not on the scan's voxel grid")
            node.SetAndObserveTransformNodeID(scan.GetTransformNodeID())  # the inputs were written in its frame
            storage = node.GetStorageNode()  # its file is in the run's folder, which goes next
            if storage is not None:
                slicer.mrmlScene.RemoveNode(storage)
            nodes.append(node)
        if nodes:
            slicer.util.setSliceViewerLayers(background=nodes[0])
        return nodes


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
