"""Loading and caching models: a card, its MONAI networks on a device, and what identifies the weights."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelWeightsError
from .card import CARD_FILE, ModelCard
from .device import choose_precision, resolve_device, resolve_precision
from .networks import build_networks
from .registry import ModelEntry, find_model
from .weights import load_weights, check_weights_fit, weights_sha256


@dataclass
class LoadedModel:
    """A model ready to run: card, MONAI networks on a device, and what identifies the weights."""

    card: ModelCard
    folder: Path
    source: str
    networks: dict[str, torch.nn.Module]
    device: torch.device
    dtype: torch.dtype
    weights_sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.name

    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for m in self.networks.values() for p in m.parameters())


_CACHE: dict[tuple[Any, ...], LoadedModel] = {}


_CACHE_LOCK = threading.Lock()


def _files_stamp(entry: ModelEntry) -> tuple[Any, ...]:
    """Identity, size and modification time of card and weights: a model re-saved into its folder is reloaded."""
    stamp: list[Any] = []
    for path in (entry.folder / CARD_FILE, entry.folder / entry.card.weights):
        try:
            info = path.stat()
            stamp += [info.st_ino, info.st_size, info.st_mtime_ns]
        except OSError:
            stamp += [None, None, None]
    return tuple(stamp)


def load_model(
    model: str | os.PathLike[str] | None = None, device: str = "auto", precision: str = "auto"
) -> LoadedModel:
    """Load (or fetch from the cache) a model by name or folder on a device at a precision ('auto': bf16 where
    this machine runs it natively and the card allows it, else fp32; `extra["precision"]` says what and why)."""
    entry = find_model(model)
    torch_device = resolve_device(device)
    precision, why = choose_precision(precision, torch_device, entry.card)
    dtype = resolve_precision(precision, torch_device)
    key = (str(entry.folder.resolve()), str(torch_device), precision, _files_stamp(entry))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    check_weights_fit(entry.card, entry.folder)  # before building: a wrong or huge card costs no memory
    networks = build_networks(entry.card)
    load_weights(entry.card, entry.folder, networks)
    for module in networks.values():
        module.to(device=torch_device, dtype=dtype).eval().requires_grad_(False)
    loaded = LoadedModel(
        card=entry.card,
        folder=entry.folder,
        source=entry.source,
        networks=networks,
        device=torch_device,
        dtype=dtype,
        weights_sha256=weights_sha256(entry.folder / entry.card.weights),
        extra={"precision": {"used": precision, "why": why}},
    )
    with _CACHE_LOCK:
        # An older load of the same folder (before it was re-saved) is dropped, not kept alive.
        for old in [k for k in _CACHE if k[:3] == key[:3] and k != key]:
            del _CACHE[old]
        _CACHE[key] = loaded
    return loaded


def cpu_copy(loaded: LoadedModel) -> LoadedModel:
    """The same model on the CPU (not cached): where a run goes on after running out of GPU memory.

    The weights are copied from the loaded networks (so they are the ones the run started with, even if
    the folder was re-saved since); where they cannot be read back (a network on the 'meta' device),
    the weights file is loaded again, provided it is still the file that was loaded. fp16 becomes fp32
    (the CPU has no fp16 kernels).
    """
    dtype = torch.float32 if loaded.dtype == torch.float16 else loaded.dtype
    networks = build_networks(loaded.card)
    try:
        for role, module in networks.items():
            module.load_state_dict(loaded.networks[role].state_dict(), strict=True)
    except (RuntimeError, NotImplementedError, KeyError):
        path = loaded.folder / loaded.card.weights
        if not path.is_file() or weights_sha256(path) != loaded.weights_sha256:
            raise ModelWeightsError(
                f"{loaded.folder}: cannot move model {loaded.name} to the CPU: its weights file changed since it "
                "was loaded; load the model again"
            ) from None
        load_weights(loaded.card, loaded.folder, networks)
    for module in networks.values():
        module.to(device="cpu", dtype=dtype).eval().requires_grad_(False)
    return LoadedModel(
        card=loaded.card,
        folder=loaded.folder,
        source=loaded.source,
        networks=networks,
        device=torch.device("cpu"),
        dtype=dtype,
        weights_sha256=loaded.weights_sha256,
        extra={"precision": {"used": {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype)),
                             "why": "moved to the CPU after running out of GPU memory"}},
    )


def release_model(model: LoadedModel | None = None) -> int:
    """Drop one loaded model (or all) from the cache and free device memory; returns how many."""
    with _CACHE_LOCK:
        keys = [k for k, v in _CACHE.items() if model is None or v is model]
        for k in keys:
            del _CACHE[k]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return len(keys)


def loaded_models() -> list[LoadedModel]:
    with _CACHE_LOCK:
        return list(_CACHE.values())
