"""Reading and writing medical image volumes through SimpleITK, keeping their geometry.

Formats: NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD (.nrrd, .nhdr), a single DICOM file
(.dcm) and a DICOM series folder (read only: writing DICOM needs patient and study data that a
volume does not carry). Writes are atomic: files are written into a temporary folder beside the
target and moved into place only when complete, so a failed write never clobbers an existing file.
A volume's ``metadata`` goes into a ``<name>.json`` sidecar, and a short summary into the format's
description field where it has one.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidVolumeError, UnsupportedFormatError, VolumeReadError, VolumeWriteError
from .volume import Volume

READ_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")
WRITE_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
# Key under which the project stores its metadata inside MetaImage / NRRD headers.
HEADER_KEY = "napari_medgen"
# Longest metadata copy put in a header (MetaImage fails to read lines over 32767 characters), and the
# keys kept when the whole metadata is longer.
HEADER_JSON_MAX = 8000
HEADER_SUMMARY_KEYS = ("synthetic", "provenance", "label_map", "modality", "description")
# Start of the NIfTI description (its 80-byte ``descrip`` field) of every synthetic result.
SYNTHETIC_MARK = "SYNTHETIC napari-medgen"
# Largest distance between a DICOM slice's recorded position and its place in the stacked volume
# that is accepted (as a fraction of the slice spacing): more means missing slices or variable spacing.
NON_UNIFORM_TOLERANCE = 0.05
# DICOM tags copied into metadata: enough to know what a volume is, nothing that identifies a patient.
DICOM_TAGS = {
    "0008|0060": "modality",
    "0008|103e": "series_description",
    "0018|0050": "slice_thickness",
    "0028|1050": "window_center",
    "0028|1051": "window_width",
}


def volume_extension(path: str | os.PathLike[str]) -> str:
    """The (lower-case) format extension of a path, '' if none of ours; '.nii.gz' counts as one."""
    name = Path(path).name.lower()
    for ext in READ_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return ""


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``scan.nii.gz`` -> ``scan.json``: where a volume's metadata is written beside it."""
    path = Path(path)
    ext = volume_extension(path)
    stem = path.name[: -len(ext)] if ext else path.stem
    return path.with_name(stem + ".json")


