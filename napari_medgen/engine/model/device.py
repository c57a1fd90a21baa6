"""Which device and precision a model runs at: one discovery of devices and one list of precisions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import DeviceError

if TYPE_CHECKING:
    import torch

# Torch is imported when a device is resolved, not here: the command line's --help lists these names.
# "auto" (the default everywhere) is bf16 where this machine runs it natively and fast, else fp32 (precision.py).
PRECISION_NAMES = ("auto", "fp32", "fp16", "bf16")


def available_devices() -> list[str]:
    """The device names this machine offers, as a user picks them: auto, cpu, cuda:N..., mps."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple's MPS, then the CPU."""
    import torch

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


def choose_precision(precision: str, device: torch.device, card: Any = None) -> tuple[str, str]:
    """The precision name a run uses for `precision` as asked ('auto' settled for this machine and card), and why."""
    if precision not in PRECISION_NAMES:
        raise DeviceError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    if precision != "auto":
        return precision, "asked for"
    from .precision import auto_precision

    return auto_precision(device, card)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The torch dtype of a precision name (not 'auto': see choose_precision), refused where the device has no
    kernels for it."""
    import torch

    if precision not in PRECISION_NAMES[1:]:
        raise DeviceError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("fp16 is not supported on the CPU; use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("this GPU does not support bf16; use fp16 or fp32")
    if precision == "bf16" and device.type == "mps":
        raise DeviceError("bf16 is not supported on MPS; use fp16 or fp32")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
