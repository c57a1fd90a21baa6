"""The formats we read and write, and where a volume's metadata goes (sidecar, header fields)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

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


def header_metadata(reader: Any) -> dict[str, Any]:
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


def read_sidecar(path: Path) -> dict[str, Any]:
    """The metadata in the image's ``<name>.json`` sidecar; empty where there is none or it is damaged."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # a damaged sidecar must not stop the image from opening
    return data if isinstance(data, dict) else {}


def metadata_for_header(metadata: dict[str, Any]) -> str:
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


def nifti_description(metadata: dict[str, Any]) -> str:
    """NIfTI's 80-byte description: says 'synthetic' first, since that is what must not be lost."""
    provenance = metadata.get("provenance") or {}
    if metadata.get("synthetic") or provenance:
        model = provenance.get("model", "?")
        text = f"{SYNTHETIC_MARK} {model} seed={provenance.get('seed', '?')}"
    else:
        text = str(metadata.get("description", ""))
    return text[:79]


def itk_reason(error: Exception) -> str:
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
