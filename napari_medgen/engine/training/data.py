"""Training data: image / label-map pairs found on disk (with their tissue fraction maps), read as slices on the
model's grid, and saved to / loaded from one prepared ``.npz`` file. `batches` draws augmented batches from them.

Data layout (`find_training_pairs`): a folder with nnU-Net's ``imagesTr/<case>_0000.ext`` and
``labelsTr/<case>.ext``; or a flat folder of ``<case>_image.ext`` / ``<case>_label.ext`` (also
``_labels``, ``_seg``); or a JSON manifest ``[{"image": ..., "label": ...}, ...]`` (paths relative to
the manifest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedgenError, VolumeReadError
from ..intensity import intensity_map_for
from ..io import read_volume, volume_extension
from ..label_tools import check_fraction_values, fractions_on_grid
from ..model.card import ModelCard
from ..orientation import PLANE_AXES, to_canonical
from ..resample import grid_at_spacing, resample
from ..volume import Volume


@dataclass
class TrainingSlices:
    """Training slices on the model's grid: images in [-1, 1], integer labels, positions in [0, 1], and
    optionally each voxel's tissue fractions (partial volume; the labels are their argmax)."""

    images: np.ndarray  # (N, H, W) float32
    labels: np.ndarray  # (N, H, W) int64
    positions: np.ndarray  # (N,)
    description: dict[str, Any] = field(default_factory=dict)
    fractions: np.ndarray | None = None  # (N, classes, H, W) float32, summing to 1 over classes
    # (N,) the plane each slice was cut in, as its index in the card's `orientations`; None: all axial.
    orientations: np.ndarray | None = None



def demo_training_pairs() -> list[tuple[Path, Path]]:
    """The shipped sample brain as the demo preset's training data."""
    from ..._paths import sample_dir

    return [(sample_dir() / "mni152_t1_2mm.nii.gz", sample_dir() / "mni152_tissue_labels_2mm.nii.gz")]


def fraction_paths(label_path: Path, classes: int) -> list[Path]:
    """Where a label map's tissue fraction maps lie: beside it, ``<label map name>_fraction_<k><ext>`` for each
    class k from 1 (the sample brain's ``mni152_tissue_labels_2mm_fraction_1.nii.gz`` ...)."""
    ext = volume_extension(label_path) or ""
    stem = label_path.name[: -len(ext)] if ext else label_path.name
    return [label_path.parent / f"{stem}_fraction_{k}{ext}" for k in range(1, classes)]


def find_training_fractions(pairs: list[tuple[Path, Path]], classes: int) -> list[list[Path]]:
    """Each pair's tissue fraction maps (classes 1 .. classes - 1), the files `fraction_paths` names beside its
    label map. Every case needs all of them."""
    found = []
    for _, label_path in pairs:
        paths = fraction_paths(label_path, classes)
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise MedgenError(
                f"case {label_path.name}: training on tissue fractions needs its {classes - 1} fraction maps beside the "
                f"label map; missing {', '.join(missing)}"
            )
        found.append(paths)
    return found


# -- data -----------------------------------------------------------------------------------------
def find_training_pairs(data: str | Path) -> list[tuple[Path, Path]]:
    """Image / label-map file pairs from a folder or a JSON manifest (see the module docstring)."""
    data = Path(data)
    if data.is_file() and data.suffix == ".json":
        try:
            entries = json.loads(data.read_text())
            pairs = [(data.parent / e["image"], data.parent / e["label"]) for e in entries]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise MedgenError(f"{data}: a manifest is a JSON list of {{\"image\": ..., \"label\": ...}} ({error})") from None
    elif (data / "imagesTr").is_dir() and (data / "labelsTr").is_dir():
        pairs = []
        for image in sorted((data / "imagesTr").iterdir()):
            ext = volume_extension(image)
            stem = image.name[: -len(ext)] if ext else ""
            if not ext or not stem.endswith("_0000"):
                continue
            label = data / "labelsTr" / f"{stem[:-5]}{ext}"
            if label.exists():
                pairs.append((image, label))
    elif data.is_dir():
        pairs = []
        for image in sorted(data.iterdir()):
            ext = volume_extension(image)
            stem = image.name[: -len(ext)] if ext else ""
            if not stem.endswith("_image"):
                continue
            case = stem[: -len("_image")]
            for suffix in ("_label", "_labels", "_seg"):
                label = data / f"{case}{suffix}{ext}"
                if label.exists():
                    pairs.append((image, label))
                    break
    else:
        raise VolumeReadError(f"{data}: no such training data folder or manifest")
    missing = [str(p) for pair in pairs for p in pair if not p.exists()]
    if missing:
        raise VolumeReadError(f"training files missing: {', '.join(missing[:3])}")
    if not pairs:
        raise MedgenError(
            f"{data}: no image / label pairs found; name them <case>_image.nii.gz and <case>_label.nii.gz, "
            "use nnU-Net's imagesTr/labelsTr layout, or give a JSON manifest"
        )
    return pairs


