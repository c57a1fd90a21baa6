"""The grid a model that takes no label map generates on: an open image's (`like`), a size and spacing asked for,
or the model's own (the card's size and spacing, read from the publisher's config), as an empty label map the
run goes through like any other. A model that takes a label map is refused here, in one line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidVolumeError, LabelSchemaError
from ..model.card import ModelCard
from ..volume import Volume


def generation_grid(
    card: ModelCard,
    like: Volume | None = None,
    size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
) -> Volume:
    """An all-background label map on the grid to generate on: `like`'s grid; else `size` voxels (x, y[, z]) at
    `spacing` mm (each the card's where not given), centred on the origin, axes aligned (LPS)."""
    if card.takes_label_map:
        raise LabelSchemaError(
            f"model {card.name} draws the anatomy from a label map ({card.conditioning.label_map}): give --labels"
        )
    if like is not None:
        if size is not None or spacing is not None:
            raise InvalidVolumeError("give the grid either as an image to match (--like) or as --size / --spacing, not both")
        return like.with_array(np.zeros(like.shape, np.uint8), metadata={})
    n = card.spatial_dims
    size = [int(v) for v in (size if size is not None else card.tile_size)]
    spacing = [float(v) for v in (spacing if spacing is not None else card.spacing_mm)]
    if len(size) != n or len(spacing) != n:
        raise InvalidVolumeError(f"model {card.name} is {n}-D: give {n} sizes and {n} spacings (x, y{', z' if n == 3 else ''})")
    if min(size) < 1 or min(spacing) <= 0:
        raise InvalidVolumeError(f"sizes must be positive whole numbers and spacings positive millimetres, got {size} and {spacing}")
    origin = tuple(-0.5 * (s - 1) * d for s, d in zip(size, spacing, strict=True))
    return Volume(np.zeros(tuple(size[::-1]), np.uint8), tuple(spacing), origin, tuple(np.eye(n).ravel()))
