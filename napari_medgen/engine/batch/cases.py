"""One labelled case: augment a label map with a seeded transform, generate its image, write both atomically.

`make_case` is what a dask worker (or a plain loop) runs for each case. The model is loaded once per
process (`cached_model`) and kept for the next cases. Nothing of a case appears in the data set until
both of its files and their sidecars are finished (`layout.commit`); a stop request between network
calls ends the case with nothing written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedgenError
from ..hashing import file_sha256
from ..synthesis.options import SamplingOptions
from ..volume import Volume
from . import layout
from .augment import AugmentOptions, augment_label_map


class CaseStopped(MedgenError):
    """A case stopped on request (Ctrl-C, a closed run) before anything of it was written."""


@dataclass(frozen=True)
class CaseSpec:
    """Which case: its name, the input label map it starts from, and its seed (augmentation and noise)."""

    case_id: str
    source_index: int
    source_name: str
    source_sha256: str
    seed: int


@dataclass(frozen=True)
class CaseSettings:
    """What every case of a run shares: the model, where it runs, how it samples and augments."""

    model: str | None = None  # name or folder (None: the shipped demo model)
    device: str = "auto"
    precision: str = "auto"
    options: SamplingOptions = field(default_factory=SamplingOptions)
    augment: AugmentOptions = field(default_factory=AugmentOptions)

    def fingerprint(self) -> dict[str, Any]:
        """What makes two runs' cases alike (recorded in every case; a rerun with other settings is told)."""
        options = self.options
        return {
            "model": self.model,
            "sampler": options.sampler,
            "steps": options.steps,
            "guidance": options.guidance,
            "eta": options.eta,
            "augment": self.augment.to_json(),
        }


@dataclass
class CaseResult:
    """How a case went: done (written now), skipped (complete already) or failed (after its retries)."""

    case_id: str
    status: str
    seconds: float = 0.0
    worker: str = ""
    model_loaded: bool = False  # this case paid for loading the model in its process
    torch_threads: int = 0  # the intra-op threads it ran with
    paths: list[str] = field(default_factory=list)
    error: str = ""
    augmentation: dict[str, Any] = field(default_factory=dict)


# -- the per-process model cache ----------------------------------------------------------------------------
_MODELS: dict[tuple[str, str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(settings: CaseSettings) -> tuple[Any, bool]:
    """(LoadedModel, whether it was loaded just now): once per process, kept for every later case."""
    from ..model.loading import load_model

    key = (str(settings.model), settings.device, settings.precision)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key], False
        loaded = load_model(settings.model, device=settings.device, precision=settings.precision)
        _MODELS[key] = loaded
        return loaded, True


def forget_models() -> None:
    """Drop this process's cached models (tests; a long-lived worker that should free memory)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- one case -------------------------------------------------------------------------------------------------
def make_case(
    out_dir: str | os.PathLike[str],
    spec: CaseSpec,
    label_map: Volume,
    settings: CaseSettings,
    stop: Callable[[bool], bool] | None = None,
    torch_threads: int | None = None,
) -> CaseResult:
    """Augment `label_map`, generate its image and write the case into `out_dir`'s nnU-Net layout.

    Raises the project's errors (or CaseStopped when `stop(fresh)` turns true: it is asked between network
    calls, and with fresh=True, no cached answer, once more just before the case is moved into place); on any
    failure nothing of the case is left in the data set. `torch_threads` sets this process's torch threads
    first (workers that share a machine split its cores).
    """
    import torch

    from ..synthesis import generate

    start = time.perf_counter()
    out_dir = Path(out_dir)
    if torch_threads and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    loaded, fresh = cached_model(settings)
    card = loaded.card
    augmented = augment_label_map(label_map, card.label_schema, settings.augment, seed=(spec.seed, 0x6175))
    options = dataclasses.replace(settings.options, seed=spec.seed, variants=1, preview_every=0)
    run = generate(loaded, augmented.label_map, options)
    try:
        while True:
            if stop is not None and stop(False):
                raise CaseStopped(f"case {spec.case_id} stopped before it was written")
            next(run)
    except StopIteration as finished:
        image = finished.value[0]
    finally:
        run.close()

    _, mapping = layout.nnunet_labels(card)
    labels = np.asarray(augmented.label_map.array)
    if mapping is not None:  # nnU-Net wants consecutive values; the record says how they map back
        lookup = np.zeros(max(mapping) + 1, dtype=np.int64)
        for value, consecutive in mapping.items():
            lookup[value] = consecutive
        labels = lookup[labels]
    labels = labels.astype(card.label_schema.label_dtype)
    record = {
        "case": spec.case_id,
        "source": spec.source_name,
        "source_sha256": spec.source_sha256,
        "seed": spec.seed,
        "augmentation": augmented.record,
        "settings": settings.fingerprint(),
    }
    label_volume = augmented.label_map.with_array(
        labels, metadata={"label_map": True, "description": f"label map of synthetic case {spec.case_id}", "batch": record}
    )
    image.metadata["batch"] = record
    _write_case(out_dir, spec.case_id, image, label_volume, stop)
    return CaseResult(
        case_id=spec.case_id,
        status="done",
        seconds=round(time.perf_counter() - start, 3),
        worker=worker_name(),
        model_loaded=fresh,
        torch_threads=torch.get_num_threads(),
        paths=[str(layout.image_path(out_dir, spec.case_id)), str(layout.label_path(out_dir, spec.case_id))],
        augmentation=augmented.record,
    )


def _write_case(out_dir: Path, case_id: str, image: Volume, label_map: Volume, stop: Callable[[bool], bool] | None) -> None:
    """Write both files and their sidecars into a staging folder, record their hashes in the image's
    sidecar (what makes the case complete), then, unless the run was stopped meanwhile, move them into place."""
    from ..io import write_volume

    staged = layout.staging_folder(out_dir, case_id)
    try:
        label_file = write_volume(label_map, staged / layout.label_path(out_dir, case_id).name)
        image_file = write_volume(image, staged / layout.image_path(out_dir, case_id).name)
        image_sidecar = layout.sidecar(image_file)
        metadata = json.loads(image_sidecar.read_text())
        metadata["batch"]["files_sha256"] = {"image": file_sha256(image_file), "label": file_sha256(label_file)}
        image_sidecar.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
        if stop is not None and stop(True):  # a stopped run gets no new case after it counted the cases there
            raise CaseStopped(f"case {case_id} stopped before it was written")
    except BaseException:
        import shutil

        shutil.rmtree(staged, ignore_errors=True)
        raise
    layout.commit(staged, out_dir, case_id)
