"""Run one blocking SimpleITK registration in a worker thread and yield its iterations as progress events.

`ImageRegistrationMethod.Execute` (and a demons filter's) blocks and releases the GIL, so it runs in a
thread and an iteration observer puts a line on a queue that the generator drains. Closing the
generator cancels: the observer raises at the next iteration, which makes `Execute` throw, and the thread
ends within one optimizer iteration (tens of milliseconds at the working resolution). SimpleITK prints an
exception raised in an observer through `sys.excepthook`; that one expected exception is kept quiet.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from ..synthesis.options import ProgressEvent
from .errors import AnatomyError

# At most one event per this many seconds (a front end redraws on each; iterations take milliseconds).
EVENT_INTERVAL_S = 0.1


class _Cancelled(Exception):
    """Raised inside the iteration observer to stop a registration whose generator was closed."""


def _quiet_hook(previous: Any) -> Any:
    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not issubclass(kind, _Cancelled):
            previous(kind, value, tb)

    return hook


def run_observed(
    execute: Callable[[], Any],
    process: Any,
    describe: Callable[[], str],
    stage: str,
    step: int,
    stage_steps: int,
    total: int,
    iteration_budget: int,
) -> Generator[ProgressEvent, None, Any]:
    """Run `execute()` (a SimpleITK call on `process`, a registration method or filter) in a thread.

    Yields events with steps in [step, step + stage_steps): one per iteration of `process`, at most every
    `EVENT_INTERVAL_S`, its message from `describe()`; `iteration_budget` (the iteration limit over all
    levels) scales iterations to steps. Returns what `execute` returns; AnatomyError when ITK fails.
    """
    import SimpleITK as sitk

    events: queue.SimpleQueue[str] = queue.SimpleQueue()
    cancel = threading.Event()
    count = [0]

    def on_iteration() -> None:
        if cancel.is_set():
            raise _Cancelled
        count[0] += 1
        events.put(describe())

    process.AddCommand(sitk.sitkIterationEvent, on_iteration)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = execute()
        except Exception as error:  # noqa: BLE001 - re-raised below as the project's error (or a cancel)
            outcome["error"] = error

    thread = threading.Thread(target=work, name=f"medgen-{stage}", daemon=True)
    previous_hook = sys.excepthook
    thread.start()
    last = 0.0
    try:
        while thread.is_alive() or not events.empty():
            try:
                message = events.get(timeout=0.05)
            except queue.Empty:
                continue
            now = time.perf_counter()
            if now - last < EVENT_INTERVAL_S:
                continue
            last = now
            done = min(stage_steps - 1, count[0] * stage_steps // max(1, iteration_budget))
            yield ProgressEvent(step=step + done, total=total, message=f"{stage}: {message}")
    finally:
        if thread.is_alive():  # closed mid-run (GeneratorExit) or an error in the consumer
            cancel.set()
            sys.excepthook = _quiet_hook(previous_hook)
            try:
                thread.join()
            finally:
                sys.excepthook = previous_hook
        process.RemoveAllCommands()
    if "error" in outcome:
        raise AnatomyError(
            f"the {stage} step of registering the atlas to the scan failed "
            f"({str(outcome['error']).strip().splitlines()[-1][:200]}); "
            "check that the scan is a head or brain MR volume with a correct orientation header"
        )
    return outcome["value"]


def run_registration(
    method: Any,
    fixed: Any,
    moving: Any,
    stage: str,
    step: int,
    stage_steps: int,
    total: int,
    iteration_budget: int,
    levels: int = 1,
) -> Generator[ProgressEvent, None, Any]:
    """`run_observed` for an `ImageRegistrationMethod` on (fixed, moving); returns its transform."""

    def describe() -> str:
        return (
            f"level {method.GetCurrentLevel() + 1}/{levels}, iteration {method.GetOptimizerIteration()}, "
            f"metric {method.GetMetricValue():.4f}"
        )

    return (
        yield from run_observed(
            lambda: method.Execute(fixed, moving), method, describe, stage, step, stage_steps, total, iteration_budget
        )
    )
