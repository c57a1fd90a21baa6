"""Checks that work around ITK: it reads truncated, damaged or impossible files without an error.

Each check raises the project's own error with what is wrong and what to do, before ITK allocates or guesses.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidVolumeError, VolumeReadError
from ..memory import host_available_memory


@contextlib.contextmanager
def itk_readable(path: Path, ext: str) -> Iterator[Path]:
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


def check_memory(path: Path, size: tuple[int, ...], pixel_id: int) -> None:
    """A header that promises more voxels than fit in memory (often a damaged header) is refused before
    ITK tries to allocate them: that would stall the machine or end the program."""
    voxels = int(np.prod([max(int(s), 0) for s in size], dtype=object))
    needed = voxels * _BYTES_PER_VOXEL.get(int(pixel_id), 8) * 2  # the image, and the array copied out
    free = host_available_memory()
    if needed > free:
        raise InvalidVolumeError(
            f"{path}: the header says the image has {voxels:,} voxels (size {tuple(size)}), which needs about "
            f"{needed / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB of memory free; the header may be "
            "damaged, or crop or down-sample the image first"
        )


def image_bytes(size: tuple[int, ...], pixel_id: int) -> int:
    """The bytes an image of `size` voxels of ITK pixel type `pixel_id` holds in memory."""
    return int(np.prod([max(int(s), 0) for s in size], dtype=object)) * _BYTES_PER_VOXEL.get(int(pixel_id), 8)


def check_compressed_data(path: Path, ext: str, expected: int) -> None:
    """ITK reads a compressed MetaImage or NRRD whose data is damaged without an error (it prints
    'Uncompress failed' and returns whatever came out): inflate the data once, checksum included."""
    located = _compressed_data_location(path, ext)
    if located is not None:
        check_compressed_stream(path, *located, expected)


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


def check_compressed_stream(path: Path, data_path: Path, offset: int, kind: int | str, expected: int) -> None:
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


def check_spacing_info(path: Path, spacing: tuple[float, ...]) -> None:
    """Refuse a header's spacing that is not positive and finite (ITK reads such a file without a word)."""
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InvalidVolumeError(
            f"{path}: voxel spacing must be positive and finite, got {tuple(spacing)} mm; "
            "fix the file's header (pixdim / ElementSpacing / space directions) before using it"
        )


# NIfTI datatype codes of floating-point voxels (the only ones that can hold NaN or infinity).
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _nifti_layout(header: bytes) -> tuple[int, int, str | None] | None:
    """(voxel data offset, voxel bytes, numpy float dtype or None) of a single-file NIfTI-1/-2, from its header."""
    header_size = 0
    for endian in ("<", ">"):
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            header_size = 352
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype = struct.unpack(endian + "h", header[70:72])[0]
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype = struct.unpack(endian + "h", header[12:14])[0]
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
    float_type = _NIFTI_FLOAT_TYPES.get(int(datatype))
    voxel_bytes = int(np.prod(dims[1 : ndim + 1], dtype=np.int64)) * bitpix // 8
    return max(offset, header_size), voxel_bytes, (endian + float_type) if float_type else None


def _nifti_expected_size(header: bytes) -> int | None:
    """Bytes a single-file NIfTI-1/-2 must hold (header, extensions and voxels), from its header."""
    layout = _nifti_layout(header)
    return None if layout is None else layout[0] + layout[1]


def _check_nifti_finite(path: Path, ext: str, header: bytes) -> None:
    """ITK's NIfTI reader turns NaN and infinite voxels into 0 without a word, so a scan with holes in it
    would be synthesized around as if they were tissue: count them in the file and refuse it."""
    layout = _nifti_layout(header)
    if layout is None or layout[2] is None:
        return
    offset, size, dtype = layout
    item = np.dtype(dtype).itemsize
    bad = 0
    opener = gzip.open if ext == ".nii.gz" else open
    try:
        with opener(path, "rb") as stream:
            stream.seek(offset)
            remaining, carry = size, b""
            while remaining > 0:
                chunk = carry + stream.read(min(remaining, 1 << 24))
                if len(chunk) == len(carry):
                    break  # a short file: the completeness check says so
                remaining -= len(chunk) - len(carry)
                whole = len(chunk) // item * item
                bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk[:whole], dtype=dtype))))
                carry = chunk[whole:]
    except (OSError, EOFError, zlib.error):
        return  # a damaged file: the completeness and stream checks say so
    if bad:
        raise InvalidVolumeError(
            f"{path}: the image holds {bad:,} NaN or infinite voxels (ITK would read them as 0 without a word); "
            "replace them (e.g. with the background value) and save it again"
        )


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


def check_nifti_complete(path: Path, ext: str) -> None:
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
    _check_nifti_finite(path, ext, header)


def drop_trailing_singleton(image: Any) -> Any:
    """A 3-D volume stored with a 4th axis of length 1 becomes that 3-D volume."""
    import SimpleITK as sitk

    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size, [0, 0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    return image


def check_shape_info(
    path: Path, dimension: int, components: int, size: tuple[int, ...], pixel_id: int | None = None
) -> None:
    """Refuse what is not a single-channel, real-valued 2-D or 3-D scan, before ITK reads its voxels."""
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
