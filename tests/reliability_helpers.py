"""Helpers of the reliability tests: faults injected into networks, snapshots of inputs and folders."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from napari_medgen.engine.model.loading import LoadedModel
from napari_medgen.engine.volume import Volume


def drive(gen) -> tuple[Any, list]:
    """Run an engine generator to its end: (returned value, events)."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


def cuda_out_of_memory() -> BaseException:
    """What PyTorch raises when the GPU is full (torch.OutOfMemoryError, a RuntimeError)."""
    kind = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return kind("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)")


def runtime_out_of_memory() -> BaseException:
    """The plain RuntimeError older PyTorch versions raised for a full GPU."""
    return RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB")


class FaultyNetwork:
    """Makes a model's network raise on its forward pass (a pre-hook; `remove()` takes it away).

    `fail_calls`: the 1-based calls that raise (None: every call). Records the batch size of each call.
    """

    def __init__(self, model: LoadedModel, error=cuda_out_of_memory, fail_calls: set[int] | None = None) -> None:
        self.error = error
        self.fail_calls = fail_calls
        self.calls = 0
        self.batches: list[int] = []
        self.raised = 0
        self._handle = model.networks["network"].register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        self.batches.append(int(args[0].shape[0]))
        if self.fail_calls is None or self.calls in self.fail_calls:
            self.raised += 1
            raise self.error()

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def on_fake_accelerator(model: LoadedModel) -> LoadedModel:
    """The model as if on an accelerator: its networks on PyTorch's 'meta' device (shapes, no data).

    Every network call on it can be made to fail with an out-of-memory error; a run then has to go on
    on the CPU, which is what a machine with a full GPU does. Works without a GPU.
    """
    networks = {role: copy.deepcopy(module).to("meta") for role, module in model.networks.items()}
    return dataclasses.replace(model, networks=networks, device=torch.device("meta"))


def volume_copy(volume: Volume) -> Volume:
    return Volume(volume.array.copy(), volume.spacing, volume.origin, volume.direction, copy.deepcopy(volume.metadata))


def assert_volume_unchanged(volume: Volume, before: Volume) -> None:
    """Voxels, type, geometry and metadata exactly as they were."""
    assert volume.array.dtype == before.array.dtype
    np.testing.assert_array_equal(volume.array, before.array)
    assert (volume.spacing, volume.origin, volume.direction) == (before.spacing, before.origin, before.direction)
    assert volume.metadata == before.metadata


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes (hidden temporary files included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def hidden_leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a write may have left behind (they all start with '.')."""
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def layer_state(viewer) -> list[tuple]:
    """Every layer's name, type, data (a copy), transforms and metadata keys: to show nothing changed."""
    state = []
    for layer in viewer.layers:
        state.append(
            (
                layer.name,
                type(layer).__name__,
                np.array(layer.data, copy=True),
                np.array(layer.scale),
                np.array(layer.translate),
                np.array(layer.affine.affine_matrix),
                sorted(layer.metadata),
            )
        )
    return state


def assert_layers_unchanged(viewer, before: list[tuple]) -> None:
    after = layer_state(viewer)
    assert [s[:2] for s in after] == [s[:2] for s in before]
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a[2], b[2], err_msg=f"layer {a[0]} data changed")
        for x, y in zip(a[3:6], b[3:6], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"layer {a[0]} placement changed")
        assert a[6] == b[6], f"layer {a[0]} metadata changed"


def exception_chain(error: BaseException) -> list[BaseException]:
    """An exception, its cause, its cause's cause ... (what a notification may have been made from)."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain
