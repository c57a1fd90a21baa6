"""The models a napari-medgen installation offers, and each model's label schema, without Slicer.

`napari-medgen models` prints a table (NAME VERSION DIMS TASKS CONDITIONING SOURCE FOLDER, columns
padded with spaces; it has no machine-readable form yet), so the table is cut at its header's column
starts, which keeps folder names with spaces whole. The label classes (index, name), the default
guidance, whether the model takes a label map at all, its context attributes (name, range, default, unit)
and its modalities by name come from the model card, `model.json` in the model's folder, read as plain JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any

from .command_lines import MedGenRunError, clean_environment, require_executable

COLUMNS = ("NAME", "VERSION", "DIMS", "TASKS", "CONDITIONING", "SOURCE", "FOLDER")
CARD_FILE = "model.json"


@dataclass
class AttributeInfo:
    """One context attribute of a model (the brain LDM's age, ...): what a front end shows a control for."""

    name: str
    label: str
    minimum: float
    maximum: float
    default: float
    unit: str = ""

    @property
    def text(self) -> str:
        """How the control is labelled: the card's label (else the name) and unit."""
        return (self.label or self.name) + (f" ({self.unit})" if self.unit else "")


@dataclass
class ModelInfo:
    """One row of `napari-medgen models`, plus what its card says about labels and guidance."""

    name: str
    folder: str
    version: str = ""
    dims: str = ""
    tasks: tuple[str, ...] = ()
    conditioning: str = ""
    source: str = ""
    classes: list[tuple[int, str]] = field(default_factory=list)  # (label index, class name), from the card
    default_guidance: float | None = None
    modality: str = ""
    takes_label_map: bool = True  # False: generates on a grid alone (the scan's, via --like)
    attributes: list[AttributeInfo] = field(default_factory=list)  # context attributes, in the card's order
    modalities: list[str] = field(default_factory=list)  # modality names the model offers (--modality)
    default_modality: str | None = None  # the card's own, where it has a name

    @property
    def label(self) -> str:
        """How the model is shown in a list: name, version, tasks."""
        return f"{self.name} {self.version} ({self.dims}; {', '.join(self.tasks)})".replace(" ()", "")

    def supports(self, command: str) -> bool:
        """Whether the model can run `command` (a card that lists no tasks is taken to do both)."""
        return not self.tasks or command in self.tasks


def model_classes(model: ModelInfo | None) -> list[tuple[int, str]]:
    """The (index, name) label classes of a model; none when no model is picked."""
    return model.classes if model is not None else []


def parse_models_table(text: str) -> list[ModelInfo]:
    """The models in `napari-medgen models` output (notes and 'no models found' lines are skipped)."""
    lines = text.splitlines()
    header_index = next((i for i, line in enumerate(lines) if line.split()[:2] == ["NAME", "VERSION"]), None)
    if header_index is None:
        return []
    header = lines[header_index]
    starts = []
    for column in COLUMNS:
        position = header.find(column, starts[-1] + 1 if starts else 0)
        if position < 0:
            raise MedGenRunError(f"cannot read the model list: column {column} is missing from its header "
                                 f"({header.strip()!r}); this napari-medgen may be newer than the Slicer module")
        starts.append(position)
    models = []
    for line in lines[header_index + 1:]:
        if not line.strip() or line.startswith(("note:", "skipped:", "no models found")):
            continue
        cells = [line[start:end].strip() for start, end in zip(starts, starts[1:] + [len(line)])]
        cells[-1] = line[starts[-1]:].strip()
        name, version, dims, tasks, conditioning, source, folder = cells
        if not name or not folder:
            continue
        models.append(ModelInfo(name=name, folder=folder, version=version, dims=dims,
                                tasks=tuple(t for t in tasks.split(",") if t), conditioning=conditioning,
                                source=source))
    return models


def read_card(folder: str) -> dict[str, Any]:
    """A model's card as plain JSON (raises MedGenRunError if it cannot be read)."""
    path = os.path.join(folder, CARD_FILE)
    try:
        with open(path, encoding="utf-8") as file:
            card = json.load(file)
    except (OSError, ValueError) as error:
        raise MedGenRunError(f"cannot read the model card {path}: {error}") from None
    if not isinstance(card, dict):
        raise MedGenRunError(f"the model card {path} is not a JSON object")
    return card


def card_classes(card: dict[str, Any]) -> list[tuple[int, str]]:
    """(index, name) of every class in a card's label schema, by index."""
    schema = card.get("label_schema") or {}
    classes = []
    for entry in schema.get("classes") or []:
        if isinstance(entry, dict) and isinstance(entry.get("index"), int) and entry.get("name"):
            classes.append((int(entry["index"]), str(entry["name"])))
    return sorted(classes)


def _number(value: Any, fallback: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else fallback


def card_attributes(card: dict[str, Any]) -> list[AttributeInfo]:
    """The context attributes in a card's conditioning, in the vector's order (entries without a name skipped)."""
    attributes = []
    for entry in (card.get("conditioning") or {}).get("context") or []:
        if isinstance(entry, dict) and entry.get("name"):
            low, high = _number(entry.get("minimum"), 0.0), _number(entry.get("maximum"), 1.0)
            attributes.append(AttributeInfo(str(entry["name"]), str(entry.get("label") or ""), low, high,
                                            _number(entry.get("default"), low), str(entry.get("unit") or "")))
    return attributes


def card_modalities(card: dict[str, Any]) -> tuple[list[str], str | None]:
    """The modality names a card offers and the name of its own code (None where it has none or no name)."""
    latent = card.get("latent") or {}
    mapping = latent.get("modalities") or {}
    names = [str(name) for name in mapping] if isinstance(mapping, dict) else []
    own = next((str(name) for name, code in mapping.items() if code == latent.get("modality_code")), None) if names else None
    return names, own


def add_card_details(model: ModelInfo) -> ModelInfo:
    """Fill `classes`, `default_guidance`, `modality`, `takes_label_map`, `attributes` and the modalities from
    the model's card (left as they are if unreadable)."""
    try:
        card = read_card(model.folder)
    except MedGenRunError:
        return model
    model.classes = card_classes(card)
    conditioning = card.get("conditioning") or {}
    guidance = conditioning.get("default_guidance")
    model.default_guidance = float(guidance) if isinstance(guidance, (int, float)) else None
    model.modality = str(card.get("modality") or "")
    model.takes_label_map = conditioning.get("label_map", "channels") != "none"
    model.attributes = card_attributes(card)
    model.modalities, model.default_modality = card_modalities(card)
    return model


def list_models(executable: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> list[ModelInfo]:
    """Run `napari-medgen models` and return its models with their label classes.

    Also the check of the executable setting: raises MedGenRunError with what went wrong, in words."""
    require_executable(executable)
    try:
        done = subprocess.run([str(executable), "models"], check=False, capture_output=True, text=True, encoding="utf-8",
                              errors="replace", env=clean_environment(env), timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MedGenRunError(f"`{executable} models` did not answer within {timeout:.0f} s") from None
    except OSError as error:
        raise MedGenRunError(f"cannot run {executable}: {error.strerror or error}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise MedGenRunError(f"`{executable} models` failed (exit code {done.returncode})" + (f": {tail}" if tail else ""))
    if "NAME" not in done.stdout and "no models found" not in done.stdout:
        raise MedGenRunError(f"{executable} does not look like napari-medgen: `models` printed "
                             f"{done.stdout.strip()[:200]!r}")
    return [add_card_details(model) for model in parse_models_table(done.stdout)]


__all__ = ["AttributeInfo", "ModelInfo", "add_card_details", "card_attributes", "card_classes", "card_modalities", "list_models", "model_classes", "parse_models_table",
           "read_card"]
