"""The MRML node handling of the MedGen logic: hidden temporary nodes, segments as arrays on the scan's
voxel grid, inputs written to files with storage nodes of their own, results loaded as marked volumes.
Needs Slicer's Python (slicer, numpy)."""

import logging

import numpy as np
import slicer
from MedGenLib import label_names
from MedGenLib.results import ResultInfo

logger = logging.getLogger("MedGen")


def addHiddenNode(className: str, name: str):
    """A node in the scene that node selectors do not list (the module's temporary nodes)."""
    node = slicer.mrmlScene.CreateNodeByClass(className)
    node.SetName(name)
    node.SetHideFromEditors(True)
    slicer.mrmlScene.AddNode(node)
    node.UnRegister(None)
    return node


def gridShape(scanNode) -> tuple[int, int, int]:
    """The shape (k, j, i) of an array on the scan's voxel grid."""
    return tuple(reversed(scanNode.GetImageData().GetDimensions()))


def importLabelMap(labelMapNode):
    """A hidden segmentation (not saved with the scene, not shown) made from a label map, its segments
    named after the label map's colour names; raises ValueError when Slicer cannot read it as segments."""
    segmentation = addHiddenNode("vtkMRMLSegmentationNode", f"{labelMapNode.GetName()} (MedGen)")
    segmentation.SetSaveWithScene(False)
    if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelMapNode, segmentation):
        slicer.mrmlScene.RemoveNode(segmentation)
        raise ValueError(f"the label map {labelMapNode.GetName()} could not be read as segments")
    if segmentation.GetDisplayNode() is not None:
        segmentation.GetDisplayNode().SetVisibility(False)
    return segmentation


class ImportedSegmentations:
    """The segmentations imported from label maps, one per label map, imported again only after the
    label map has changed (the logic asks for one on every change of the panel)."""

    def __init__(self) -> None:
        self.byLabelMap = {}  # label map node ID -> (its MTime, the segmentation imported from it)

    def get(self, labelMapNode):
        """The segmentation of this label map: the one imported before if the label map is unchanged."""
        imageData = labelMapNode.GetImageData()
        mtime = labelMapNode.GetMTime() + (imageData.GetMTime() if imageData else 0)
        cached = self.byLabelMap.get(labelMapNode.GetID())
        if cached is not None and cached[0] == mtime and slicer.mrmlScene.IsNodePresent(cached[1]):
            return cached[1]
        if cached is not None and slicer.mrmlScene.IsNodePresent(cached[1]):
            slicer.mrmlScene.RemoveNode(cached[1])
        segmentation = importLabelMap(labelMapNode)
        self.byLabelMap[labelMapNode.GetID()] = (mtime, segmentation)
        return segmentation

    def removeAll(self) -> None:
        """Remove every imported segmentation from the scene."""
        for _, node in self.byLabelMap.values():
            if slicer.mrmlScene.IsNodePresent(node):
                slicer.mrmlScene.RemoveNode(node)
        self.byLabelMap = {}


def segmentNames(segmentation) -> list[str]:
    """The names of a segmentation's segments, in its order."""
    segments = segmentation.GetSegmentation()
    return [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]


def segmentIds(segmentation, name: str) -> list[str]:
    """The IDs of the segments called `name` (names need not be unique in Slicer)."""
    segments = segmentation.GetSegmentation()
    return [segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())
            if segments.GetNthSegment(i).GetName() == name]


def segmentMask(segmentation, segmentId: str, scanNode) -> np.ndarray:
    """A segment's voxels on the scan's grid (k, j, i) as a boolean array; all False for an empty segment."""
    try:
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, scanNode) > 0
    except RuntimeError:  # some Slicer versions refuse to export an empty segment
        return np.zeros(gridShape(scanNode), bool)


def paintSegments(array: np.ndarray, segmentation, name: str, value: int, scanNode) -> None:
    """Set `value` in `array` wherever a segment called `name` is, on the scan's grid."""
    for segmentId in segmentIds(segmentation, name):
        array[segmentMask(segmentation, segmentId, scanNode)] = value


def labelArray(segmentation, assignment: dict[str, int], scanNode) -> np.ndarray:
    """The segments painted into one label map on the scan's voxel grid (k, j, i), by class index."""
    largest = max([index for index in assignment.values()] + [0])
    array = np.zeros(gridShape(scanNode), np.uint8 if largest < 256 else np.uint16)
    for name, index in label_names.paint_order(assignment):
        paintSegments(array, segmentation, name, index, scanNode)
    return array


def regionArray(segmentation, regionSegment: str, scanNode) -> np.ndarray:
    """The inpainting region (1 inside the segment called `regionSegment`) on the scan's voxel grid;
    raises ValueError when there is no such segment or it is empty inside the scan."""
    name = regionSegment or ""
    if not segmentIds(segmentation, name):
        raise ValueError("pick the segment to inpaint (the region)")
    region = np.zeros(gridShape(scanNode), np.uint8)
    paintSegments(region, segmentation, name, 1, scanNode)
    if not region.any():
        raise ValueError(f"the region segment {regionSegment!r} is empty inside the scan")
    return region


def writeArray(array: np.ndarray, scanNode, path: str, name: str) -> None:
    """A label map node with `array` in the scan's geometry, written to `path` and removed again."""
    node = addHiddenNode("vtkMRMLLabelMapVolumeNode", name)
    try:
        node.CopyOrientation(scanNode)  # origin, spacing, directions
        slicer.util.updateVolumeFromArray(node, array)
        writeNode(node, path)
    finally:
        slicer.mrmlScene.RemoveNode(node)


def writeNode(node, path: str) -> None:
    """Write a volume node with a storage node of its own, so the node's own file name stays as it was."""
    storage = slicer.mrmlScene.CreateNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(path)
        storage.UseCompressionOff()
        if not storage.WriteData(node):
            raise ValueError(f"{node.GetName()} could not be written to {path}")
    finally:
        storage.UnRegister(None)


def writeLabelMap(segmentation, assignment: dict[str, int], scanNode, path: str) -> str:
    """The segments as one label map by class index (`labelArray`), written to `path` in the scan's geometry."""
    writeArray(labelArray(segmentation, assignment, scanNode), scanNode, path, "labels")
    return path


def writeRegionAndScan(segmentation, regionSegment: str, scanNode, folder) -> tuple[str, str]:
    """An inpainting run's region (`regionArray`) and scan, written to its RunFolder; (region path, scan path)."""
    regionPath, imagePath = folder.file("region.nrrd"), folder.file("image.nrrd")
    writeArray(regionArray(segmentation, regionSegment, scanNode), scanNode, regionPath, "region")
    writeNode(scanNode, imagePath)
    return regionPath, imagePath


def loadResult(result: ResultInfo, scanNode):
    """A result file as a new volume node, named (unique in the scene) and marked as `result` says, in the
    scan's transform; its storage node is dropped, as its file lives in the run's folder, which goes next."""
    name = slicer.mrmlScene.GenerateUniqueName(result.name)
    node = slicer.util.loadVolume(result.path, properties={"name": name, "show": False, "singleFile": True})
    for key, value in result.attributes.items():
        node.SetAttribute(key, value)
    if node.GetImageData().GetDimensions() != scanNode.GetImageData().GetDimensions():
        logger.warning(f"MedGen: {name} is not on the scan's voxel grid")
    node.SetAndObserveTransformNodeID(scanNode.GetTransformNodeID())  # the inputs were written in its frame
    storage = node.GetStorageNode()
    if storage is not None:
        slicer.mrmlScene.RemoveNode(storage)
    return node
