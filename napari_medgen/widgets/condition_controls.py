"""Condition controls: a slider per context attribute of the model (name, unit, range and default from its card)
and its modality by name, for models that take them; empty (and hidden) for the rest."""

from __future__ import annotations

from magicgui.widgets import ComboBox, Container, FloatSlider

from ..engine.model.loading import LoadedModel
from ..engine.synthesis.conditions import resolved_modality
from .session import ModelSession


def attribute_text(attribute) -> str:
    """How an attribute is labelled: the card's label (else its name) and unit."""
    return (attribute.label or attribute.name) + (f" ({attribute.unit})" if attribute.unit else "")


class ConditionControls(Container):
    """The model's context attributes (one slider each, at the card's default) and modality choice; `values()`
    gives them as SamplingOptions' `attributes` and `modality`. Rebuilt when the session's model changes; the
    panel that holds it shows it while `in_use`."""

    def __init__(self, session: ModelSession) -> None:
        super().__init__(widgets=[], labels=True)
        self.sliders: dict[str, FloatSlider] = {}
        self.modality: ComboBox | None = None
        self._session = session
        self._show(session.model)
        session.changed.connect(self._model_changed)  # held weakly: a closed widget is not kept alive

    @property
    def in_use(self) -> bool:
        """Whether the model takes any condition shown here (the panel hides the box otherwise)."""
        return bool(self.sliders or self.modality is not None)

    def values(self) -> dict[str, object]:
        """The conditions as set: {'attributes': {name: value} or None, 'modality': name or None}."""
        attributes = {name: float(slider.value) for name, slider in self.sliders.items()}
        return {"attributes": attributes or None, "modality": self.modality.value if self.modality is not None else None}

    def _show(self, model: LoadedModel | None) -> None:
        self.clear()
        self.sliders, self.modality = {}, None
        card = model.card if model is not None else None
        for attribute in card.conditioning.context if card is not None else []:
            slider = FloatSlider(label=attribute_text(attribute), min=attribute.minimum, max=attribute.maximum,
                                 value=attribute.default, step=(attribute.maximum - attribute.minimum) / 100)
            slider.tooltip = (f"{attribute.name}: {attribute.minimum:g}..{attribute.maximum:g} "
                              f"(the model's default {attribute.default:g})")
            self.sliders[attribute.name] = slider
            self.append(slider)
        modalities = list(card.latent.modalities) if card is not None and card.latent is not None else []
        if modalities:
            own = resolved_modality(card, None)
            choices = [(name, name) for name in modalities]
            if own not in modalities:  # the card's own code has no name: offer it as it is, as the CLI does
                choices.insert(0, (f"the model's own ({own})", None))
            self.modality = ComboBox(label="modality", choices=choices, value=own if own in modalities else None)
            self.modality.tooltip = "the modality the model makes (its card's own by default)"
            self.append(self.modality)

    def _model_changed(self, model: LoadedModel | None) -> None:
        try:
            self._show(model)
        except RuntimeError:  # the widget was closed and its Qt half deleted: stop listening
            self._session.changed.disconnect(self._model_changed)
