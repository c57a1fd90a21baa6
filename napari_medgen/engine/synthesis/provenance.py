"""What marks a result as synthetic and says how it was made."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from ... import __version__
from ..model.loading import LoadedModel
from .options import SamplingOptions


def provenance(
    loaded: LoadedModel, options: SamplingOptions, task: str, variant: int, inputs: dict[str, str], network_calls: int,
    planes_why: str = "",
) -> dict[str, Any]:
    """The metadata of one variant: `synthetic: true` and the record of what ran: model, weights, seed, the
    sampler, steps and guidance as applied (the options once resolved against the card), the network calls
    this variant took (a tri-planar call: one pass over the volume), the planes sampled (and why, where a thin
    volume went axial), the fill of an inpainting, the device and precision it ran on, and the inputs."""
    return {
        "synthetic": True,
        "provenance": {
            "generator": f"napari-medgen {__version__}",
            "task": task,
            "model": loaded.card.name,
            "model_version": loaded.card.version,
            "weights_sha256": loaded.weights_sha256,
            "sampler": options.sampler,
            "steps": options.steps,
            "network_calls": network_calls,
            "eta": options.eta,
            "guidance": options.guidance,
            "guidance_rescale": options.guidance_rescale,
            **({"planes": options.planes} if loaded.card.spatial_dims == 2 and options.planes else {}),
            **({"planes_average_last": options.planes_average_last} if options.planes == "tri" else {}),
            **({"planes_why": planes_why} if planes_why else {}),
            "slice_noise_correlation": options.slice_noise_correlation,
            **({"slice_noise_correlation_by_label": {str(k): v for k, v in options.slice_noise_correlation_by_label.items()}}
               if options.slice_noise_correlation_by_label else {}),
            **({"attributes": dict(options.attributes)} if options.attributes else {}),
            **({"modality": options.modality} if options.modality is not None else {}),
            "seed": options.seed + variant,
            "variant": variant,
            **({"inpaint_estimate": options.inpaint_estimate} if task == "inpaint" else {}),
            **({"mean_draws": options.mean_draws, "border_interpolation_mm": options.border_interpolation_mm}
               if task == "inpaint" and options.inpaint_estimate == "mean" else {}),
            "inputs_sha256": inputs,
            "device": str(loaded.device),
            "precision": str(loaded.dtype).replace("torch.", ""),
            "precision_why": loaded.extra.get("precision", {}).get("why", ""),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
