"""The model session of one viewer: the model its widgets use, and a signal when that model changes.

One session per viewer, looked up with `ModelSession.of(viewer)`: two viewers in one process (or a test
that opens several) each have their own current model, and a session goes away with its viewer.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, ClassVar

from psygnal import Signal

from ..engine.model.loading import LoadedModel, load_model, release_model


class ModelSession:
    """The model loaded for one viewer. `changed` is emitted with the new model (or None) when it changes."""

    changed = Signal(object)

    _SESSIONS: ClassVar[weakref.WeakKeyDictionary[Any, ModelSession]] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self._model: LoadedModel | None = None

    @classmethod
    def of(cls, viewer: Any) -> ModelSession:
        """The session of `viewer`, made on first use; it lives as long as the viewer does."""
        session = cls._SESSIONS.get(viewer)
        if session is None:
            session = cls._SESSIONS[viewer] = cls()
        return session

    @property
    def model(self) -> LoadedModel | None:
        """The loaded model (None if none is loaded)."""
        return self._model

    def set_model(self, model: LoadedModel | None) -> None:
        """Make `model` the session's model (None: no model), and tell the widgets if it changed.

        The model it replaces is not released: a run may still be using it; it is freed when that ends.
        """
        if model is self._model:
            return
        self._model = model
        self.changed.emit(model)

    def load(self, model: str | os.PathLike[str], device: str = "auto", precision: str = "auto") -> LoadedModel:
        """Load a model by registry name or folder and make it the session's model.

        Raises the engine's MedgenError (unknown model, broken weights, unavailable device); the model
        loaded before stays loaded then.
        """
        loaded = load_model(model, device=device, precision=precision)
        self.set_model(loaded)
        return loaded

    def release(self) -> None:
        """Free the session's model (its device memory) and leave the session with none."""
        model = self._model
        if model is not None:
            release_model(model)
        self.set_model(None)
