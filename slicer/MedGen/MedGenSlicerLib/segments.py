"""The anatomy's segments on the scan's voxel grid, in the scene a caller gives: segments as arrays, the
label map by class index that the command line reads (segments matched to the model's classes by name, as
the user confirmed them), the inpainting region, and a label map volume imported as segments.

Segments go in and out through the static functions of Slicer's segmentations logic
(`vtkSlicerSegmentationsModuleLogic`), whose converter rules Slicer registers at start-up (a bare
`slicer-core` scene gets them from a segmentations logic set on it). Runs in Slicer and on the wheel alike.
"""

import numpy as np
import slicer
import vtk
from MedGenLib import label_names

from .nodes import addHiddenNode, gridShape, nodesRemovedAfter, removeNode, writeArray


def segmentationsLogic():
    """The segmentations logic's class, whose static functions these use (no logic object is needed); looked
    up when called, as Slicer adds its Python classes once the Segmentations module has loaded."""
    return slicer.vtkSlicerSegmentationsModuleLogic


def segmentNames(segmentation) -> list:
    """The names of a segmentation's segments, in its order."""
    segments = segmentation.GetSegmentation()
    return [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]


def segmentIds(segmentation, name: str) -> list:
    """The IDs of the segments called `name` (names need not be unique in Slicer)."""
    segments = segmentation.GetSegmentation()
    return [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())
            if segments.GetNthSegment(i).GetName() == name]


def idList(segmentId: str):
    """One segment ID as the vtkStringArray Slicer's segment functions take."""
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segmentId)
    return ids


def addSegmentFromArray(scene, segmentation, name: str, mask: np.ndarray, scanNode) -> str:
    """A new segment called `name` holding `mask` (k, j, i, non-zero inside) on the scan's grid; its ID."""
    segmentId = segmentation.GetSegmentation().AddEmptySegment("", name)
    labelMap = slicer.vtkMRMLLabelMapVolumeNode()  # outside the scene: an import needs none
    labelMap.CopyOrientation(scanNode)
    slicer.util.updateVolumeFromArray(labelMap, (np.asarray(mask) > 0).astype(np.uint8))
    if not segmentationsLogic().ImportLabelmapToSegmentationNode(labelMap, segmentation, idList(segmentId)):
        segmentation.GetSegmentation().RemoveSegment(segmentId)
        raise ValueError(f"the segment {name!r} could not be made from an array")
    return segmentId


def segmentMask(scene, segmentation, segmentId: str, scanNode) -> np.ndarray:
    """A segment's voxels on the scan's grid (k, j, i) as a boolean array; all False for an empty segment."""
    with nodesRemovedAfter(scene):  # the export's label map, with the display and colour nodes it gets
        labelMap = addHiddenNode(scene, "vtkMRMLLabelMapVolumeNode", "MedGen segment")
        exported = segmentationsLogic().ExportSegmentsToLabelmapNode(
            segmentation, idList(segmentId), labelMap, scanNode, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not exported or labelMap.GetImageData() is None:  # some Slicer versions refuse an empty segment
            return np.zeros(gridShape(scanNode), bool)
        return slicer.util.arrayFromVolume(labelMap) > 0


def paintSegments(scene, array: np.ndarray, segmentation, name: str, value: int, scanNode) -> None:
    """Set `value` in `array` wherever a segment called `name` is, on the scan's grid."""
    for segmentId in segmentIds(segmentation, name):
        array[segmentMask(scene, segmentation, segmentId, scanNode)] = value


def labelArray(scene, segmentation, assignment: dict, classes: list, scanNode) -> np.ndarray:
    """The segments painted into one label map on the scan's voxel grid (k, j, i), by class index, as
    `assignment` ({segment name: class index or IGNORE}) maps them; raises ValueError with the module's
    message (label_names.mapping_problem) when a segment is not in it or is given a label of no class."""
    problem = label_names.mapping_problem(assignment, classes, segmentNames(segmentation))
    if problem:
        raise ValueError(problem)
    largest = max([index for index in assignment.values()] + [0])
    array = np.zeros(gridShape(scanNode), np.uint8 if largest < 256 else np.uint16)
    for name, index in label_names.paint_order(assignment):
        paintSegments(scene, array, segmentation, name, index, scanNode)
    return array


def regionArray(scene, segmentation, regionSegment: str, scanNode) -> np.ndarray:
    """The inpainting region (1 inside the segment called `regionSegment`) on the scan's voxel grid;
    raises ValueError when there is no such segment or it is empty inside the scan."""
    name = regionSegment or ""
    if not segmentIds(segmentation, name):
        raise ValueError("pick the segment to inpaint (the region)")
    region = np.zeros(gridShape(scanNode), np.uint8)
    paintSegments(scene, region, segmentation, name, 1, scanNode)
    if not region.any():
        raise ValueError(f"the region segment {regionSegment!r} is empty inside the scan")
    return region


def writeLabelMap(scene, segmentation, assignment: dict, classes: list, scanNode, path: str) -> str:
    """The segments as one label map by class index (`labelArray`), written to `path` in the scan's geometry."""
    writeArray(scene, labelArray(scene, segmentation, assignment, classes, scanNode), scanNode, path, "labels")
    return path


def writeRegion(scene, segmentation, regionSegment: str, scanNode, path: str) -> str:
    """The inpainting region (`regionArray`), written to `path` in the scan's geometry."""
    writeArray(scene, regionArray(scene, segmentation, regionSegment, scanNode), scanNode, path, "region")
    return path


def importLabelMap(scene, labelMapNode):
    """A hidden segmentation (not saved with the scene, not shown) made from a label map, its segments
    named after the label map's colour names; raises ValueError when Slicer cannot read it as segments."""
    segmentation = addHiddenNode(scene, "vtkMRMLSegmentationNode", f"{labelMapNode.GetName()} (MedGen)")
    segmentation.SetSaveWithScene(False)
    if not segmentationsLogic().ImportLabelmapToSegmentationNode(labelMapNode, segmentation):
        removeNode(scene, segmentation)
        raise ValueError(f"the label map {labelMapNode.GetName()} could not be read as segments")
    if segmentation.GetDisplayNode() is not None:
        segmentation.GetDisplayNode().SetVisibility(False)
    return segmentation


class ImportedSegmentations:
    """The segmentations imported from label maps into `scene`, one per label map, imported again only
    after the label map has changed (the logic asks for one on every change of the panel)."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.byLabelMap = {}  # label map node ID -> (its MTime, the segmentation imported from it)

    def get(self, labelMapNode):
        """The segmentation of this label map: the one imported before if the label map is unchanged."""
        imageData = labelMapNode.GetImageData()
        mtime = labelMapNode.GetMTime() + (imageData.GetMTime() if imageData else 0)
        cached = self.byLabelMap.get(labelMapNode.GetID())
        if cached is not None and cached[0] == mtime and self.scene.IsNodePresent(cached[1]):
            return cached[1]
        if cached is not None:
            removeNode(self.scene, cached[1])
        segmentation = importLabelMap(self.scene, labelMapNode)
        self.byLabelMap[labelMapNode.GetID()] = (mtime, segmentation)
        return segmentation

    def removeAll(self) -> None:
        """Remove every imported segmentation from the scene."""
        for _, node in self.byLabelMap.values():
            removeNode(self.scene, node)
        self.byLabelMap = {}
