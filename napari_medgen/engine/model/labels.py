"""Label schemas: which integer in a label map means which anatomy, and its display colour."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import LabelSchemaError


class LabelClass(BaseModel):
    """One anatomy class of a label map."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, le=65535)
    name: str = Field(min_length=1)
    color: str = Field(pattern=r"^#[0-9a-fA-F]{6}$", description="display colour as #rrggbb")


class LabelSchema(BaseModel):
    """The classes a model knows; index 0 is always background."""

    model_config = ConfigDict(extra="forbid")

    classes: list[LabelClass]

    @field_validator("classes")
    @classmethod
    def _unique_and_background(cls, classes: list[LabelClass]) -> list[LabelClass]:
        indices = [c.index for c in classes]
        if len(set(indices)) != len(indices):
            raise ValueError(f"label indices must be unique, got {indices}")
        if 0 not in indices:
            raise ValueError("the schema must define index 0 (background)")
        return sorted(classes, key=lambda c: c.index)

    @model_validator(mode="after")
    def _names_unique(self) -> LabelSchema:
        names = [c.name.lower() for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"label names must be unique, got {names}")
        return self

    @property
    def indices(self) -> list[int]:
        return [c.index for c in self.classes]

    @property
    def max_index(self) -> int:
        return max(self.indices)

    @property
    def label_dtype(self) -> np.dtype:
        """The smallest unsigned type that holds every index (a Labels layer, a written label map)."""
        return np.dtype(np.uint8 if self.max_index < 256 else np.uint16)

    def name_of(self, index: int) -> str | None:
        for c in self.classes:
            if c.index == index:
                return c.name
        return None

    def index_of(self, name: str) -> int:
        for c in self.classes:
            if c.name.lower() == name.lower():
                return c.index
        raise LabelSchemaError(f"no class named {name!r}; the schema has {', '.join(c.name for c in self.classes)}")

    def validate_label_map(self, label_map: np.ndarray, what: str = "label map") -> None:
        """Raise LabelSchemaError if the map holds values the schema does not define."""
        present = np.unique(label_map)
        unknown = sorted(set(present.tolist()) - set(self.indices))
        if unknown:
            shown = ", ".join(str(v) for v in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            known = ", ".join(f"{c.index}={c.name}" for c in self.classes)
            raise LabelSchemaError(
                f"the {what} holds label values {shown} that the model does not know ({known}); "
                "remap them onto the model's labels (the painter's import does this) or erase them"
            )

    def napari_colormap(self) -> dict[int | None, str]:
        """A colour per label for napari's Labels layer (unknown values transparent)."""
        colormap: dict[int | None, str] = {None: "#00000000"}
        for c in self.classes:
            colormap[c.index] = "#00000000" if c.index == 0 else c.color
        return colormap

    def to_json(self) -> list[dict[str, Any]]:
        return [c.model_dump() for c in self.classes]


TISSUE_SCHEMA = LabelSchema(
    classes=[
        LabelClass(index=0, name="background", color="#000000"),
        LabelClass(index=1, name="CSF", color="#3c8dd6"),
        LabelClass(index=2, name="grey matter", color="#d98c3c"),
        LabelClass(index=3, name="white matter", color="#f2ecc8"),
    ]
)
