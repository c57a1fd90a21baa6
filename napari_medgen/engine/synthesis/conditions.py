"""The conditions beside a label map that a model may take: its context attributes (the brain LDM's sex, age,
ventricular and brain volume) and its modality by name (MAISI's modality_mapping.json). Resolved against the
card once, before any work: an unknown name or a value outside the card's range is refused in one line; what
the user left out is the card's (the publisher's) default, and the resolved values are what the provenance says."""

from __future__ import annotations

from typing import Any

from ..errors import OptionNotSupportedError


def resolved_attributes(card: Any, attributes: dict[str, float] | None) -> dict[str, float]:
    """Every context attribute of `card`, in the vector's order: the value asked for, else the card's default."""
    context = card.conditioning.context
    asked = dict(attributes or {})
    if asked and not context:
        raise OptionNotSupportedError(
            f"model {card.name} takes no attributes (asked for {', '.join(sorted(asked))}); leave --attribute out"
        )
    names = [a.name for a in context]
    unknown = sorted(set(asked) - set(names))
    if unknown:
        raise OptionNotSupportedError(
            f"model {card.name} has no attribute {', '.join(unknown)}; its attributes are {', '.join(names)}"
        )
    out = {}
    for attribute in context:
        value = float(asked.get(attribute.name, attribute.default))
        if not attribute.minimum <= value <= attribute.maximum:
            raise OptionNotSupportedError(
                f"attribute {attribute.name}={value:g} is outside the range model {card.name} was trained on "
                f"({attribute.minimum:g}..{attribute.maximum:g}{' ' + attribute.unit if attribute.unit else ''})"
            )
        out[attribute.name] = value
    return out


def resolved_modality(card: Any, name: str | None) -> str | None:
    """The modality name a run uses: the one asked for (one of the card's), else the card's own (None where the
    model takes no modality)."""
    latent = card.latent
    choices = latent.modalities if latent is not None else {}
    if name is None:
        if latent is None or latent.modality_code is None:
            return None
        return next((k for k, v in choices.items() if v == latent.modality_code), str(latent.modality_code))
    if name not in choices:
        offered = ", ".join(choices) if choices else "none"
        raise OptionNotSupportedError(f"model {card.name} has no modality {name!r}; it offers: {offered}")
    return name


def modality_code(card: Any, name: str | None) -> int | None:
    """The class label of a run's modality (resolved by `resolved_modality`)."""
    latent = card.latent
    if latent is None or latent.modality_code is None:
        return None
    if name is None or name not in latent.modalities:
        return latent.modality_code
    return latent.modalities[name]
