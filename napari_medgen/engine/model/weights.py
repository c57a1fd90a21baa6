"""Weights: safetensors only, checked against the card before any network is built; one writer.

Nothing is ever unpickled from a model folder. A plain PyTorch state dict is converted once, with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ModelCardError, ModelWeightsError
from ..hashing import file_sha256
from .card import ModelCard, save_card
from .networks import build_networks


def state_dict_of(networks: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """One flat state dict: keys prefixed with the network's role ('network.', 'controlnet.')."""
    flat = {}
    for role, module in networks.items():
        for key, tensor in module.state_dict().items():
            flat[f"{role}.{key}"] = tensor.detach().contiguous().cpu()
    return flat


def save_model(card: ModelCard, networks: dict[str, torch.nn.Module], folder: str | Path) -> Path:
    """Write a model folder: card and safetensors weights (atomically, weights first)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / card.weights
    tmp = weights.with_name(f".{weights.name}.tmp")
    save_file(state_dict_of(networks), str(tmp), metadata={"model": card.name, "version": card.version})
    os.chmod(tmp, 0o644)  # a model folder is shared data, not a private file
    tmp.replace(weights)
    save_card(card, folder)
    return folder


def weights_sha256(path: Path) -> str:
    """The SHA-256 of a weights file: the model's identity in provenance records and the model cache."""
    return file_sha256(path)


def _weights_path(card: ModelCard, folder: Path) -> Path:
    relative = Path(card.weights)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ModelCardError(f"{folder}: the card's weights path {card.weights!r} points outside the model folder")
    path = folder / relative
    if not path.is_file():
        raise ModelWeightsError(
            f"{folder}: weights file {card.weights} is missing; copy it beside model.json or re-export the model"
        )
    return path


def _not_safetensors(path: Path, error: BaseException) -> ModelWeightsError:
    return ModelWeightsError(
        f"{path}: not a valid safetensors file ({str(error)[:200]}); napari-medgen never loads pickled weights. "
        "Convert a PyTorch checkpoint with `napari-medgen import-weights`"
    )


def check_weights_fit(card: ModelCard, folder: Path) -> None:
    """Compare the weights file's header (names and shapes, read without loading a tensor) with the card's
    networks built on the 'meta' device: a card that does not fit its weights (or that describes a huge
    network) is refused before any memory is spent on it."""
    from safetensors import SafetensorError, safe_open

    path = _weights_path(card, folder)
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _not_safetensors(path, error) from None
    expected = {
        f"{role}.{key}": tuple(value.shape)
        for role, module in build_networks(card, device="meta").items()
        for key, value in module.state_dict().items()
    }
    _check_shapes(shapes, expected, str(path))


def load_weights(
    card: ModelCard, folder: Path, networks: dict[str, torch.nn.Module], new_at_zero: tuple[str, ...] = ()
) -> None:
    """Load a model folder's safetensors weights into `networks` (role -> module); ModelWeightsError if they do not fit.

    `new_at_zero`: keys ("role.name") the networks have and the file may lack (a fine-tune's added embedding);
    they are set to zero.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _weights_path(card, folder)
    try:
        state = load_file(str(path))  # safetensors: a header and raw tensors, no code can run
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _not_safetensors(path, error) from None
    expected = state_dict_of(networks)
    for key in new_at_zero:
        if key not in state and key in expected:
            state[key] = torch.zeros_like(expected[key])
    _check_fit(state, networks, str(path))
    _assign(state, networks)


def _check_fit(state: dict[str, torch.Tensor], networks: dict[str, torch.nn.Module], where: str) -> None:
    """Raise ModelWeightsError naming the keys where `state` does not fit the networks."""
    _check_shapes(
        {k: tuple(v.shape) for k, v in state.items()},
        {k: tuple(v.shape) for k, v in state_dict_of(networks).items()},
        where,
    )


def _check_shapes(state: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {state[k]} vs {v}" for k, v in expected.items() if k in state and state[k] != v]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {', '.join(missing[:3])}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:3])}")
        if wrong_shape:
            details.append(f"wrong shape {', '.join(wrong_shape[:3])}")
        raise ModelWeightsError(
            f"{where}: the weights do not fit the network the card describes ({'; '.join(details)}); "
            "the card and the weights come from different models: use the weights file that came with this card "
            "(or the card that came with these weights)"
        )


def _assign(state: dict[str, torch.Tensor], networks: dict[str, torch.nn.Module]) -> None:
    for role, module in networks.items():
        prefix = f"{role}."
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)


def import_state_dict(checkpoint: str | Path, card: ModelCard, out_folder: str | Path) -> Path:
    """Convert a plain PyTorch state dict (tensors only) into a model folder with safetensors weights.

    ``torch.load(weights_only=True)`` refuses anything but tensors and containers, so a checkpoint
    carrying code raises instead of running it.
    """
    import pickle

    try:
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # PyTorch's own message suggests loading the file unsafely: not advice to pass on.
        raise ModelWeightsError(
            f"{checkpoint}: the checkpoint holds Python objects besides tensors, which could run code when loaded; "
            "refusing to load it. Save the state dict alone (torch.save(model.state_dict(), path)) and import that"
        ) from None
    except Exception as error:  # noqa: BLE001 - a missing, truncated or foreign file is the user's file's fault
        reason = " ".join(str(error).split())[:200]
        raise ModelWeightsError(
            f"{checkpoint}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: {reason}); refusing to "
            "load it. Check the path, or save the state dict again with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelWeightsError(
            f"{checkpoint}: expected a dict of tensors (a state dict); save one with "
            "torch.save(model.state_dict(), path)"
        )
    networks = build_networks(card)
    if not any(k.startswith("network.") for k in state):
        state = {f"network.{k}": v for k, v in state.items()}
    # Check strictly now, before anything is written: a half-made model folder would show up in the
    # registry and fail at first use.
    _check_fit(state, networks, str(checkpoint))
    folder = Path(out_folder)
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    weights = folder / card.weights
    tmp = weights.with_name(f".{weights.name}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp),
              metadata={"model": card.name, "version": card.version})
    os.chmod(tmp, 0o644)  # a model folder is shared data, not a private file
    tmp.replace(weights)
    save_card(card, folder)
    return folder
