"""The machine a figure came from, and whether it was quiet while the figure was measured.

`watch()` (common.parse calls it as a benchmark starts) starts a thread that samples, once a second, the CPU time
the whole machine spent busy (`psutil.cpu_times()`: user, nice, system, irq, softirq) and the CPU time of this
benchmark's own processes (this one, its live descendants, and through the kernel's children times the ones that
ended); the difference is what other processes used. `record()` is the machine dict every results JSON carries:
the CPU, cores, torch, and
- `other_cpu_percent`: the others' CPU time over the run as a share of all cores' time (100 = every core busy
  with other work the whole time), and `other_cpu_percent_peak_10s`, the largest share over any 10 s;
- `busy`: whether `other_cpu_percent` exceeded BUSY_PERCENT (the run's timings are then disturbed);
- `load_average_start_end` and `other_processes`, the busiest others by CPU seconds between the start and now.
common.write_result and common.update_doc refuse to make a disturbed run's figures the headline figures unless the
benchmark was told `--allow-disturbed`; `disturbance(machine)` is the words that then stand beside the figure.
"""

from __future__ import annotations

import os
import platform
import re
import threading
import time
from typing import Any

BUSY_PERCENT = 10.0  # others' share of all cores' time above which a run's timings count as disturbed
INTERVAL_S = 1.0
PEAK_WINDOW_S = 10.0


def cpu_name() -> str:
    """The processor's model name (the engine's reading of it, which `--precision auto` also uses)."""
    from napari_medgen.engine.model.precision import cpu_info

    return cpu_info().model


def cpu_flags() -> list[str]:
    """The processor's flags that decide how fast it runs the networks (AMX, AVX512-BF16, AVX-512, AVX2)."""
    from napari_medgen.engine.model.precision import cpu_info

    return list(cpu_info().flags)


