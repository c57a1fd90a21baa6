"""Finding, loading and caching models: card + safetensors weights, never a pickle.

Models are looked up, in order of precedence, in the folders named by ``NAPARI_MEDGEN_MODELS``
(os.pathsep-separated), the per-user folder (``platformdirs.user_data_dir('napari-medgen')/models``),
and the package's shipped ``resources/models/``. A user's model with the same name as a shipped one
wins, and the listing says which it shadows.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .card import CARD_FILE, ModelCard, load_card, save_card
from .errors import DeviceError, ModelCardError, ModelNotFoundError, ModelWeightsError

ENV_VAR = "NAPARI_MEDGEN_MODELS"
DEFAULT_MODEL = "brain-t1-demo"
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ModelEntry:
    """A model found on disk: its card, folder, where it came from, and what it shadows."""

    card: ModelCard
    folder: Path
    source: str  # "environment", "user" or "shipped"
    shadows: tuple[str, ...] = ()


def user_models_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-medgen", appauthor=False)) / "models"


def model_search_path() -> list[tuple[str, Path]]:
    """(source, folder) pairs in order of precedence."""
    from .._paths import shipped_models_dir

    folders: list[tuple[str, Path]] = []
    for item in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if item.strip():
            folders.append(("environment", Path(item.strip()).expanduser()))
    folders.append(("user", user_models_dir()))
    folders.append(("shipped", shipped_models_dir()))
    return folders


def _candidate_folders(root: Path) -> list[Path]:
    try:
        if (root / CARD_FILE).is_file():
            return [root]
        if not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if (p / CARD_FILE).is_file())
    except OSError:  # a model folder that cannot be listed (permissions, a stale network mount) holds no models
        return []


def list_models() -> tuple[list[ModelEntry], list[str]]:
    """All usable models (first of each name wins) and one line per folder that could not be read."""
    found: dict[str, ModelEntry] = {}
    problems: list[str] = []
    seen: set[Path] = set()
    for source, root in model_search_path():
        for folder in _candidate_folders(root):
            # The same folder reached twice (say the user folder also named in the environment
            # variable) is one model, not a model shadowing itself.
            real = folder.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                card = load_card(folder)
            except ModelCardError as error:
                problems.append(str(error))
                continue
            if card.name in found:
                winner = found[card.name]
                found[card.name] = ModelEntry(
                    winner.card, winner.folder, winner.source, winner.shadows + (f"{source}: {folder}",)
                )
                continue
            found[card.name] = ModelEntry(card, folder, source)
    return sorted(found.values(), key=lambda e: e.card.name), problems


def find_model(name_or_path: str | os.PathLike[str] | None) -> ModelEntry:
    """A model by name (registry) or by folder path; None means the shipped default."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path).expanduser()
    if (path / CARD_FILE).is_file():
        return ModelEntry(load_card(path), path.resolve(), "path")
    entries, _ = list_models()
    for entry in entries:
        if entry.card.name == str(name_or_path):
            return entry
    if path.is_dir():
        # A folder without a card (and no model of that name): say what the folder lacks.
        return ModelEntry(load_card(path), path.resolve(), "path")
    names = ", ".join(e.card.name for e in entries) or "none installed"
    raise ModelNotFoundError(
        f"no model named {name_or_path!r} (available: {names}); give a model folder path, or put the "
        f"model in {user_models_dir()} or a folder listed in ${ENV_VAR}"
    )


# -- devices --------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU."""
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("CUDA was asked for but no CUDA GPU is available; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("Apple MPS was asked for but is not available; use --device auto or cpu")
    if not (name == "cpu" or name == "mps" or name.startswith("cuda")):
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    try:
        resolved = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise DeviceError(
            f"there is no GPU {resolved.index} (this machine has {torch.cuda.device_count()}); use cuda:0 .. "
            f"cuda:{torch.cuda.device_count() - 1} or auto"
        )
    return resolved


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("fp16 is not supported on the CPU; use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU does not support bf16; use fp16 or fp32")
    if precision == "bf16" and device.type == "mps":
        raise DeviceError("bf16 is not supported on MPS; use fp16 or fp32")
    return PRECISIONS[precision]


# -- networks -------------------------------------------------------------------------------------
def build_networks(card: ModelCard, device: str | torch.device | None = None) -> dict[str, torch.nn.Module]:
    """The card's MONAI networks with fresh (random) weights; on `device` if given ('meta': shapes only,
    no memory, to check a card against its weights before building anything large)."""
    import contextlib

    from monai.networks import nets

    specs = {"network": card.network}
    if card.controlnet is not None:
        specs["controlnet"] = card.controlnet
    networks = {}
    for role, spec in specs.items():
        try:
            with torch.device(device) if device is not None else contextlib.nullcontext():
                networks[role] = getattr(nets, spec.class_name)(**spec.kwargs)
        except MemoryError:
            raise ModelCardError(
                f"model {card.name}: the card's {role} is too large to build in this machine's memory; check its "
                f"{role}.kwargs (channels)"
            ) from None
        except Exception as error:  # noqa: BLE001 - whatever MONAI's constructor raises on these arguments
            # The schema cannot know every constraint of MONAI's constructors (e.g. channels that
            # norm_num_groups must divide, or a zero that it divides by): a card MONAI refuses is still
            # the card's fault.
            raise ModelCardError(
                f"model {card.name}: the card's {role} arguments are not accepted by MONAI's "
                f"{spec.class_name} ({type(error).__name__}: {str(error)[:300]}); fix the card's {role}.kwargs"
            ) from None
    return networks


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
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _load_weights(card: ModelCard, folder: Path, networks: dict[str, torch.nn.Module]) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _weights_path(card, folder)
    try:
        state = load_file(str(path))  # safetensors: a header and raw tensors, no code can run
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _not_safetensors(path, error) from None
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
    model: str | os.PathLike[str] | None = None, device: str = "auto", precision: str = "fp32"
) -> LoadedModel:
    """Load (or fetch from the cache) a model by name or folder on a device at a precision."""
    entry = find_model(model)
    torch_device = resolve_device(device)
    dtype = resolve_precision(precision, torch_device)
    key = (str(entry.folder.resolve()), str(torch_device), precision, _files_stamp(entry))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    check_weights_fit(entry.card, entry.folder)  # before building: a wrong or huge card costs no memory
    networks = build_networks(entry.card)
    _load_weights(entry.card, entry.folder, networks)
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
        _load_weights(loaded.card, loaded.folder, networks)
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
