"""nnU-Net v2's raw data layout: where a case's files go, `dataset.json`, and whether a case is complete.

    DIR/imagesTr/<case>_0000.nii.gz   the generated image (channel 0) + <case>_0000.json, its provenance
    DIR/labelsTr/<case>.nii.gz        the label map it was generated for (the truth) + <case>.json
    DIR/dataset.json                  channel_names, labels (name -> value, background 0), numTraining, file_ending

nnU-Net lists only files with the dataset's file ending, so the JSON sidecars beside them are not taken
for cases. A case is complete when its image, its label map and the image's sidecar are all there and
the sidecar's record of the two files (their SHA-256) matches them: a case is committed by moving its
finished files into place, label map first and image last, so an interrupted commit leaves at most a
label map without an image, which no reader counts as a case and `sweep` removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import MedgenError, VolumeWriteError
from ..hashing import file_sha256
from ..model.card import ModelCard

FILE_ENDING = ".nii.gz"
IMAGES = "imagesTr"
LABELS = "labelsTr"
DATASET_JSON = "dataset.json"
STAGING = ".medgen-staging"  # inside DIR: finished files wait here until their case is committed
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def image_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / IMAGES / f"{case_id}_0000{FILE_ENDING}"


def label_path(out_dir: Path, case_id: str) -> Path:
    return Path(out_dir) / LABELS / f"{case_id}{FILE_ENDING}"


def sidecar(path: Path) -> Path:
    return path.with_name(path.name[: -len(FILE_ENDING)] + ".json")


def case_files(out_dir: Path, case_id: str) -> list[Path]:
    """Every file of a case, in commit order (the image last)."""
    label, image = label_path(out_dir, case_id), image_path(out_dir, case_id)
    return [sidecar(label), label, sidecar(image), image]


def prepare(out_dir: Path) -> None:
    """Make DIR, imagesTr and labelsTr, or say why not."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise VolumeWriteError(f"{out_dir}: is a file; give a folder for the data set")
    try:
        for sub in (IMAGES, LABELS, STAGING):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VolumeWriteError(f"{out_dir}: cannot create the data set's folders ({error.strerror or error})") from None
    if not os.access(out_dir / IMAGES, os.W_OK) or not os.access(out_dir / LABELS, os.W_OK):
        raise VolumeWriteError(f"{out_dir}: the folder is not writable")


def case_record(out_dir: Path, case_id: str) -> dict[str, Any] | None:
    """The batch record of a complete case (from its image's sidecar), or None when the case is not complete."""
    image, label = image_path(out_dir, case_id), label_path(out_dir, case_id)
    try:
        if not (image.is_file() and label.is_file()):
            return None
        record = json.loads(sidecar(image).read_text()).get("batch")
        if not isinstance(record, dict) or record.get("case") != case_id:
            return None
        files = record.get("files_sha256") or {}
        if files.get("label") != file_sha256(label) or files.get("image") != file_sha256(image):
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return record


def case_complete(out_dir: Path, case_id: str) -> bool:
    return case_record(out_dir, case_id) is not None


def image_case_ids(out_dir: Path) -> list[str]:
    """The case identifiers nnU-Net would find in imagesTr (files `<case>_0000<ending>`)."""
    folder = Path(out_dir) / IMAGES
    suffix = f"_0000{FILE_ENDING}"
    try:
        return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())
    except OSError:
        return []


def staging_folder(out_dir: Path, case_id: str) -> Path:
    """A fresh folder for one attempt at a case (same file system as the targets, so moves are renames)."""
    root = Path(out_dir) / STAGING
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{case_id}-", dir=root))


