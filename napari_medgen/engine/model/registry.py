"""Finding models on disk (no torch needed): environment folders, the user's folder, the shipped ones.

Models are looked up, in order of precedence, in the folders named by ``NAPARI_MEDGEN_MODELS``
(os.pathsep-separated), the per-user folder (``platformdirs.user_data_dir('napari-medgen')/models``),
and the package's shipped ``resources/models/``. A user's model with the same name as a shipped one
wins, and the listing says which it shadows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelCardError, ModelNotFoundError
from .card import CARD_FILE, ModelCard, load_card

ENV_VAR = "NAPARI_MEDGEN_MODELS"


DEFAULT_MODEL = "brain-t1-demo"


@dataclass(frozen=True)
class ModelEntry:
    """A model found on disk: its card, folder, where it came from, and what it shadows."""

    card: ModelCard
    folder: Path
    source: str  # "environment", "user" or "shipped"
    shadows: tuple[str, ...] = ()


def user_models_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-medgen", appauthor=False)) / "models"


def model_search_path() -> list[tuple[str, Path]]:
    """(source, folder) pairs in order of precedence."""
    from ..._paths import shipped_models_dir

    folders: list[tuple[str, Path]] = []
    for item in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if item.strip():
            folders.append(("environment", Path(item.strip()).expanduser()))
    folders.append(("user", user_models_dir()))
    folders.append(("shipped", shipped_models_dir()))
    return folders


def _candidate_folders(root: Path) -> list[Path]:
    try:
        if (root / CARD_FILE).is_file():
            return [root]
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if (p / CARD_FILE).is_file())
    except OSError:  # a model folder that cannot be listed (permissions, a stale network mount) holds no models
        return []


def list_models() -> tuple[list[ModelEntry], list[str]]:
    """All usable models (first of each name wins) and one line per folder that could not be read."""
    found: dict[str, ModelEntry] = {}
    problems: list[str] = []
    seen: set[Path] = set()
    for source, root in model_search_path():
        for folder in _candidate_folders(root):
            # The same folder reached twice (say the user folder also named in the environment
            # variable) is one model, not a model shadowing itself.
            real = folder.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                card = load_card(folder)
            except ModelCardError as error:
                problems.append(str(error))
                continue
            if card.name in found:
                winner = found[card.name]
                found[card.name] = ModelEntry(
                    winner.card, winner.folder, winner.source, winner.shadows + (f"{source}: {folder}",)
                )
                continue
            found[card.name] = ModelEntry(card, folder, source)
    return sorted(found.values(), key=lambda e: e.card.name), problems


def find_model(name_or_path: str | os.PathLike[str] | None) -> ModelEntry:
    """A model by name (registry) or by folder path; None means the shipped default."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path).expanduser()
    if (path / CARD_FILE).is_file():
        return ModelEntry(load_card(path), path.resolve(), "path")
    entries, _ = list_models()
    for entry in entries:
        if entry.card.name == str(name_or_path):
            return entry
    if path.is_dir():
        # A folder without a card (and no model of that name): say what the folder lacks.
        return ModelEntry(load_card(path), path.resolve(), "path")
    names = ", ".join(e.card.name for e in entries) or "none installed"
    raise ModelNotFoundError(
        f"no model named {name_or_path!r} (available: {names}); give a model folder path, or put the "
        f"model in {user_models_dir()} or a folder listed in ${ENV_VAR}"
    )
