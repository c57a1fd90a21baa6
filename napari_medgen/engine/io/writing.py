"""Atomic writes: a temporary folder beside the target, then renames; a failure leaves every file as it was."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UnsupportedFormatError, VolumeWriteError
from ..volume import Volume
from .formats import (
    HEADER_KEY,
    WRITE_EXTENSIONS,
    nifti_description,
    metadata_for_header,
    itk_reason,
    sidecar_path,
    volume_extension,
)


def write_volume(volume: Volume, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write `volume` to `path` atomically; returns the path written.

    The format follows the extension (NIfTI, MetaImage, NRRD). Integer label maps keep their integer
    type. ``volume.metadata`` goes to a ``<name>.json`` sidecar and, summarised, to the header.
    On any failure the existing file at `path` (and its sidecar) is left exactly as it was.
    """
    import SimpleITK as sitk

    path = Path(path)
    ext = volume_extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise UnsupportedFormatError(
            f"{path.name}: cannot write this file type; write NIfTI (.nii.gz), MetaImage (.mha) or "
            "NRRD (.nrrd)" + (" (DICOM export is not supported)" if ext == ".dcm" else "")
        )
    parent = path.parent if str(path.parent) else Path(".")
    try:
        is_folder, parent_is_folder = path.is_dir(), parent.is_dir()
    except OSError as error:  # e.g. a name too long for the file system
        raise VolumeWriteError(f"{path}: cannot be written ({error.strerror or error})") from None
    if is_folder:
        raise VolumeWriteError(f"{path}: is a folder; give a file name such as {path / 'result.nii.gz'}")
    if not parent_is_folder:
        raise VolumeWriteError(f"{path}: the folder {parent} does not exist; create it first")
    image = volume.to_sitk()
    header_json = metadata_for_header(volume.metadata)
    if header_json and ext in (".mha", ".mhd", ".nrrd", ".nhdr"):
        image.SetMetaData(HEADER_KEY, header_json)
    if ext in (".nii", ".nii.gz"):
        # ITK's NIfTI writer fills the header's ``descrip`` from this key.
        image.SetMetaData("ITK_FileNotes", nifti_description(volume.metadata))
    try:
        staging = Path(tempfile.mkdtemp(prefix=".medgen-write-", dir=parent))
    except OSError as error:
        raise VolumeWriteError(f"{path}: cannot write in {parent} ({error.strerror}); check permissions") from None
    try:
        staged = staging / path.name
        try:
            sitk.WriteImage(image, str(staged), useCompression=compress)
        except RuntimeError as error:
            raise VolumeWriteError(f"{path}: writing failed ({itk_reason(error)}); nothing was changed") from None
        if volume.metadata:
            (staging / sidecar_path(path).name).write_text(
                json.dumps(volume.metadata, indent=2, sort_keys=True, default=str)
            )
        _commit(staging, parent, path.name, sidecar_path(path).name, remove_sidecar=not volume.metadata)
    except OSError as error:
        raise VolumeWriteError(
            f"{path}: writing failed ({error.strerror or error}); the disk may be full or read-only. "
            "Existing files were left as they were"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def write_volumes(volumes: list[Volume], paths: list[str | os.PathLike[str]], *, compress: bool = True) -> list[Path]:
    """Write several volumes (a run's variants) as one: all of them, or on any failure none.

    Each file is written atomically by `write_volume`; if a later one fails (or the run is stopped),
    the files the earlier ones created are removed and the files they replaced are put back, so the
    folders are left exactly as they were. The error is raised again.
    """
    targets = [Path(p) for p in paths]
    if len(volumes) != len(targets):
        raise ValueError(f"{len(volumes)} volumes but {len(targets)} paths")
    if len(targets) == 1:
        return [write_volume(volumes[0], targets[0], compress=compress)]
    done: list[tuple[Path, Path, set[str]]] = []  # (path, backup folder, names there before)
    try:
        for volume, path in zip(volumes, targets, strict=True):
            parent = path.parent if str(path.parent) else Path(".")
            try:
                keep = Path(tempfile.mkdtemp(prefix=".medgen-keep-", dir=parent))
            except OSError as error:
                raise VolumeWriteError(
                    f"{path}: cannot write in {parent} ({error.strerror or error}); check it exists and is writable"
                ) from None
            before = set()
            done.append((path, keep, before))
            for existing in _related_files(path):
                before.add(existing.name)
                try:
                    try:
                        os.link(existing, keep / existing.name)
                    except OSError:
                        shutil.copy2(existing, keep / existing.name)
                except OSError as error:
                    raise VolumeWriteError(
                        f"{path}: writing failed ({error.strerror or error}); the disk may be full or read-only. "
                        "Existing files were left as they were"
                    ) from None
            write_volume(volume, path, compress=compress)
    except BaseException:
        for path, keep, before in reversed(done):
            with contextlib.suppress(OSError):
                for item in _related_files(path):
                    if item.name not in before:
                        item.unlink()
                for item in keep.iterdir():
                    os.replace(item, path.parent / item.name)
        raise
    finally:
        for _, keep, _ in done:
            shutil.rmtree(keep, ignore_errors=True)
    return targets


def _related_files(path: Path) -> list[Path]:
    """The files a write of `path` may create or replace: the file, its sidecar, a header's data files."""
    ext = volume_extension(path)
    stem = path.name[: -len(ext)] if ext else path.stem
    parent = path.parent if str(path.parent) else Path(".")
    try:
        return [p for p in parent.iterdir() if p.name.startswith(stem + ".") and p.is_file()]
    except OSError:
        return []


def _commit(staging: Path, parent: Path, main_name: str, sidecar_name: str, remove_sidecar: bool) -> None:
    """Move the staged files into `parent`: data files, then the sidecar, then the main file.

    A reader never finds a header pointing at data that is not there yet. If a move fails, the moves
    already made are undone (the replaced files were kept as hard links or copies), so the folder
    is left as it was; the OSError is raised again.
    """
    produced = sorted(staging.iterdir(), key=lambda p: (p.name == main_name, p.name == sidecar_name, p.name))
    backups = staging / ".replaced"
    backups.mkdir()
    done: list[tuple[Path, Path | None]] = []  # (destination, backup of what it replaced)

    def keep(destination: Path) -> Path | None:
        if not destination.is_file():
            return None
        backup = backups / destination.name
        try:
            os.link(destination, backup)
        except OSError:
            shutil.copy2(destination, backup)
        return backup

    try:
        stale_sidecar = parent / sidecar_name
        if remove_sidecar and stale_sidecar.is_file():
            # The old sidecar describes the file being replaced, not the new one.
            backup = keep(stale_sidecar)
            stale_sidecar.unlink()
            done.append((stale_sidecar, backup))
        for item in produced:
            destination = parent / item.name
            backup = keep(destination)
            os.replace(item, destination)
            done.append((destination, backup))
    except OSError:
        for destination, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is None:
                    destination.unlink()
                else:
                    os.replace(backup, destination)
        raise


def check_writable_output(paths: list[str | os.PathLike[str]]) -> None:
    """Before a run: each output path has a format we write and an existing, writable folder.

    A front end calls this before minutes of sampling, so a typo in the output name costs nothing.
    """
    for path in map(Path, paths):
        if volume_extension(path) not in WRITE_EXTENSIONS:
            raise UnsupportedFormatError(f"{path.name}: write the result as .nii.gz, .nii, .mha or .nrrd")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise VolumeWriteError(f"{path}: the folder {parent} does not exist; create it first")
        if not os.access(parent, os.W_OK):
            raise VolumeWriteError(f"{path}: the folder {parent} is not writable")