def commit(staged: Path, out_dir: Path, case_id: str) -> None:
    """Move a case's staged files into place (label map first, image last) and remove the staging folder.

    Each move is an atomic rename; if one fails, the ones made are undone, so the case is left as it was
    (absent, or as a previous run wrote it). Raises VolumeWriteError.
    """
    targets = case_files(out_dir, case_id)
    done: list[tuple[Path, Path | None]] = []
    backups = staged / ".replaced"
    try:
        backups.mkdir(exist_ok=True)
        for target in targets:
            source = staged / target.name
            if not source.is_file():
                raise VolumeWriteError(f"case {case_id}: {target.name} was not written")
            backup = None
            if target.is_file():
                backup = backups / target.name
                os.replace(target, backup)
            elif target.exists():
                raise VolumeWriteError(f"{target}: something that is not a file is in the way; remove it")
            done.append((target, backup))
            os.replace(source, target)
    except (OSError, VolumeWriteError) as error:
        for target, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                elif target.is_file():
                    target.unlink()
        if isinstance(error, VolumeWriteError):
            raise
        raise VolumeWriteError(f"case {case_id}: could not be moved into place ({error.strerror or error})") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def sweep(out_dir: Path) -> list[str]:
    """Remove what interrupted runs left: staging folders, and label maps (with their sidecars) of cases
    that have no image. Returns the case ids whose leftovers were removed. Call it only while no worker
    writes into `out_dir` (before a run, or after its workers are gone)."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)
    removed = []
    labels = out_dir / LABELS
    if not labels.is_dir():
        return removed
    images = set(image_case_ids(out_dir))
    for path in sorted(labels.iterdir()):
        if path.name.endswith(FILE_ENDING) and path.is_file():
            case_id = path.name[: -len(FILE_ENDING)]
            if case_id not in images:
                with contextlib.suppress(OSError):
                    path.unlink()
                    sidecar(path).unlink(missing_ok=True)
                removed.append(case_id)
    return removed


def nnunet_labels(card: ModelCard) -> tuple[dict[str, int], dict[int, int] | None]:
    """dataset.json's labels (name -> value) and, when the schema's values have gaps, the mapping of the
    model's values onto the consecutive ones nnU-Net requires (None when none is needed).

    nnU-Net wants the background named "background" with value 0 and the others 1, 2, ... without gaps.
    """
    classes = card.label_schema.classes
    consecutive = [c.index for c in classes] == list(range(len(classes)))
    mapping = None if consecutive else {c.index: k for k, c in enumerate(classes)}
    labels = {}
    for k, c in enumerate(classes):
        labels["background" if c.index == 0 else c.name] = c.index if consecutive else k
    return labels, mapping


def channel_name(card: ModelCard) -> str:
    """The channel's name for nnU-Net: 'CT' selects its CT normalisation, anything else z-scoring."""
    return "CT" if card.modality == "CT" else (card.modality if card.modality != "other" else "image")


def dataset_json(card: ModelCard, num_training: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset.json nnU-Net v2 reads (channel_names, labels, numTraining, file_ending) plus how it was made."""
    labels, mapping = nnunet_labels(card)
    payload: dict[str, Any] = {
        "channel_names": {"0": channel_name(card)},
        "labels": labels,
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "name": f"synthetic-{card.name}",
        "description": f"SYNTHETIC images generated by napari-medgen with model {card.name} {card.version} "
        "for augmented label maps (the label maps are the truth)",
        "licence": card.license,
    }
    napari_medgen: dict[str, Any] = {"model": card.name, "model_version": card.version}
    if mapping is not None:
        napari_medgen["label_values_from_model"] = {str(k): v for k, v in mapping.items()}
    napari_medgen.update(extra or {})
    payload["napari_medgen"] = napari_medgen
    return payload


def write_dataset_json(out_dir: Path, card: ModelCard, extra: dict[str, Any] | None = None) -> Path:
    """Write DIR/dataset.json atomically; numTraining counts the cases in imagesTr, as nnU-Net does (a
    commit puts an image there only with its label map, so these are the complete cases)."""
    out_dir = Path(out_dir)
    count = len(image_case_ids(out_dir))
    path = out_dir / DATASET_JSON
    text = json.dumps(dataset_json(card, count, extra), indent=2) + "\n"
    try:
        handle, temporary = tempfile.mkstemp(prefix=".dataset-", suffix=".json", dir=out_dir)
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except OSError as error:
        raise VolumeWriteError(f"{path}: cannot be written ({error.strerror or error})") from None
    return path


def check_case_id(case_id: str) -> str:
    if not CASE_ID.match(case_id):
        raise MedgenError(f"case name {case_id!r}: use letters, digits, '_', '-' and '.' only")
    return case_id
