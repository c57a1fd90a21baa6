"""The Inputs box of the MedGen panel: the scan, the anatomy (a segmentation, or a label map with named
colours), the model, and the segment-to-class table, kept current as segments are added, removed or
renamed. Needs Slicer's Python (qt, slicer)."""

import qt
import slicer
from MedGenLib.models import model_classes
from slicer.util import VTKObservationMixin

from .panel import collapsibleForm, nodeSelector
from .segment_table import SegmentTable


class InputsSection(VTKObservationMixin):
    """The input widgets and the models to pick from. Calls `onModelPicked(model)` when the model changes
    (before the table is refilled), `onSegments(names)` whenever the segments are listed again, and
    `onChanged()` after any change of the inputs."""

    def __init__(self, layout, logic, onModelPicked, onSegments, onChanged) -> None:
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self.onModelPicked = onModelPicked
        self.onSegments = onSegments
        self.onChanged = onChanged
        self.models = []
        _, form = collapsibleForm(layout, "Inputs")
        self.scanSelector = nodeSelector(["vtkMRMLScalarVolumeNode"], "The scan: its geometry is the result's")
        form.addRow("Scan:", self.scanSelector)
        self.anatomySelector = nodeSelector(
            ["vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"],
            "The anatomy: a segmentation, or a label map with named colours")
        form.addRow("Anatomy:", self.anatomySelector)
        self.modelCombo = qt.QComboBox()
        form.addRow("Model:", self.modelCombo)
        self.segmentTable = SegmentTable()
        form.addRow(self.segmentTable.table)

        self.scanSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self.onChanged())
        self.anatomySelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onAnatomyChanged)
        self.modelCombo.connect("currentIndexChanged(int)", self.onModelChanged)

    # -- models --
    def setModels(self, models: list) -> None:
        """Offer these models (the last check of the executable's; none when it failed)."""
        self.models = models
        self.modelCombo.clear()
        for model in self.models:
            self.modelCombo.addItem(model.label)
        self.onChanged()

    def currentModel(self):
        """The picked model (a MedGenLib.models.ModelInfo), or None."""
        index = self.modelCombo.currentIndex
        return self.models[index] if 0 <= index < len(self.models) else None

    def onModelChanged(self, index=None) -> None:
        """A model was picked: its default guidance, its classes in the table."""
        self.onModelPicked(self.currentModel())
        self.fillSegmentTable()
        self.onChanged()

    # -- what a run needs --
    def ready(self) -> bool:
        """Scan, model and (for a model that takes a label map) anatomy are picked."""
        model = self.currentModel()
        return (self.scanSelector.currentNode() is not None and model is not None
                and (self.anatomySelector.currentNode() is not None or not model.takes_label_map))

    def assignment(self) -> dict[str, int]:
        """{segment name: class index or IGNORE} as set in the table for the picked model."""
        return self.segmentTable.assignment(model_classes(self.currentModel()))

    # -- anatomy and the segment table --
    def onAnatomyChanged(self, node=None) -> None:
        """Follow the new anatomy's segments (a label map is imported as segments once per change)."""
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
        self.onChanged()

    def onSegmentsChanged(self, caller=None, event=None) -> None:
        """A segment was added, removed or renamed: list the segments again."""
        self.fillSegmentTable()
        self.onChanged()

    def fillSegmentTable(self) -> None:
        """One row per segment, a class of the model preset by name; the names also go to `onSegments`."""
        try:
            names = self.logic.segmentNames(self.anatomySelector.currentNode())
        except ValueError:  # a label map that cannot be read as segments: said when it was picked
            names = []
        self.segmentTable.fill(names, model_classes(self.currentModel()))
        self.onSegments(names)