def is_dicom_series_folder(path: str | os.PathLike[str]) -> bool:
    import SimpleITK as sitk

    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def read_volume(path: str | os.PathLike[str], series_id: str | None = None) -> Volume:
    """Read a NIfTI, MetaImage, NRRD or DICOM file, or a DICOM series folder, as a `Volume`.

    Raises VolumeReadError (missing, corrupt or truncated file), UnsupportedFormatError (other
    extension) or InvalidVolumeError (4-D, RGB, complex, NaN voxels, bad spacing).
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        is_folder, exists = path.is_dir(), path.exists()
        size = path.stat().st_size if exists else 0
    except OSError as error:  # e.g. a name too long for the file system
        raise VolumeReadError(f"{path}: cannot be opened ({error.strerror or error})") from None
    if is_folder:
        return _read_dicom_series(path, series_id)
    if not exists:
        raise VolumeReadError(f"{path}: no such file; check the path and its spelling")
    ext = volume_extension(path)
    if not ext:
        raise UnsupportedFormatError(
            f"{path.name}: unsupported file type; open NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), "
            "NRRD (.nrrd, .nhdr), DICOM (.dcm) or a folder holding one DICOM series"
        )
    if size == 0:
        raise VolumeReadError(f"{path}: the file is empty (0 bytes); it was not written completely")
    with _itk_readable(path, ext) as itk_path:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(itk_path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            if ext == ".nii.gz":
                _check_compressed_stream(path, path, 0, 47, 0)  # a damaged gzip stream: say so
            raise VolumeReadError(f"{path}: not a readable {ext} image ({_itk_reason(error)})") from None
        _check_shape_info(
            path, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize(), reader.GetPixelID()
        )
        _check_spacing_info(path, reader.GetSpacing())
        _check_memory(path, reader.GetSize(), reader.GetPixelID())
        if ext in (".nii", ".nii.gz"):
            _check_nifti_complete(path, ext)
        else:
            _check_compressed_data(path, ext, _voxel_bytes(reader.GetSize(), reader.GetPixelID()))
        try:
            image = reader.Execute()
        except RuntimeError as error:
            raise VolumeReadError(
                f"{path}: the file is truncated or corrupt and its voxels cannot be read "
                f"({_itk_reason(error)})"
            ) from None
    image = _drop_trailing_singleton(image)
    metadata = _header_metadata(reader)
    metadata.update(_read_sidecar(path))
    metadata["source_format"] = ext.lstrip(".")
    try:
        return Volume.from_sitk(image, metadata)
    except InvalidVolumeError as error:
        raise InvalidVolumeError(f"{path}: {error}") from None


@contextlib.contextmanager
def _itk_readable(path: Path, ext: str) -> Iterator[Path]:
    """A path at which ITK reads exactly `path`.

    ITK's NIfTI library, asked for ``scan.nii.gz``, opens ``scan.nii`` instead when both exist; then a
    link to the file in a private folder (where it has no such sibling) is read instead.
    """
    if ext != ".nii.gz" or not path.with_name(path.name[: -len(".gz")]).exists():
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix=".medgen-read-"))
    try:
        link = folder / ("volume" + path.name[-len(ext) :])
        try:
            os.symlink(path.resolve(), link)
        except OSError:
            shutil.copyfile(path, link)
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# Bytes per voxel of SimpleITK's pixel types (read_volume refuses headers that promise more than memory).
# Scalar types only (multi-component images are refused before): sitkInt8 = 0 ... sitkFloat64 = 9.
_BYTES_PER_VOXEL = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 8, 7: 8, 8: 4, 9: 8}


def _free_memory() -> int:
    """Memory (bytes) available to a new allocation now (Linux's MemAvailable counts the page cache that
    can be dropped); generous when the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def _check_memory(path: Path, size: tuple[int, ...], pixel_id: int) -> None:
    """A header that promises more voxels than fit in memory (often a damaged header) is refused before
    ITK tries to allocate them: that would stall the machine or end the program."""
    voxels = int(np.prod([max(int(s), 0) for s in size], dtype=object))
    needed = voxels * _BYTES_PER_VOXEL.get(int(pixel_id), 8) * 2  # the image, and the array copied out
    free = _free_memory()
    if needed > free:
        raise InvalidVolumeError(
            f"{path}: the header says the image has {voxels:,} voxels (size {tuple(size)}), which needs about "
            f"{needed / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of memory free; the header may be "
            "damaged, or crop or down-sample the image first"
        )


def _voxel_bytes(size: tuple[int, ...], pixel_id: int) -> int:
    return int(np.prod([max(int(s), 0) for s in size], dtype=object)) * _BYTES_PER_VOXEL.get(int(pixel_id), 8)


def _check_compressed_data(path: Path, ext: str, expected: int) -> None:
    """ITK reads a compressed MetaImage or NRRD whose data is damaged without an error (it prints
    'Uncompress failed' and returns whatever came out): inflate the data once, checksum included."""
    located = _compressed_data_location(path, ext)
    if located is not None:
        _check_compressed_stream(path, *located, expected)


