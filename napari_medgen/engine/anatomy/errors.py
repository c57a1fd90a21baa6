"""Errors of the anatomy engine that a user can cause (no atlas for the model, a scan registration cannot place)."""

from __future__ import annotations

from ..errors import MedgenError


class AnatomyError(MedgenError):
    """Labels could not be made from the scan: the registration failed or the result is not a brain."""


class NoAtlasError(AnatomyError):
    """The model names no atlas, so there is nothing to register to the scan."""
