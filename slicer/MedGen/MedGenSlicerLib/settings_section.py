"""The Settings box of the MedGen panel: the napari-medgen executable, its check (which lists the
models), the background worker and the device. Needs Slicer's Python (qt, ctk, slicer)."""

import ctk
import qt
import slicer
from MedGenLib.command_lines import DEVICES, MedGenRunError, executable_problem

from .panel import collapsibleForm, waitCursor


class SettingsSection:
    """The settings widgets; every change goes straight to the logic's settings, and each check of the
    executable hands the models it lists (none when it failed) to `onModels`."""

    def __init__(self, layout, logic, onModels) -> None:
        self.logic = logic
        self.onModels = onModels
        self.box, form = collapsibleForm(layout, "Settings")
        self.executableEdit = ctk.ctkPathLineEdit()
        self.executableEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Executable
        self.executableEdit.currentPath = logic.executable()
        self.executableEdit.toolTip = "The napari-medgen command of an environment where napari-medgen is installed"
        form.addRow("napari-medgen executable:", self.executableEdit)
        self.checkButton = qt.QPushButton("Check and list models")
        self.checkButton.toolTip = "Runs `napari-medgen models` with this executable"
        form.addRow(self.checkButton)
        self.status = qt.QLabel("")
        self.status.wordWrap = True
        form.addRow(self.status)
        self.workerCheck = qt.QCheckBox("Keep napari-medgen loaded between runs (a background worker)")
        self.workerCheck.checked = logic.useWorker()
        self.workerCheck.toolTip = "The first run pays the imports and model loading; later runs start at once"
        form.addRow(self.workerCheck)
        self.deviceCombo = qt.QComboBox()
        self.deviceCombo.addItems(list(DEVICES))
        self.deviceCombo.currentText = logic.device()
        form.addRow("Device:", self.deviceCombo)

        self.executableEdit.connect("currentPathChanged(QString)", self.onExecutableChanged)
        self.checkButton.connect("clicked(bool)", self.onCheckExecutable)
        self.workerCheck.connect("toggled(bool)", logic.setUseWorker)
        self.deviceCombo.connect("currentIndexChanged(int)", lambda index: logic.setDevice(DEVICES[index]))

    @property
    def device(self) -> str:
        """The device picked for runs (one of DEVICES)."""
        return self.deviceCombo.currentText

    def checkIfSet(self) -> None:
        """The panel's first view: with a usable executable already set, collapse the box and list the
        models without a message box; otherwise leave the box open to set one."""
        self.box.collapsed = executable_problem(self.logic.executable()) is None
        if self.box.collapsed:
            self.onCheckExecutable(quiet=True)

    def onExecutableChanged(self, path: str) -> None:
        """Keep a new path in the settings; the last check's words no longer apply to it."""
        self.logic.setExecutable(path)
        self.status.text = ""

    def onCheckExecutable(self, checked: bool = False, quiet: bool = False) -> None:
        """Run `napari-medgen models`: say whether the executable works and which models it has."""
        try:
            with waitCursor():
                models = self.logic.listModels()
        except MedGenRunError as error:
            models = []
            self.status.text = f"Not usable: {error}"
            if not quiet:
                slicer.util.errorDisplay(f"napari-medgen cannot be used:\n{error}")
        else:
            names = ", ".join(model.name for model in models) or "none"
            self.status.text = f"napari-medgen works; models: {names}"
        self.onModels(models)
