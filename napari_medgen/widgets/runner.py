"""Running an engine generator off the GUI thread: progress bar, previews, cancel, errors.

A thin bridge: the engine's generators already yield progress events and stop when closed; this
wraps one in napari's `thread_worker`, shows a progress bar in napari's activity dock, hands
previews and the result to callbacks on the GUI thread, and turns errors into notifications.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker
from napari.utils import progress

from ..engine.errors import MedgenError
from . import messages


class _RunFailed(Exception):
    """Carries an exception out of the worker thread. superqt's GeneratorWorker takes a RuntimeError
    raised by the generator (torch's errors are RuntimeErrors) for a deleted Qt object: it only warns,
    and never emits `finished`, which left the widget busy for good and the preview layer in place."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class EngineRun:
    """One run of an engine generator in a worker thread.

    `on_result(value)` gets the generator's return value; `on_preview(volume)` the previews;
    `on_end(outcome)` is called last, on the GUI thread, with 'done', 'cancelled' or 'failed'.
    """

    def __init__(
        self,
        run: Generator,
        description: str,
        on_result: Callable[[Any], None],
        on_end: Callable[[str], None],
        on_preview: Callable[[Any], None] | None = None,
    ) -> None:
        self._run = run
        self._on_result = on_result
        self._on_preview = on_preview
        self._on_end = on_end
        self._progress: progress | None = None
        self._description = description
        self._outcome = "done"
        self._ended = False
        self.worker = GeneratorWorker(self._work)
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.aborted.connect(self._aborted)
        self.worker.finished.connect(self._finished)

    def _work(self) -> Generator:
        try:
            return (yield from self._run)
        except RuntimeError as error:
            raise _RunFailed(error) from error

    def start(self) -> None:
        # The progress bar is made here, not at the first step: making a Qt widget mid-run is a stall.
        self._progress = progress(total=0, desc=self._description)
        self.worker.start()

    def cancel(self) -> None:
        """Stop after the network call under way; nothing is changed."""
        self.worker.quit()

    @property
    def running(self) -> bool:
        return not self._ended

    # -- GUI-thread handlers ----------------------------------------------------------------------
    def _yielded(self, event: Any) -> None:
        if self._progress is None:
            self._progress = progress(total=event.total, desc=self._description)
        if self._progress.total != event.total:
            self._progress.total = event.total
        self._progress.n = event.step
        self._progress.refresh()
        notice = getattr(event, "notice", "")
        if notice:  # the run ran out of memory and goes on with smaller batches or on the CPU
            self._progress.set_description(f"{self._description} ({notice})")
            messages.notify("warning", f"{self._description}: {notice}")
        if event.preview is not None and self._on_preview is not None:
            self._on_preview(event.preview)

    def _returned(self, value: Any) -> None:
        if isinstance(value, Exception):  # napari's worker returns RuntimeErrors instead of raising
            self._errored(value)
            return
        try:
            self._on_result(value)
        except Exception as error:  # noqa: BLE001 - a failure to show the result must not reach Qt's handler
            self._errored(error)

    def _errored(self, error: BaseException) -> None:
        self._outcome = "failed"
        if isinstance(error, _RunFailed):
            error = error.error
        if isinstance(error, MedgenError):
            messages.notify("error", f"{self._description}: {error}")
        else:
            messages.notify(
                "error",
                f"{self._description} failed unexpectedly ({type(error).__name__}: {error}); nothing was changed",
            )

    def _aborted(self) -> None:
        self._outcome = "cancelled"
        messages.notify("info", f"{self._description} cancelled; nothing was changed")

    def _finished(self) -> None:
        self._run.close()  # frees the engine's tensors if it was stopped midway
        if self._progress is not None:
            self._progress.close()
        self._ended = True
        self._on_end(self._outcome)