def _compressed_data_location(path: Path, ext: str) -> tuple[Path, int, int | str] | None:
    """(data file, offset, zlib wbits or 'bz2') of a compressed MetaImage / NRRD's voxels; None if the
    data is not compressed, or is spread over several files (ITK then checks what it reads itself)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 20)
    except OSError:
        return None
    fields: dict[str, str] = {}
    position = 0
    nrrd = ext in (".nrrd", ".nhdr")
    ended = False  # the header's end was found (a blank line in NRRD, the ElementDataFile line in MetaImage)
    for raw_line in head.splitlines(keepends=True):
        position += len(raw_line)
        line = raw_line.decode("latin-1").strip()
        if nrrd:
            if not line:
                ended = True
                break
            if line.startswith("#") or ":=" in line:
                continue
            key, _, value = line.partition(":")
        else:
            key, _, value = line.partition("=")
        fields[key.strip().lower()] = value.strip()
        if not nrrd and key.strip() == "ElementDataFile":
            ended = True
            break
    detached = fields.get("data file", fields.get("datafile")) if nrrd else None
    if not ended and not (detached and len(head) < 1 << 20):  # a detached NRRD header may end at the file's end
        return None
    if nrrd:
        encoding = fields.get("encoding", "raw").lower()
        kind: int | str | None = 47 if encoding in ("gzip", "gz") else "bz2" if encoding in ("bzip2", "bz2") else None
        if kind is None or "line skip" in fields or "lineskip" in fields or "byte skip" in fields or "byteskip" in fields:
            return None
        data_file = fields.get("data file", fields.get("datafile"))
    else:
        if fields.get("compresseddata", "false").lower() != "true":
            return None
        kind = 47
        data_file = fields.get("elementdatafile", "LOCAL")
        if data_file.upper() == "LOCAL":
            data_file = None
    if data_file is None:
        return path, position, kind
    if " " in data_file or "%" in data_file or data_file.upper() == "LIST":
        return None
    return path.parent / data_file, 0, kind


def _check_compressed_stream(path: Path, data_path: Path, offset: int, kind: int | str, expected: int) -> None:
    """Raise VolumeReadError if the zlib / gzip (wbits 47 detects which) or bzip2 stream at `offset` of
    `data_path` is damaged, cut off, or inflates to fewer than `expected` bytes."""
    import bz2

    try:
        with data_path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return  # a missing data file: ITK says so
    total = 0
    problem = None
    while True:
        inflater = bz2.BZ2Decompressor() if kind == "bz2" else zlib.decompressobj(wbits=int(kind))
        try:
            if kind == "bz2":
                while not inflater.eof and (data or not inflater.needs_input):
                    total += len(inflater.decompress(data, 1 << 24))
                    data = b""
            else:
                total += len(inflater.decompress(data, 1 << 24))
                while inflater.unconsumed_tail and not inflater.eof:
                    total += len(inflater.decompress(inflater.unconsumed_tail, 1 << 24))
        except (zlib.error, OSError, ValueError, EOFError) as error:
            problem = f"its compressed data is damaged ({error})"
            break
        if not inflater.eof:
            problem = "its compressed data ends early"
            break
        data = inflater.unused_data
        if kind == "bz2" or not data.startswith(b"\x1f\x8b"):  # no further gzip member: trailing bytes are ignored
            break
    if problem is None and total < expected:
        problem = f"its compressed data holds {total} of the {expected} bytes the header promises"
    if problem is not None:
        raise VolumeReadError(f"{path}: the file is corrupt: {problem} (an interrupted copy or a damaged disk?); "
                              "copy it again")


def _check_spacing_info(path: Path, spacing: tuple[float, ...]) -> None:
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InvalidVolumeError(
            f"{path}: voxel spacing must be positive and finite, got {tuple(spacing)} mm; "
            "fix the file's header (pixdim / ElementSpacing / space directions) before using it"
        )


def _nifti_expected_size(header: bytes) -> int | None:
    """Bytes a single-file NIfTI-1/-2 must hold (header, extensions and voxels), from its header."""
    header_size = 0
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            header_size = 352
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            header_size = 544
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(d <= 0 for d in dims[1 : ndim + 1]):
        return None
    return max(offset, header_size) + int(np.prod(dims[1 : ndim + 1], dtype=np.int64)) * bitpix // 8


def _gzip_content_size(path: Path, expected: int) -> int:
    """Decompressed size of a gzip file (all members), stopping early at a broken or cut-off stream."""
    with path.open("rb") as stream:
        # Fast path: a single gzip member stores its content size (mod 2**32) in its last 4 bytes.
        stream.seek(-4, os.SEEK_END)
        if struct.unpack("<I", stream.read(4))[0] == expected % 2**32:
            return expected
        stream.seek(0)
        total = 0
        decompressor = zlib.decompressobj(wbits=31)
        while chunk := stream.read(1 << 20):
            while chunk:
                try:
                    total += len(decompressor.decompress(chunk))
                except zlib.error:
                    return total
                if not decompressor.eof:
                    break
                chunk = decompressor.unused_data  # another gzip member follows
                decompressor = zlib.decompressobj(wbits=31)
        return total


def _check_nifti_complete(path: Path, ext: str) -> None:
    """ITK silently fills the missing part of a truncated NIfTI with zeros: refuse such files."""
    try:
        if ext == ".nii.gz":
            with gzip.open(path, "rb") as stream:
                header = stream.read(540)
        else:
            with path.open("rb") as stream:
                header = stream.read(540)
    except (OSError, EOFError, zlib.error) as error:
        raise VolumeReadError(f"{path}: the file is corrupt and cannot be read ({error})") from None
    expected = _nifti_expected_size(header)
    if expected is None:
        return
    try:
        actual = _gzip_content_size(path, expected) if ext == ".nii.gz" else path.stat().st_size
    except OSError as error:
        raise VolumeReadError(f"{path}: the file cannot be read ({error.strerror or error})") from None
    if actual < expected:
        raise VolumeReadError(
            f"{path}: the file is truncated: it holds {actual} of the {expected} bytes its header "
            "promises (an interrupted copy or download?); copy it again"
        )


def _drop_trailing_singleton(image: Any) -> Any:
    """A 3-D volume stored with a 4th axis of length 1 becomes that 3-D volume."""
    import SimpleITK as sitk

    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size, [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    return image


def _read_dicom_series(folder: Path, series_id: str | None) -> Volume:
    import SimpleITK as sitk

    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise VolumeReadError(f"{folder}: the folder holds no DICOM series")
    if series_id is None:
        if len(series_ids) > 1:
            raise VolumeReadError(
                f"{folder}: the folder holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); "
                "choose one with its series instance UID"
            )
        series_id = series_ids[0]
    elif series_id not in series_ids:
        raise VolumeReadError(f"{folder}: no DICOM series {series_id} (found {', '.join(series_ids)})")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeReadError(f"{folder}: the DICOM series cannot be read ({_itk_reason(error)})") from None
    _check_shape_info(folder, image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize())
    metadata: dict[str, Any] = {"source_format": "dicom-series", "dicom_series_uid": series_id}
    deviation = _slice_position_deviation(reader, image, len(files))
    if deviation is not None and deviation > NON_UNIFORM_TOLERANCE * image.GetSpacing()[2]:
        raise VolumeReadError(
            f"{folder}: the DICOM slices are not evenly spaced (a slice lies {deviation:.3g} mm from its place "
            f"in a regular stack of {len(files)} slices): a slice file may be missing, or the series has a "
            "variable slice spacing or a gantry tilt. Check the folder is complete, or resample the series "
            "to a regular grid first (e.g. in 3D Slicer)"
        )
    for tag, key in DICOM_TAGS.items():
        if reader.HasMetaDataKey(0, tag):
            metadata[key] = reader.GetMetaData(0, tag).strip()
    try:
        return Volume.from_sitk(image, metadata)
    except InvalidVolumeError as error:
        raise InvalidVolumeError(f"{folder}: {error}") from None


def _slice_position_deviation(reader: Any, image: Any, count: int) -> float | None:
    """Largest distance (mm) between a slice's ImagePositionPatient and where the stacked volume puts it.

    ITK stacks a series at one (mean) spacing; a missing slice or a variable spacing would misplace
    slices silently.
    """
    if image.GetDimension() != 3 or image.GetSize()[2] != count or count < 3:
        return None
    worst = 0.0
    for k in range(count):
        if not reader.HasMetaDataKey(k, "0020|0032"):
            return None
        try:
            position = np.array([float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")])
        except ValueError:
            return None
        if position.shape != (3,):
            return None
        placed = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k)))
        worst = max(worst, float(np.linalg.norm(position - placed)))
    return worst


def _check_shape_info(
    path: Path, dimension: int, components: int, size: tuple[int, ...], pixel_id: int | None = None
) -> None:
    import SimpleITK as sitk

    if pixel_id in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InvalidVolumeError(
            f"{path}: the image holds complex voxels (raw MR data?); napari-medgen works on real-valued scans: "
            "save its magnitude first"
        )
    if components != 1:
        raise InvalidVolumeError(
            f"{path}: the image has {components} components per voxel (RGB colour, a vector field, or complex MR "
            "data stored as two channels); napari-medgen works on single-channel grey-scale scans: convert it to "
            "one channel first (for complex data, its magnitude)"
        )
    if dimension == 4 and size[3] == 1:
        return  # a 3-D volume stored with a trailing singleton axis is still 3-D
    if dimension not in (2, 3):
        raise InvalidVolumeError(
            f"{path}: the image is {dimension}-D (size {tuple(size)}); napari-medgen needs a 2-D or "
            "3-D volume: extract one time point or channel first"
        )


def _header_metadata(reader: Any) -> dict[str, Any]:
    """The project's metadata, description and DICOM tags from a header; a damaged entry is skipped."""
    metadata: dict[str, Any] = {}
    keys = set(reader.GetMetaDataKeys())
    if HEADER_KEY in keys:
        try:
            stored = json.loads(reader.GetMetaData(HEADER_KEY))
        except (ValueError, RecursionError):  # not JSON (or not text): the sidecar may still have it
            stored = None
        if isinstance(stored, dict):
            metadata.update(stored)
    if "descrip" in keys and reader.GetMetaData("descrip").strip():
        metadata["description"] = reader.GetMetaData("descrip").strip()
        if metadata["description"].startswith(SYNTHETIC_MARK):
            # The sidecar may be lost; the header alone still says the image is synthetic.
            metadata["synthetic"] = True
    for tag, key in DICOM_TAGS.items():
        if tag in keys:
            metadata[key] = reader.GetMetaData(tag).strip()
    return metadata


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # a damaged sidecar must not stop the image from opening
    return data if isinstance(data, dict) else {}


