"""The Sampling and Run boxes of the MedGen panel: steps, seed, guidance and variants; Generate, the
inpaint region and Inpaint (the button of a running run turns into Cancel), a progress bar and a status
line that follow the run's events. Needs Slicer's Python (qt, ctk)."""

import logging

import qt
from MedGenLib.command_lines import RUN_COMMANDS

from .panel import collapsibleForm, spinBox

logger = logging.getLogger("MedGen")


class RunControls:
    """The sampling options and run buttons; a press of Generate or Inpaint calls `onRunButton(command)`
    (also while running: the same button is then Cancel)."""

    def __init__(self, layout, onRunButton) -> None:
        _, samplingForm = collapsibleForm(layout, "Sampling")
        self.stepsSpin = spinBox(1, 1000, 20, "Network calls per slice batch: more is slower and finer")
        samplingForm.addRow("Steps:", self.stepsSpin)
        self.seedSpin = spinBox(0, 2**31 - 1, 0, "Same seed and inputs: the same result; variant k uses seed + k")
        samplingForm.addRow("Seed:", self.seedSpin)
        self.guidanceSpin = qt.QDoubleSpinBox()
        self.guidanceSpin.setRange(0.0, 20.0)
        self.guidanceSpin.singleStep = 0.25
        self.guidanceSpin.value = 1.0
        self.guidanceSpin.toolTip = "Classifier-free guidance (1 = none); set to the model's default when it is picked"
        samplingForm.addRow("Guidance:", self.guidanceSpin)
        self.variantsSpin = spinBox(1, 16, 1, "Number of results, with seeds seed, seed + 1, ...")
        samplingForm.addRow("Variants:", self.variantsSpin)

        _, runForm = collapsibleForm(layout, "Run")
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
        self.runButton = None  # the button that turned into Cancel

        self.generateButton.connect("clicked(bool)", lambda checked: onRunButton("generate"))
        self.inpaintButton.connect("clicked(bool)", lambda checked: onRunButton("inpaint"))

    def options(self, model, device: str) -> dict:
        """The sampling options of a run with `model` on `device`, as MedGenLogic.start takes them."""
        return {"model": model, "steps": self.stepsSpin.value, "seed": self.seedSpin.value,
                "guidance": self.guidanceSpin.value, "variants": self.variantsSpin.value, "device": device}

    def setRegions(self, names: list[str]) -> None:
        """The segments one can inpaint."""
        self.regionCombo.clear()
        self.regionCombo.addItems(names)

    def updateButtons(self, running: bool, model) -> None:
        """While running, only Cancel can be pressed; otherwise a command can run when `model` (None until
        scan, anatomy and model are all picked) supports it and, for inpainting, there is a region."""
        for button, command in zip((self.generateButton, self.inpaintButton), RUN_COMMANDS):
            if running:
                button.enabled = button is self.runButton  # the Cancel button
            else:
                button.text = command.capitalize()
                button.enabled = bool(model is not None and model.supports(command)
                                      and (command == "generate" or self.regionCombo.count > 0))

    def showStarted(self, command: str) -> None:
        """The run's button turns into Cancel; the progress bar is busy until the first progress event."""
        self.runButton = self.generateButton if command == "generate" else self.inpaintButton
        self.runButton.text = "Cancel"
        self.progressBar.visible = True
        self.progressBar.setRange(0, 0)  # busy until the first progress event
        self.statusLabel.text = "Starting napari-medgen (imports and model loading take a few seconds)..."

    def showEvent(self, event: dict) -> None:
        """Follow a non-terminal event of the run: its progress, or that it has started."""
        kind = event.get("event")
        if kind == "progress" and event.get("total"):
            self.progressBar.setRange(0, int(event["total"]))
            self.progressBar.value = int(event["step"])
            self.statusLabel.text = f"Sampling: step {event['step']} of {event['total']} {event.get('message', '')}"
            if event.get("notice"):
                logger.warning(f"MedGen: {event['notice']}")
        elif kind == "started":
            self.statusLabel.text = "Running..."

    def showEnded(self) -> None:
        """The run is over: no Cancel button, no progress bar (the caller says how it ended)."""
        self.runButton = None
        self.progressBar.visible = False
