"""Which atlas a model registers to a scan: an image and its label map in the model's label schema.

A model card names its atlas in its optional ``atlas`` field (``{"image": ..., "labels": ...}``, paths inside
the model folder, or ``sample:<file>`` for the package's shipped sample folder). A model without one has no
atlas: `atlas_for` says so, and what to do instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedgenError
from ..model.card import ModelCard
from ..volume import Volume
from .errors import AnatomyError, NoAtlasError

SAMPLE_PREFIX = "sample:"


@dataclass(frozen=True)
class Atlas:
    """An atlas image and its label map (same grid), as files."""

    image: Path
    labels: Path
    source: str  # "card"

    def load(self, card: ModelCard) -> tuple[Volume, Volume]:
        """(image as float32, labels in the card's schema dtype); refuses labels the schema does not know."""
        from ..io import read_volume

        try:
            image, labels = read_volume(self.image), read_volume(self.labels)
        except MedgenError as error:
            raise AnatomyError(f"the atlas of model {card.name} could not be read: {error}") from error
        if image.ndim != 3 or not image.same_grid(labels):
            raise AnatomyError(
                f"the atlas of model {card.name} needs a 3-D image and a label map on the same grid "
                f"({self.image.name}: {image.shape}, {self.labels.name}: {labels.shape})"
            )
        if not labels.is_label_map:
            raise AnatomyError(f"the atlas labels {self.labels.name} hold non-integer values")
        card.label_schema.validate_label_map(labels.array, what=f"atlas label map {self.labels.name}")
        if not np.any(labels.array > 0):
            raise AnatomyError(f"the atlas labels {self.labels.name} are all background")
        image = image.with_array(np.asarray(image.array, np.float32))
        labels = labels.with_array(np.asarray(labels.array).astype(card.label_schema.label_dtype))
        return image, labels


def atlas_for(card: ModelCard, folder: str | os.PathLike[str] | None = None) -> Atlas:
    """The atlas `card` names in its ``atlas`` field; NoAtlasError when there is none.

    `folder` is the model folder that relative paths in the card are inside of.
    """
    spec = getattr(card, "atlas", None)
    if spec is not None:
        image, labels = _field(spec, "image"), _field(spec, "labels")
        return Atlas(_resolve(image, folder, card), _resolve(labels, folder, card), "card")
    raise NoAtlasError(
        f"model {card.name} names no atlas, so labels cannot be made from the scan with it; give a label map "
        "made elsewhere (open it and import it into the painter, or pass it with --labels), paint one, or use a "
        "model whose card has an atlas (brain-t1-demo)"
    )


def _field(spec: Any, name: str) -> str:
    value = spec.get(name) if isinstance(spec, dict) else getattr(spec, name, None)
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise NoAtlasError(f"the model card's atlas has no {name!r} file")
    return str(value)


def _resolve(name: str, folder: str | os.PathLike[str] | None, card: ModelCard) -> Path:
    from ..._paths import sample_dir

    if name.startswith(SAMPLE_PREFIX):
        base, relative = sample_dir(), Path(name[len(SAMPLE_PREFIX) :])
    else:
        if folder is None:
            raise NoAtlasError(
                f"the atlas file {name!r} of model {card.name} is relative to its folder; give the folder"
            )
        base, relative = Path(folder), Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise NoAtlasError(f"the atlas file {name!r} of model {card.name} must lie inside the model folder")
    path = base / relative
    if not path.is_file():
        raise NoAtlasError(f"the atlas file {path} of model {card.name} is missing; reinstall the model")
    return path