def _itk_reason(error: Exception) -> str:
    """The useful line of an ITK exception message (not SimpleITK's source location or a stale errno)."""
    lines = []
    for line in str(error).splitlines():
        line = line.strip()
        for prefix in ("sitk::ERROR:", "ITK ERROR:"):
            if line.startswith(prefix):
                line = line[len(prefix) :].strip()
        if not line or line.startswith(("Exception thrown in SimpleITK", "in ", "File ", "Reason: No such file")):
            continue
        if line.endswith(":") and ("/" in line or "\\" in line):  # a source file location
            continue
        # "MetaImageIO(0x55d0c4a1b2c0): File cannot be read": the object's address means nothing to a user.
        line = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", line)
        lines.append(line)
    return lines[-1][:300] if lines else "unknown reason"


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
    header_json = _header_json(volume.metadata)
    if header_json and ext in (".mha", ".mhd", ".nrrd", ".nhdr"):
        image.SetMetaData(HEADER_KEY, header_json)
    if ext in (".nii", ".nii.gz"):
        # ITK's NIfTI writer fills the header's ``descrip`` from this key.
        image.SetMetaData("ITK_FileNotes", _description(volume.metadata))
    try:
        staging = Path(tempfile.mkdtemp(prefix=".medgen-write-", dir=parent))
    except OSError as error:
        raise VolumeWriteError(f"{path}: cannot write in {parent} ({error.strerror}); check permissions") from None
    try:
        staged = staging / path.name
        try:
            sitk.WriteImage(image, str(staged), useCompression=compress)
        except RuntimeError as error:
            raise VolumeWriteError(f"{path}: writing failed ({_itk_reason(error)}); nothing was changed") from None
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