def _machine_busy_s(psutil) -> float:
    """CPU seconds the whole machine has spent busy (all cores; guest time is inside user, steal is not ours)."""
    t = psutil.cpu_times()
    return sum(getattr(t, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq"))


def _own_s(process) -> float:
    t = process.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def tree_cpu_s(psutil, me) -> float:
    """CPU seconds of this process and its descendants: the live ones each, the ended ones inside their parent's
    children times (a child that ends moves from the first to the second, so the sum never falls)."""
    total = _own_s(me)
    for child in me.children(recursive=True):
        try:
            total += _own_s(child)
        except psutil.Error:
            pass
    return total


def _others(psutil, mine: set[int]) -> dict[int, tuple[str, float]]:
    """Every other process now: pid -> (command line, CPU seconds)."""
    out = {}
    for p in psutil.process_iter(["cmdline", "name", "cpu_times"]):
        if p.pid in mine or p.info.get("cpu_times") is None:
            continue
        t = p.info["cpu_times"]
        out[p.pid] = (" ".join(p.info.get("cmdline") or [p.info.get("name") or "?"])[:70], t.user + t.system)
    return out


class Watch:
    """One run's look at the machine: a sampling thread from `start` on (see the module's docstring)."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.cores = os.cpu_count() or 1
        self.load_start = os.getloadavg()[0]
        self.samples: list[tuple[float, float, float]] = []  # (wall, machine busy s, our tree's s)
        self.others_start = _others(psutil, self._mine())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sample()
        self.thread = threading.Thread(target=self._run, name="machine-watch", daemon=True)
        self.thread.start()

    def _mine(self) -> set[int]:
        mine = {self.me.pid}
        try:
            mine |= {p.pid for p in self.me.children(recursive=True)} | {p.pid for p in self.me.parents()}
        except self.psutil.Error:
            pass
        return mine

    def _sample(self) -> None:
        try:
            sample = (time.monotonic(), _machine_busy_s(self.psutil), tree_cpu_s(self.psutil, self.me))
        except self.psutil.Error:
            return
        with self._lock:
            self.samples.append(sample)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            self._sample()

    def stop(self) -> None:
        self._stop.set()

    def figures(self) -> dict[str, Any]:
        self._sample()
        with self._lock:
            samples = list(self.samples)
        (w0, m0, o0), (w1, m1, o1) = samples[0], samples[-1]
        share = lambda dw, dm, do: 100.0 * max(dm - do, 0.0) / max(dw * self.cores, 1e-9)  # noqa: E731
        peak, j = 0.0, 0
        for i, (w, m, o) in enumerate(samples):
            while j < i and w - samples[j + 1][0] >= PEAK_WINDOW_S:
                j += 1
            if w - samples[j][0] >= PEAK_WINDOW_S:
                peak = max(peak, share(w - samples[j][0], m - samples[j][1], o - samples[j][2]))
        percent = share(w1 - w0, m1 - m0, o1 - o0)
        others_now = _others(self.psutil, self._mine())
        used = {pid: (cmd, s - self.others_start.get(pid, (cmd, 0.0))[1]) for pid, (cmd, s) in others_now.items()}
        busiest = sorted(used.values(), key=lambda item: -item[1])[:3]
        return {
            "other_cpu_percent": round(percent, 1),
            "other_cpu_percent_peak_10s": round(max(peak, percent), 1),
            "busy": percent > BUSY_PERCENT,
            "busy_threshold_percent": BUSY_PERCENT,
            "watched_s": round(w1 - w0, 1),
            "load_average_start_end": [round(self.load_start, 2), round(os.getloadavg()[0], 2)],
            "other_processes": [f"{cmd} ({s:.0f} CPU s)" for cmd, s in busiest if s >= 1.0],
        }


_WATCH: list[Watch] = []


def watch() -> None:
    """Start looking at the machine for this run (a new window: a run before it in this process is forgotten)."""
    while _WATCH:
        _WATCH.pop().stop()
    try:
        _WATCH.append(Watch())
    except ImportError:  # psutil missing: the record says the machine was not watched
        pass


def watching() -> bool:
    """Whether this process is watching a run (a benchmark's; run_all and its table watch none)."""
    return bool(_WATCH)


def record(smoke: bool = False) -> dict[str, Any]:
    """The machine and settings a figure came from, and what else used the CPU since `watch()`."""
    import torch

    info: dict[str, Any] = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__, "device": "cpu", "python": platform.python_version()}
    if not _WATCH:
        info.update(busy=None, note="the machine was not watched (psutil missing, or no watch started)")
        return info
    info.update(_WATCH[-1].figures())
    words = disturbance(info)
    info["note"] = ("smoke run: figures mean nothing; " if smoke else "") + (
        words or f"quiet: other processes used {info['other_cpu_percent']:.0f} % of the CPU")
    return info


def disturbance(machine: dict[str, Any] | str | None) -> str | None:
    """The words beside a figure measured on a busy machine ('disturbed: ...'), None for a quiet run. Results
    from before the watch (their `note` says 'timings disturbed' and names each busy process's share of one core,
    looked at as the run started and as it ended, the looks apart by ' / ') are read as such: the busier look's sum."""
    if not isinstance(machine, dict):
        return None
    if machine.get("busy"):
        return f"disturbed: other processes used {machine['other_cpu_percent']:.0f} % of the CPU"
    note = str(machine.get("note", ""))
    if "busy" not in machine and "timings disturbed" in note:
        looks = [sum(int(v) for v in re.findall(r"\((\d+)% CPU\)", look)) for look in note.split(" / ")]
        return f"disturbed: other processes used up to {max(looks, default=0)} % of one core"
    return None


def machine_line(info: dict[str, Any]) -> str:
    flags = info.get("cpu_flags")
    cpu = f"{info['cpu']} ({', '.join(flags) if flags else 'no AVX2 / AVX-512 / AMX'})" if flags is not None else info["cpu"]
    return f"{cpu}, {info['cores']} cores, torch {info['torch']} on {info['device']} with {info['torch_threads']} threads"
