"""Memory: what the host or a device can still give, the run's working budget, and what "out of memory" looks like."""

from __future__ import annotations

import os
from typing import Any

# Default memory budget for one run's working arrays (float32 voxels times the number of copies).
MAX_WORK_VOXELS = int(os.environ.get("NAPARI_MEDGEN_MAX_VOXELS", 512 * 512 * 512))

_OUT_OF_MEMORY_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "alloc_failed")


def host_available_memory() -> int:
    """Bytes a new allocation on the host can have now (psutil's `available` counts the page cache that
    can be dropped); generous when the system does not say."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - a sandbox that hides /proc must not stop a read or a run
        return 64 << 30


def available_memory(device: Any) -> int:
    """Bytes `device` (a torch.device) can still give: CUDA's free memory, else the host's available memory."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_memory()


def is_out_of_memory(error: BaseException) -> bool:
    """Running out of device or host memory (CUDA, MPS, the CPU allocator, numpy), not any other error."""
    import torch

    types = tuple(
        {t for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t}
    ) + (MemoryError,)
    if isinstance(error, types):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OUT_OF_MEMORY_TEXT)
