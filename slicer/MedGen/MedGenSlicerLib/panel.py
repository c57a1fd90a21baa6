"""Small Qt pieces the MedGen panel is built from: collapsible forms, node selectors, spin boxes, and a
wait cursor for the few seconds of a synchronous step. Needs Slicer's Python (qt, ctk, slicer)."""

import contextlib

import ctk
import qt
import slicer


@contextlib.contextmanager
def waitCursor():
    """A busy cursor for the few seconds of a synchronous step (listing models, writing inputs)."""
    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    finally:
        slicer.app.restoreOverrideCursor()


def collapsibleForm(layout, title: str):
    """A collapsible box called `title` at the end of the module panel's `layout`, and the form inside it
    (returns both: the box, to collapse it; the form, to add rows)."""
    box = ctk.ctkCollapsibleButton()
    box.text = title
    layout.addWidget(box)
    return box, qt.QFormLayout(box)


def nodeSelector(nodeTypes: list[str], toolTip: str):
    """A node combo box of the scene for `nodeTypes`, without add / remove and without hidden nodes."""
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


def spinBox(low: int, high: int, value: int, toolTip: str):
    """An integer spin box from `low` to `high`, set to `value`."""
    spin = qt.QSpinBox()
    spin.setRange(low, high)
    spin.value = value
    spin.toolTip = toolTip
    return spin
