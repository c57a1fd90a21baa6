"""Anatomy-conditioned generation and inpainting: `api` (the public generate / inpaint), `options`
(what a run is asked and reports), `model_grid` (the inputs on the model's grid and the geometry back),
`tasks` (what each task makes of a result), `run` (the loop, with out-of-memory recovery), `provenance`.

The names below are imported when first used, so `from napari_medgen.engine.synthesis import
SamplingOptions` (a command line's defaults) costs no torch import.
"""

from __future__ import annotations

from ..._lazy import lazy_attributes

_WHERE = {
    "generate": "api",
    "inpaint": "api",
    "output_template": "api",
    "ProgressEvent": "options",
    "SamplingOptions": "options",
    "auto_slice_batch": "run",
    "generation_grid": "own_grid",
}
__all__ = sorted(_WHERE)

__getattr__ = lazy_attributes(__name__, _WHERE)
