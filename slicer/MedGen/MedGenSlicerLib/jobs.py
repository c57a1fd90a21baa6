"""A MedGen run from nodes of a scene to new volumes in it: the inputs written to the run's folder, the run
started by the caller (a process, or the module's worker), and at its end the results loaded all or none,
the folder removed, and nothing added after a cancel or an error.

Every function takes the `vtkMRMLScene` (the module passes `slicer.mrmlScene`); runs in Slicer and on the
`slicer-core` wheel alike.
"""

from __future__ import annotations

import time

from MedGenLib import cli_runner, label_names
from MedGenLib.models import model_classes
from MedGenLib.results import MedGenJob, describe_results, sampling_arguments

from .nodes import loadResult, removeNode, writeNode
from .segments import writeLabelMap, writeRegion


def writeInputs(scene, command: str, scanNode, segmentation, assignment: dict, options: dict, folder,
                regionSegment: str | None = None, followLabels: bool = True) -> dict:
    """Write what a generate / inpaint run reads into its RunFolder; returns the run's arguments. Raises
    ValueError with what to do (no scan, no anatomy, a segment the mapping does not confirm, no region).
    A model that takes no label map generates on the scan's grid (`--like`) with no anatomy."""
    if scanNode is None or scanNode.GetImageData() is None:
        raise ValueError("pick a scan (a scalar volume with voxels)")
    cli_runner.check_command(command)
    model = options.get("model")
    sampling = sampling_arguments(options)
    out = folder.file("result.nrrd")
    if command == "generate" and model is not None and not model.takes_label_map:
        likePath = folder.file("like.nrrd")
        writeNode(scene, scanNode, likePath)
        return cli_runner.generate_arguments(None, out, like=likePath, **sampling)
    sampling.pop("attribute", None)  # the conditions of label-free models: generate only
    sampling.pop("modality", None)
    if segmentation is None:
        raise ValueError("pick the anatomy: a segmentation or a label map")
    if command == "inpaint" and all(index == label_names.IGNORE for index in assignment.values()):
        followLabels = False  # no segment has a class: nothing to follow inside the region
    labelsPath = None
    if command == "generate" or followLabels:
        labelsPath = writeLabelMap(scene, segmentation, assignment, model_classes(model), scanNode,
                                   folder.file("labels.nrrd"))
    if command == "generate":
        return cli_runner.generate_arguments(labelsPath, out, **sampling)
    regionPath = writeRegion(scene, segmentation, regionSegment, scanNode, folder.file("region.nrrd"))
    imagePath = folder.file("image.nrrd")
    writeNode(scene, scanNode, imagePath)
    return cli_runner.inpaint_arguments(imagePath, regionPath, out, labels=labelsPath, **sampling)


def startJob(scene, command: str, scanNode, segmentation, assignment: dict, options: dict, startRun,
             temporaryPath: str | None = None, regionSegment: str | None = None, followLabels: bool = True) -> MedGenJob:
    """Write the inputs to a new run folder under `temporaryPath` and start the run with
    `startRun(command, args, cwd)`; returns the MedGenJob. On any error the folder goes and the error is
    raised (ValueError or MedGenRunError, in words); no node is added either way."""
    folder = cli_runner.RunFolder(parent=temporaryPath)
    try:
        args = writeInputs(scene, command, scanNode, segmentation, assignment, options, folder,
                           regionSegment=regionSegment, followLabels=followLabels)
        run = startRun(command, args, folder.path)
    except Exception:
        folder.remove()
        raise
    return MedGenJob(command, run, folder, scanNode, dict(options, region=regionSegment))


def loadResults(scene, job: MedGenJob) -> list:
    """A succeeded run's files as new volume nodes, named and marked synthetic with their provenance, in
    the scan's geometry: all of them, or none (a file that cannot be read removes those loaded before it)."""
    scan = job.scanNode
    results = describe_results(job.command, job.options, job.run.paths, scan.GetName(), scan.GetID())
    loaded = []
    try:
        for result in results:
            loaded.append(loadResult(scene, result, scan))
    except Exception:
        for node in loaded:
            removeNode(scene, node)
        raise
    return loaded


def endJob(scene, job: MedGenJob) -> list:
    """The end of a finished run: its results loaded (none after a cancel) and its folder removed. A failed
    run raises MedGenRunError with its message, a result that cannot be read ValueError; nothing is added then."""
    try:
        if job.run.state == "failed":
            raise cli_runner.MedGenRunError(job.run.error or "napari-medgen failed")
        return loadResults(scene, job) if job.run.state == "succeeded" else []
    finally:
        job.folder.remove()


def waitForJob(job: MedGenJob, timeout: float, idle=None) -> bool:
    """Wait until the run has ended or `timeout` seconds have passed, calling `idle()` every 0.05 s (Slicer
    passes its event processing, so the application stays responsive); True when it has ended."""
    deadline = time.monotonic() + timeout
    while not job.run.wait(0.05):
        if idle is not None:
            idle()
        if time.monotonic() >= deadline:
            break
    return job.run.done

