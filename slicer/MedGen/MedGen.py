"""MedGen: anatomy-conditioned diffusion synthesis in 3D Slicer, through napari-medgen's command line.

Slicer's Python cannot easily hold torch and MONAI, so this module runs `napari-medgen generate|inpaint
--progress jsonl` from a separate environment as a subprocess (or one long-lived `napari-medgen serve`
worker), as SlicerTotalSegmentator and SlicerMONAIAuto3DSeg run their inference. What runs without Slicer
(command lines, processes, jsonl events, cancelling, errors, models, segment names, result names) lives in
MedGenLib, tested in napari-medgen's CI; what needs Slicer is here (Module / Widget / Logic / Test, a timer
polling the run) and in MedGenSlicerLib: the panel's sections, and the data work (nodes, segments, jobs,
the check's scenario) as functions of a scene, which napari-medgen's CI runs on Slicer's core libraries.
"""

from __future__ import annotations

import logging
import time

import qt
import slicer
from MedGenLib import cli_runner, label_names, models
from MedGenLib.command_lines import DEVICES
from MedGenLib.results import MedGenJob
from MedGenLib.serve_client import ServeWorker
from MedGenSlicerLib import jobs, segments
from MedGenSlicerLib.conditions_section import ConditionsSection
from MedGenSlicerLib.inputs_section import InputsSection
from MedGenSlicerLib.panel import waitCursor
from MedGenSlicerLib.run_controls import RunControls
from MedGenSlicerLib.scenario import Scenario, segmentClassNames
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
        self.conditions = ConditionsSection(self.layout)
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
        """A model was picked: start from its default guidance; its attributes and modality, if it has any."""
        if model is not None and model.default_guidance is not None:
            self.controls.guidanceSpin.value = model.default_guidance
        self.conditions.showModel(model)

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
                    inputs.assignment(),
                    dict(self.controls.options(inputs.currentModel(), self.settings.device), **self.conditions.values()),
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
            loaded = self.logic.endJob(job)  # removes the run's folder; adds nothing unless it succeeded
            if job.run.state == "succeeded":
                status.text = f"Done in {time.monotonic() - job.run.started_at:.0f} s: " + ", ".join(
                    node.GetName() for node in loaded)
            else:
                status.text = "Cancelled; nothing was added."
        except cli_runner.MedGenRunError as error:
            status.text = "Failed."
            slicer.util.errorDisplay(f"{job.command.capitalize()} failed:\n{error}")
        except Exception as error:  # loading the result failed: say it in words, the scene is as it was
            logger.exception("MedGen: loading the result failed")
            status.text = "Failed."
            slicer.util.errorDisplay(f"The result could not be loaded:\n{error}")
        finally:
            self.updateButtons()


#
# MedGenLogic
#


class MedGenLogic(ScriptedLoadableModuleLogic):
    """Settings, the worker, and MedGenSlicerLib.jobs on Slicer's scene. Usable without the widget:

        logic = MedGenLogic()
        model = logic.listModels()[0]
        assignment = label_names.default_assignment(logic.segmentNames(segmentationNode), model.classes)
        job = logic.start("generate", scanNode, segmentationNode, assignment, {"model": model, "steps": 20})
        job.run.wait(); volumeNodes = logic.endJob(job)
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self.worker = None
        self.importedSegmentations = segments.ImportedSegmentations(slicer.mrmlScene)  # anatomy given as label maps

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
        return segments.segmentNames(segmentation) if segmentation is not None else []

    # -- runs --
    def start(self, command: str, scanNode, anatomyNode, assignment: dict[str, int], options: dict,
              regionSegment: str | None = None, followLabels: bool = True) -> MedGenJob:
        """Write the inputs and start a generate / inpaint run (jobs.startJob on Slicer's scene); returns a
        MedGenJob (raises ValueError or MedGenRunError with what to do)."""
        return jobs.startJob(slicer.mrmlScene, command, scanNode, self.segmentationFor(anatomyNode), assignment,
                             options, self.startRun, slicer.app.temporaryPath, regionSegment=regionSegment,
                             followLabels=followLabels)

    def startRun(self, command: str, args: dict, cwd: str):
        """A run of napari-medgen: a process of its own, or a request to the worker when that is on."""
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

    def endJob(self, job: MedGenJob) -> list:
        """A finished run's results as new volumes (jobs.endJob), the first one shown in the slice views."""
        loaded = jobs.endJob(slicer.mrmlScene, job)
        if loaded:
            slicer.util.setSliceViewerLayers(background=loaded[0])
        return loaded


#
# MedGenTest
#


class MedGenTest(ScriptedLoadableModuleTest):
    """Reload and Test: the check of an install. The scenario of MedGenSlicerLib.scenario (the same one
    napari-medgen's CI runs on Slicer's core libraries) on Slicer's scene, with the configured napari-medgen
    and the first model it lists that inpaints and has three label classes; skipped until the executable
    is set. The process handling is tested without Slicer in napari-medgen's tests/test_slicer_logic.py."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_SegmentNamesMatchClasses()
        self.setUp()
        self.test_Scenario()

    def test_SegmentNamesMatchClasses(self):
        classes = [(0, "background"), (1, "CSF"), (2, "grey matter"), (3, "white matter")]
        matched, unmatched = label_names.match_segments(["csf", "Gray_Matter", "Segment_1"], classes)
        self.assertEqual(matched, {"csf": 1, "Gray_Matter": 2})
        self.assertEqual(unmatched, ["Segment_1"])

    def test_Scenario(self):
        logic = MedGenLogic()
        if cli_runner.executable_problem(logic.executable()):
            self.delayDisplay("Skipped: set the napari-medgen executable in the MedGen module's settings")
            return
        available = [m for m in logic.listModels() if m.supports("inpaint") and len(segmentClassNames(m.classes)) == 3]
        self.assertTrue(available, "napari-medgen lists no model that inpaints and has three label classes")
        scenario = Scenario(slicer.mrmlScene, available[0], logic.startRun, slicer.app.temporaryPath,
                            idle=slicer.app.processEvents, device=logic.device())
        try:
            scenario.runAll(report=self.delayDisplay)
        finally:
            logic.stopWorker()
        self.delayDisplay("MedGen test passed")