def _header_json(metadata: dict[str, Any]) -> str:
    """The metadata copy kept in a MetaImage / NRRD header: all of it if short, else what matters most.

    MetaImage cannot read back a header line longer than 32767 characters; the sidecar always holds
    the complete metadata.
    """
    if not metadata:
        return ""
    text = json.dumps(metadata, sort_keys=True, default=str)
    if len(text) <= HEADER_JSON_MAX:
        return text
    summary = {key: metadata[key] for key in HEADER_SUMMARY_KEYS if key in metadata}
    text = json.dumps(summary, sort_keys=True, default=str)
    if len(text) <= HEADER_JSON_MAX:
        return text
    return json.dumps({"synthetic": True}) if metadata.get("synthetic") or metadata.get("provenance") else ""


def _description(metadata: dict[str, Any]) -> str:
    """NIfTI's 80-byte description: says 'synthetic' first, since that is what must not be lost."""
    provenance = metadata.get("provenance") or {}
    if metadata.get("synthetic") or provenance:
        model = provenance.get("model", "?")
        text = f"{SYNTHETIC_MARK} {model} seed={provenance.get('seed', '?')}"
    else:
        text = str(metadata.get("description", ""))
    return text[:79]


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


def as_label_dtype(array: np.ndarray) -> np.ndarray:
    """The smallest unsigned integer type that holds the labels (what label files are stored as)."""
    top = int(array.max()) if array.size else 0
    if int(array.min()) < 0:
        return array.astype(np.int16 if top < 2**15 else np.int32)
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return array.astype(dtype)
    return array.astype(np.int64)
