"""Sampling controls: steps, sampler, seed (with a dice), guidance and variants, defaults from the engine."""

from __future__ import annotations

import random

from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton, SpinBox

from ..engine.diffusion.methods import DEFAULT_SAMPLER, SAMPLERS
from ..engine.model.loading import LoadedModel
from ..engine.synthesis.options import DEFAULT_STEPS, SamplingOptions, resolve_options
from .session import ModelSession


def guidance_for(model: LoadedModel | None) -> float:
    """The model's recommended guidance (1 = none when no model is loaded or it was not trained for guidance)."""
    if model is None or not model.card.supports_guidance:
        return 1.0
    return model.card.conditioning.default_guidance


def defaults_for(model: LoadedModel | None) -> SamplingOptions:
    """The options a run of `model` gets when nothing is asked for: its card's steps and sampler (a distilled
    model's own), else the engine's."""
    if model is None:
        return SamplingOptions(sampler=DEFAULT_SAMPLER, steps=DEFAULT_STEPS)
    return resolve_options(None, {}, model.card)


def guidance_note(model: LoadedModel | None) -> str:
    """Why the guidance box is off for `model` ('' where the model applies guidance)."""
    if model is None:
        return "load a model first"
    if model.card.supports_guidance:
        return f"classifier-free guidance weight (1 = none; the card recommends {guidance_for(model):g})"
    return (f"{model.card.name} cannot apply classifier-free guidance (it was trained without dropping its "
            "conditions, or is a latent model): it always runs with 1")


class SamplingControls(Container):
    """The sampling options of a run; guidance, steps and sampler follow the session's model's card."""

    def __init__(self, session: ModelSession, variants: bool = True) -> None:
        defaults = defaults_for(session.model)
        self.steps = SpinBox(label="steps", value=defaults.steps, min=1, max=1000)
        self.sampler = ComboBox(label="sampler", choices=list(SAMPLERS), value=defaults.sampler)
        self.seed = SpinBox(label="seed", value=defaults.seed, min=0, max=2**31 - 1)
        self.dice = PushButton(text="new seed")
        self.guidance = FloatSpinBox(label="guidance", value=guidance_for(session.model), min=0.0, max=20.0, step=0.5)
        self.variants = SpinBox(label="variants", value=defaults.variants, min=1, max=16, visible=variants)
        super().__init__(widgets=[self.steps, self.sampler, self.seed, self.dice, self.guidance, self.variants], labels=True)
        self.dice.changed.connect(self.roll)
        self._show_guidance(session.model)
        self._session = session
        session.changed.connect(self._model_changed)  # held weakly: a closed widget is not kept alive

    def roll(self) -> int:
        """A fresh random seed."""
        self.seed.value = random.randrange(2**31 - 1)
        return self.seed.value

    def options(self, **overrides: object) -> SamplingOptions:
        """The options as set, with `overrides` (such as an inpainting widget's context and feather)."""
        return SamplingOptions(
            sampler=self.sampler.value,
            steps=self.steps.value,
            seed=self.seed.value,
            guidance=self.guidance.value,
            variants=self.variants.value,
            **overrides,
        )

    def _show_guidance(self, model: LoadedModel | None) -> None:
        """Guidance only where the model applies it; the tooltip says why not (the run records 1)."""
        self.guidance.value = guidance_for(model)
        self.guidance.enabled = model is not None and model.card.supports_guidance
        self.guidance.tooltip = guidance_note(model)

    def _model_changed(self, model: LoadedModel | None) -> None:
        try:
            self._show_guidance(model)
            defaults = defaults_for(model)  # a few-step model's card names its steps and sampler
            self.steps.value, self.sampler.value = defaults.steps, defaults.sampler
        except RuntimeError:  # the widget was closed and its Qt half deleted: stop listening
            self._session.changed.disconnect(self._model_changed)
