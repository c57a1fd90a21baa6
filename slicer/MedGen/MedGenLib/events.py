"""napari-medgen's jsonl events (docs/protocol.md) and `Run`, what a front end sees of one run.

Every line a run writes to stdout is one JSON event; `parse_event` takes the lines that are events and
`protocol_problem` refuses a protocol version this module was not written for. `Run` collects the events
for `poll()` and settles the outcome from the one terminal event (`result`, `error` or `cancelled`),
whoever runs it: a process of its own (`cli_runner.CliRun`) or a `serve` worker (`serve_client.ServeRun`).
Imports nothing of Slicer, Qt or numpy.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from typing import Any

SUPPORTED_PROTOCOL = 1  # the napari-medgen jsonl protocol version this module understands
TERMINAL_EVENTS = ("result", "error", "cancelled")


def parse_event(line: str) -> dict[str, Any] | None:
    """One protocol event from one stdout line, or None for a line that is not one (a stray print)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return event


def protocol_problem(event: dict[str, Any]) -> str | None:
    """Why this client cannot follow an event's protocol version (docs/protocol.md: a front end refuses
    to go on with a version it was not written for); None when it can. Events without one are accepted."""
    version = event.get("protocol")
    if version is None or version == SUPPORTED_PROTOCOL:
        return None
    if isinstance(version, int) and not isinstance(version, bool) and version > SUPPORTED_PROTOCOL:
        advice = "update the MedGen module (or use an older napari-medgen)"
    else:
        advice = "update napari-medgen in its environment"
    return (f"napari-medgen speaks protocol version {version}, this Slicer module understands version "
            f"{SUPPORTED_PROTOCOL}; {advice}")


def absolute_paths(paths: Any, cwd: str) -> list[str]:
    """A result event's paths made absolute against the folder the process ran in."""
    return [os.path.normpath(os.path.join(cwd, str(p))) for p in (paths or [])]


class Run:
    """What a front end sees of one generate / inpaint run, whoever runs it (a process of its own:
    `CliRun`; a request to a long-lived worker: `serve_client.ServeRun`).

    `poll()` returns the events seen since the last call; the last one is terminal. `state` is
    'running' until then, afterwards 'succeeded' (`paths`), 'failed' (`error`, one message) or
    'cancelled'. `step` / `total` / `message` follow the progress events."""

    def __init__(self, command: str, args: dict[str, Any]) -> None:
        self.command = command
        self.args = dict(args)
        self.state = "running"
        self.paths: list[str] = []
        self.error: str | None = None
        self.exit_code: int | None = None
        self.step = 0
        self.total = 0
        self.message = ""
        self.notices: list[str] = []
        self.other_output: list[str] = []  # stdout lines that were not protocol events
        self.cancel_requested = False
        self.started_at = time.monotonic()
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._finished = threading.Event()
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        """The run has ended (its terminal event is queued or taken) and, for a process, it has exited."""
        return self._finished.is_set()

    def poll(self) -> list[dict[str, Any]]:
        """The events seen since the last call, oldest first; never blocks."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has ended (scripts and tests); True when it has."""
        return self._finished.wait(timeout)

    def cancel(self) -> None:
        """Ask the run to stop; each runner says how."""
        raise NotImplementedError

    # -- for the runners --
    def _pass_on(self, event: dict[str, Any]) -> None:
        """Queue a non-terminal event for `poll()`, following progress on the way."""
        if event.get("event") == "progress":
            step, total = event.get("step"), event.get("total")
            if isinstance(step, int) and isinstance(total, int):
                self.step, self.total = step, total
            self.message = str(event.get("message") or "")
            if event.get("notice"):
                self.notices.append(str(event["notice"]))
        self._events.put(event)

    def _finish(self, event: dict[str, Any]) -> None:
        """Settle the outcome from a terminal event and queue it, once."""
        with self._lock:
            if self._finished.is_set():
                return
            kind = event.get("event")
            if kind == "result":
                self.state = "succeeded"
                self.paths = [str(p) for p in event.get("paths") or []]
            elif kind == "cancelled":
                self.state = "cancelled"
            else:
                self.state = "failed"
                self.error = str(event.get("message") or "napari-medgen failed without saying why")
            self._events.put(event)
            self._finished.set()


__all__ = ["SUPPORTED_PROTOCOL", "TERMINAL_EVENTS", "Run", "absolute_paths", "parse_event", "protocol_problem"]
