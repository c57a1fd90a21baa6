"""What every command shares: progress reporting (a bar, JSON lines or nothing), exit statuses, the
exceptions a command line or a request ends with, and driving an engine generator to its end.

The command line (`napari_medgen.cli`) and the long-lived worker (`napari_medgen.serve`) both import
this module; neither imports the other's internals. docs/protocol.md documents every JSON-lines event.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Generator
from typing import Any

EXIT_ERROR = 1
EXIT_CANCELLED = 130
PROTOCOL_VERSION = 1  # of the JSON-lines events (docs/protocol.md); raised when a field changes meaning or goes
PROGRESS_MODES = ("auto", "bar", "jsonl", "none")


class UsageError(Exception):
    """A command line (or a serve request's arguments) that the parser refuses, when it may not exit."""


class RunCancelled(Exception):
    """A run stopped on request (a serve `cancel`): before its next network call, nothing written."""


def add_progress_argument(parser: Any) -> None:
    """--progress: a bar on a terminal, JSON lines for another program, or nothing."""
    parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto")


class Reporter:
    """Progress as a bar (terminal), JSON lines (machines) or nothing (pipes).

    In jsonl mode every event is one JSON object on one line (docs/protocol.md): `event`, the
    `protocol` version, the request's `id` when the reporter has one (serve), then the event's fields.
    `write` takes one line of text (default: print to stdout, flushed)."""

    def __init__(self, mode: str, request_id: Any = None, write: Callable[[str], None] | None = None) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode = mode
        self.request_id = request_id
        self._write = write
        self.bar: Any = None

    def event(self, kind: str, **fields: Any) -> None:
        """Write one JSON-lines event (in jsonl mode only)."""
        if self.mode != "jsonl":
            return
        record: dict[str, Any] = {"event": kind, "protocol": PROTOCOL_VERSION}
        if self.request_id is not None:
            record["id"] = self.request_id
        record.update(fields)
        line = json.dumps(record)
        if self._write is not None:
            self._write(line)
        else:
            print(line, flush=True)

    def check(self) -> None:
        """Called before every network call of a run: a serve request raises RunCancelled here when cancelled."""

    def progress(self, step: int, total: int, message: str = "", notice: str = "") -> None:
        """One progress event; `notice` (a retry after running out of memory, a fall back to the CPU)
        is also said once on stderr, whatever the mode."""
        if self.mode == "jsonl":
            self.event("progress", step=step, total=total, message=message, **({"notice": notice} if notice else {}))
        elif self.mode == "bar":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
            if self.bar.total != total:  # a run that retries with smaller batches makes more calls
                self.bar.total = total
            self.bar.set_description(message)
            self.bar.update(step - self.bar.n)
        if notice:
            if self.bar is not None:
                self.bar.write(f"napari-medgen: note: {notice}", file=sys.stderr)
            else:
                print(f"napari-medgen: note: {notice}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def result(self, paths: list[str]) -> None:
        self.close()
        if self.mode == "jsonl":
            self.event("result", paths=paths)
        else:
            for path in paths:
                print(path)

    def error(self, message: str, cancelled: bool = False) -> None:
        self.close()
        self.event("cancelled" if cancelled else "error", message=message)
        print(f"napari-medgen: {'cancelled' if cancelled else 'error'}: {message}", file=sys.stderr, flush=True)


def drive(run: Generator, reporter: Reporter) -> Any:
    """Run an engine generator to the end, reporting its progress; returns its result. The reporter is
    asked before each network call whether to go on (closing the generator stops the run there)."""
    try:
        while True:
            reporter.check()
            event = next(run)
            reporter.progress(event.step, event.total, event.message, getattr(event, "notice", ""))
    except StopIteration as stop:
        return stop.value
    finally:
        run.close()
