"""MRML nodes of the MedGen logic, in the scene a caller gives (the module passes `slicer.mrmlScene`):
hidden temporary nodes and their removal, volumes written and read with storage nodes of their own, and
results loaded as new volumes marked synthetic in the scan's geometry.

Uses only what Slicer's core libraries hold (MRML nodes and storage nodes, `slicer.util`'s array helpers,
vtk), so it runs inside Slicer and on the `slicer-core` wheel alike; no `slicer.app`, `slicer.modules` or
`slicer.mrmlScene`.
"""

import contextlib
import logging

import numpy as np
import slicer
import vtk
from MedGenLib.results import ResultInfo

logger = logging.getLogger("MedGen")


def addHiddenNode(scene, className: str, name: str):
    """A node in `scene` that node selectors do not list (the module's temporary nodes)."""
    node = scene.CreateNodeByClass(className)
    node.SetName(name)
    node.SetHideFromEditors(True)
    scene.AddNode(node)
    node.UnRegister(None)
    return node


def sceneNodes(scene) -> list:
    """Every node in `scene`, in the scene's order."""
    return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]


def removeNode(scene, node) -> None:
    """Remove `node` from `scene` with its display and storage nodes (None or a node already gone: nothing)."""
    if node is None or not scene.IsNodePresent(node):
        return
    parts = []
    if node.IsA("vtkMRMLDisplayableNode"):
        parts += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        parts += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for part in parts:
        if part is not None and scene.IsNodePresent(part):
            scene.RemoveNode(part)


@contextlib.contextmanager
def nodesRemovedAfter(scene):
    """Every node added to `scene` inside the block is removed when it ends, however it ends (the temporary
    label maps of an export, with the display and colour nodes Slicer makes for them)."""
    before = {node.GetID() for node in sceneNodes(scene)}
    try:
        yield
    finally:
        for node in reversed(sceneNodes(scene)):
            if node.GetID() not in before and scene.IsNodePresent(node):
                scene.RemoveNode(node)


def gridShape(scanNode) -> tuple:
    """The shape (k, j, i) of an array on the scan's voxel grid."""
    return tuple(reversed(scanNode.GetImageData().GetDimensions()))


def ijkToRas(volumeNode) -> np.ndarray:
    """A volume's IJK-to-RAS matrix (4 x 4)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


@contextlib.contextmanager
def storageNodeFor(scene, path: str):
    """A volume storage node for `path` that never joins the scene, so no node's own file name changes."""
    storage = scene.CreateNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(path)
        yield storage
    finally:
        storage.UnRegister(None)


def writeNode(scene, node, path: str) -> None:
    """Write a volume node to `path` (uncompressed NRRD for a .nrrd path), leaving the node as it was."""
    with storageNodeFor(scene, path) as storage:
        storage.UseCompressionOff()
        if not storage.WriteData(node):
            raise ValueError(f"{node.GetName()} could not be written to {path}")


def writeArray(scene, array: np.ndarray, scanNode, path: str, name: str) -> None:
    """A label map with `array` (k, j, i) in the scan's geometry, written to `path`; no node is left."""
    with nodesRemovedAfter(scene):
        node = addHiddenNode(scene, "vtkMRMLLabelMapVolumeNode", name)
        node.CopyOrientation(scanNode)  # origin, spacing, directions
        slicer.util.updateVolumeFromArray(node, array)
        writeNode(scene, node, path)


def readVolume(scene, node, path: str) -> None:
    """Read a volume file into `node` with Slicer's reader (the file goes with the run's folder, so no
    storage node stays). Raises ValueError when it cannot be read."""
    with storageNodeFor(scene, path) as storage:
        storage.SetSingleFile(True)  # this file only, not a series of similar names beside it
        if not storage.ReadData(node) or node.GetImageData() is None:
            raise ValueError(f"{path} could not be read as a volume")


def loadResult(scene, result: ResultInfo, scanNode):
    """A result file as a new volume node in `scene`: named (unique in the scene) and marked as `result`
    says, in the scan's transform, shown in grey. Raises ValueError (and adds nothing) when it cannot be read."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(result.name))
    try:
        readVolume(scene, node, result.path)
    except Exception:
        removeNode(scene, node)
        raise
    for key, value in result.attributes.items():
        node.SetAttribute(key, value)
    if node.GetImageData().GetDimensions() != scanNode.GetImageData().GetDimensions():
        logger.warning(f"MedGen: {node.GetName()} is not on the scan's voxel grid")
    node.SetAndObserveTransformNodeID(scanNode.GetTransformNodeID())  # the inputs were written in its frame
    node.CreateDefaultDisplayNodes()
    return node
