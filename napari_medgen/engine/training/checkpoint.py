"""Training checkpoints: everything a run needs to continue as if it had never stopped, without pickle.

A checkpoint folder holds ``training_state.safetensors`` (the network, its EMA, and every tensor of the
optimiser's, the learning-rate schedule's and the random generators' states) and ``training_state.json``
(step, losses, config, and those states' plain values, each tensor named by its key in the safetensors
file). `to_json` / `from_json` turn a state dict into that pair and back, keeping tuples, integer keys and
tensors as they were, so `load_state_dict` gets what `state_dict` gave.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATE_FILE, TENSOR_FILE = "training_state.json", "training_state.safetensors"
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


# -- state dicts as JSON + named tensors ----------------------------------------------------------
def to_json(value: Any, tensors: dict[str, torch.Tensor], name: str) -> Any:
    """`value` as JSON-able data; its tensors go into `tensors` under names that start with `name`."""
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().cpu().clone().contiguous()
        return {_TENSOR: name}
    if isinstance(value, tuple):
        return {_TUPLE: [to_json(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [to_json(v, tensors, f"{name}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not {_TENSOR, _TUPLE, _ITEMS} & set(value):
            return {k: to_json(v, tensors, f"{name}.{k}") for k, v in value.items()}
        if not all(isinstance(k, int | str) for k in value):
            raise TypeError(f"{name}: keys of type {sorted({type(k).__name__ for k in value})} cannot be stored")
        return {_ITEMS: [[k, to_json(v, tensors, f"{name}.{k}")] for k, v in value.items()]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{name}: a {type(value).__name__} cannot be stored in a checkpoint")


def from_json(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `to_json`."""
    if isinstance(value, list):
        return [from_json(v, tensors) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TENSOR}:
            return tensors[value[_TENSOR]]
        if set(value) == {_TUPLE}:
            return tuple(from_json(v, tensors) for v in value[_TUPLE])
        if set(value) == {_ITEMS}:
            return {k: from_json(v, tensors) for k, v in value[_ITEMS]}
        return {k: from_json(v, tensors) for k, v in value.items()}
    return value


# -- checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(folder: Path, network, ema, states: dict[str, Any], record: dict[str, Any]) -> None:
    """Write the weights, `states` (name -> state dict: optimizer, lr_schedule, rng) and `record`
    (step, losses, ...); the tensor file is replaced atomically, then the JSON that names its tensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"network.{k}": v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()})
    encoded = {name: to_json(state, tensors, name) for name, state in states.items()}
    tmp = folder / f".{TENSOR_FILE}.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / TENSOR_FILE)
    tmp = folder / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({**record, **encoded}, indent=1))
    tmp.replace(folder / STATE_FILE)


def save_run_checkpoint(folder: Path, network, ema, optimizer, lr_schedule, generator: torch.Generator,
                        record: dict[str, Any]) -> None:
    """`save_checkpoint` of a training or distillation run at the end of a step: the optimiser's, the
    learning-rate schedule's and the random generator's states beside the weights and `record`."""
    states = {
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "rng": {"torch": generator.get_state()},
    }
    save_checkpoint(folder, network, ema, states, record)


def has_checkpoint(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and (folder / TENSOR_FILE).is_file()


def load_checkpoint(folder: Path, network, ema, optimizer, state_names: tuple[str, ...]) -> dict[str, Any]:
    """Load the weights (network, EMA) and the optimiser; returns the record with the decoded states
    named in `state_names` (those the checkpoint has). A checkpoint of an earlier version, which kept
    only the optimiser's per-parameter tensors, loads those into the optimiser's current settings."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / TENSOR_FILE))
    record = json.loads((folder / STATE_FILE).read_text())
    network.load_state_dict({k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")})
    ema.module.load_state_dict({k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")})
    ema.n_averaged.fill_(record["step"])
    if "optimizer" in record:
        record["optimizer"] = from_json(record["optimizer"], tensors)
    else:
        record["optimizer"] = _earlier_optimizer_state(optimizer, tensors)
    optimizer.load_state_dict(record["optimizer"])
    for name in state_names:
        if name in record:
            record[name] = from_json(record[name], tensors)
    return record


def _earlier_optimizer_state(optimizer, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The optimiser state of a checkpoint whose tensors were named ``optimizer.<index>.<name>``."""
    state = optimizer.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    state["state"] = per_param
    return state
