"""Which precision `auto` runs a model at on this machine: bf16 where the processor runs it natively and a
one-time measurement confirms it pays, fp32 elsewhere; a model card may forbid reduced precision.

Why: on a CPU with AMX or AVX512-BF16 the shipped networks run about 2x faster in bf16 at outputs within
0.5 % of the brain's intensity range (docs/benchmarks.md, Precision); on a CPU without them bf16 is emulated
and several times slower. So the flags decide whether to consider bf16, and a short micro-benchmark (cached
per machine, CPU model and torch version) confirms it, since a flag alone has misled before.

`NAPARI_MEDGEN_AUTO_PRECISION=fp32` (or bf16, fp16) pins what `auto` means on a machine (the tests pin fp32,
so their results do not depend on the CI machine's processor).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

AUTO_PRECISION_ENV = "NAPARI_MEDGEN_AUTO_PRECISION"
CACHE_DIR_ENV = "NAPARI_MEDGEN_CACHE_DIR"
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
REPORTED_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")
MIN_BF16_SPEEDUP = 1.2  # below this, fp32's exactness is worth more than the time saved


@dataclass(frozen=True)
class CpuInfo:
    """The processor, as benchmarks and `auto` need it: its model name and the flags that matter."""

    model: str
    flags: tuple[str, ...]

    @property
    def native_bf16(self) -> bool:
        return any(flag in self.flags for flag in NATIVE_BF16_FLAGS)

    def describe(self) -> str:
        return f"{self.model} ({', '.join(self.flags) or 'no AVX2/AVX-512/AMX flags'})"


def cpu_info(cpuinfo_text: str | None = None) -> CpuInfo:
    """This machine's CPU from /proc/cpuinfo (Linux); elsewhere the platform's name and no flags."""
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo_text = ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
            break  # every core lists the same
    return CpuInfo(model=model, flags=tuple(flag for flag in REPORTED_FLAGS if flag in flags))


@dataclass(frozen=True)
class Bf16Measurement:
    """fp32 and bf16 times of the same small convolution and attention workload on this CPU."""

    cpu: str
    torch_version: str
    fp32_s: float
    bf16_s: float

    @property
    def speedup(self) -> float:
        return self.fp32_s / self.bf16_s if self.bf16_s > 0 else 0.0


def _cache_file() -> Path:
    folder = os.environ.get(CACHE_DIR_ENV)
    if not folder:
        from platformdirs import user_cache_dir

        folder = user_cache_dir("napari-medgen", appauthor=False)
    return Path(folder) / "cpu_precision.json"


def measure_bf16(repeats: int = 3) -> Bf16Measurement:
    """Time a UNet-like block (3x3 convolutions, group norm, attention over 24x24 tokens) in fp32 and bf16."""
    import torch

    torch.manual_seed(0)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.GroupNorm(8, 64), torch.nn.SiLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1),
    ).eval()
    attention = torch.nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(4, 64, 24, 24)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        block.to(dtype)
        attention.to(dtype)
        inputs = x.to(dtype)
        best = float("inf")
        with torch.inference_mode():
            for repeat in range(repeats + 1):  # the first call warms the kernels
                start = time.perf_counter()
                features = block(inputs)
                tokens = features.flatten(2).transpose(1, 2)
                attention(tokens, tokens, tokens, need_weights=False)
                if repeat:
                    best = min(best, time.perf_counter() - start)
        times[dtype] = best
    return Bf16Measurement(cpu_info().describe(), torch.__version__, times[torch.float32], times[torch.bfloat16])


def bf16_measurement() -> Bf16Measurement:
    """The measurement of this machine, from the cache when it was made on the same CPU and torch."""
    import torch

    cpu, path = cpu_info().describe(), _cache_file()
    try:
        cached = Bf16Measurement(**json.loads(path.read_text()))
        if cached.cpu == cpu and cached.torch_version == torch.__version__:
            return cached
    except (OSError, ValueError, TypeError):
        pass
    measured = measure_bf16()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(measured)))
        temporary.replace(path)
    except OSError:  # a read-only home: measured again next time, nothing else lost
        pass
    return measured


def auto_precision(device: torch.device, card: Any = None) -> tuple[str, str]:
    """The precision `auto` means for `device` (and the model's card), and why, in a few words."""
    import torch

    if card is not None and not getattr(card, "reduced_precision", True):
        return "fp32", f"the card of {card.name} asks for fp32"
    pinned = os.environ.get(AUTO_PRECISION_ENV, "").strip().lower()
    if pinned:
        return pinned, f"{AUTO_PRECISION_ENV}={pinned}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "the GPU supports bf16"
        return "fp16", "the GPU has no bf16: fp16"
    if device.type != "cpu":
        return "fp32", f"{device.type}: fp32 (reduced precision not measured there)"
    info = cpu_info()
    if not info.native_bf16:
        return "fp32", "this CPU has no native bf16 (AMX or AVX512-BF16)"
    measured = bf16_measurement()
    if measured.speedup < MIN_BF16_SPEEDUP:
        return "fp32", f"bf16 measured only {measured.speedup:.2f}x faster on this CPU"
    return "bf16", f"native bf16 on this CPU, {measured.speedup:.1f}x faster than fp32"