def load_training_slices(
    card: ModelCard, pairs: list[tuple[Path, Path]], fractions: list[list[Path | Volume]] | None = None
) -> TrainingSlices:
    """Read each pair, bring it to canonical orientation and the model's in-plane spacing, normalise.

    A card with `orientations` gets slices cut in each of those planes, from the pair resampled to the model's
    spacing along all three axes, each with its plane's index and its position along the axis it cuts.

    `fractions`, per pair, the fraction of each voxel that is each class from 1 on (probability maps on the
    pair's grid, as files or volumes; read one case at a time); the background takes the rest. They are
    resampled linearly beside the labels.
    """
    if fractions is not None and len(fractions) != len(pairs):
        raise MedgenError(f"tissue fractions for {len(fractions)} cases, but {len(pairs)} image / label pairs")
    images, labels, positions, shares, planes = [], [], [], [], []
    shapes = []
    orientations = list(card.conditioning.orientations)
    for case, (image_path, label_path) in enumerate(pairs):
        image, label_map = read_volume(image_path), read_volume(label_path)
        image.require_same_grid(label_map, what=f"label map {label_path.name}", ref=f"image {image_path.name}")
        card.label_schema.validate_label_map(label_map.array, what=f"label map {label_path.name}")
        image, label_map = to_canonical(image), to_canonical(label_map)
        # (x, y, z) spacing: the slice axis keeps the scan's own unless slices are cut in more than one plane
        through = card.spacing_mm[0] if orientations else image.spacing[2]
        grid = grid_at_spacing(image, (card.spacing_mm[0], card.spacing_mm[1], through))
        image_w = resample(image, grid, "linear").array
        labels_w = resample(label_map, grid, "nearest").array.astype(np.int64)
        normalised = intensity_map_for(card.normalization, image.array.astype(np.float32)).forward(image_w)
        shares_w = None
        if fractions is not None:
            shares_w = _fractions_on(fractions[case], label_map, grid, card.num_label_channels, label_path.name)
        for plane_index, plane in enumerate(orientations or ["axial"]):
            axis = PLANE_AXES[plane]
            count = labels_w.shape[axis]
            for k in range(count):
                cut = (slice(None),) * axis + (k,)
                if labels_w[cut].any():
                    images.append(normalised[cut])
                    labels.append(labels_w[cut])
                    positions.append(k / max(count - 1, 1))
                    planes.append(plane_index)
                    if shares_w is not None:
                        shares.append(shares_w[(slice(None),) + cut])
        shapes.append(labels_w.shape)
    height = max(a.shape[0] for a in images)
    width = max(a.shape[1] for a in images)
    pad = lambda a, value: np.pad(a, ((0, height - a.shape[0]), (0, width - a.shape[1])), constant_values=value)
    padded_shares = None
    if shares:
        padded_shares = np.zeros((len(shares), card.num_label_channels, height, width), np.float32)
        padded_shares[:, 0] = 1.0
        for n, share in enumerate(shares):
            padded_shares[n, :, : share.shape[1], : share.shape[2]] = share
    return TrainingSlices(
        fractions=padded_shares,
        images=np.stack([pad(a, -1.0) for a in images]).astype(np.float32),
        labels=np.stack([pad(a, 0) for a in labels]),
        positions=np.asarray(positions, np.float32),
        description={
            "pairs": [[str(i.name), str(label.name)] for i, label in pairs],
            "slices": len(images),
            "grid_shapes": [list(s) for s in shapes],
            "spacing_mm": card.spacing_mm,
            **({"orientations": orientations} if orientations else {}),
        },
        orientations=np.asarray(planes, np.int64) if orientations else None,
    )


def _fractions_on(maps: list[Path | Volume], label_map: Volume, grid: Any, channels: int, name: str) -> np.ndarray:
    """(channels, z, y, x) fractions on `grid` from the maps of classes 1.. on the (canonical) label map's grid."""
    canonical = []
    for k, tissue in enumerate(maps, start=1):
        what = f"tissue fraction map {tissue.name if isinstance(tissue, Path) else k} of {name}"
        tissue = to_canonical(read_volume(tissue) if isinstance(tissue, Path) else tissue)
        check_fraction_values(tissue, what)
        tissue.require_same_grid(label_map, what=what, ref=f"label map {name}")
        canonical.append(tissue)
    return fractions_on_grid(canonical, grid, channels)


def save_slices(data: TrainingSlices, path: str | Path) -> Path:
    """Prepared training slices to one ``.npz`` file (arrays, and the description as JSON): read, resampled
    and normalised once, trained on many times (and carried to a GPU machine without the image readers)."""
    path = Path(path)
    extra = {} if data.fractions is None else {"fractions": data.fractions.astype(np.float16)}
    if data.orientations is not None:
        extra["orientations"] = data.orientations.astype(np.int8)
    np.savez_compressed(
        path, images=data.images, labels=data.labels.astype(np.int32), positions=data.positions,
        description=np.array(json.dumps(data.description)), **extra,
    )
    return path


def load_slices(path: str | Path) -> TrainingSlices:
    """Training slices saved by `save_slices`."""
    try:
        with np.load(Path(path), allow_pickle=False) as saved:
            return TrainingSlices(
                images=saved["images"].astype(np.float32),
                labels=saved["labels"].astype(np.int64),
                positions=saved["positions"].astype(np.float32),
                description=json.loads(str(saved["description"])),
                fractions=saved["fractions"].astype(np.float32) if "fractions" in saved.files else None,
                orientations=saved["orientations"].astype(np.int64) if "orientations" in saved.files else None,
            )
    except (OSError, KeyError, ValueError) as error:
        raise VolumeReadError(f"{path}: not a file of prepared training slices ({error})") from None
