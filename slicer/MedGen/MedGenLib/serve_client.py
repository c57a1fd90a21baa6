"""Drive a long-lived `napari-medgen serve` worker with the same interface as one process per run.

A cold `napari-medgen generate` pays seconds of imports and model loading before its first network
call; a worker pays them once, and keeps the last model loaded. Requests go to its stdin as JSON lines,
its events come back on stdout tagged with the request's id (napari-medgen's docs/protocol.md):

    worker = ServeWorker("/path/to/venv/bin/napari-medgen")
    run = worker.submit("generate", generate_arguments(labels, out, steps=20))
    ... run.poll() from a timer, as for a CliRun; run.cancel() stops it before its next network call
    worker.shutdown()

Requests run one at a time in the order sent. If the worker process dies, every request it had not
finished ends with one `error` event (its exit code and stderr tail), and `alive` turns False: start
a new worker. Imports nothing of Slicer or Qt.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import threading
from typing import Any

from . import processes
from .command_lines import MedGenRunError, check_command, clean_environment, require_executable
from .events import SUPPORTED_PROTOCOL, TERMINAL_EVENTS, Run, absolute_paths, parse_event, protocol_problem


class ServeRun(Run):
    """One generate / inpaint request to a `ServeWorker` (same interface as `CliRun`)."""

    def __init__(self, worker: ServeWorker, request_id: str, command: str, args: dict[str, Any]) -> None:
        super().__init__(command, args)
        self.worker = worker
        self.request_id = request_id

    def cancel(self) -> None:
        """Ask the worker to cancel this request: a running one stops before its next network call,
        a queued one is dropped; either way nothing is written and a `cancelled` event ends it."""
        if self.done or self.cancel_requested:
            return
        self.cancel_requested = True
        self.worker._send({"command": "cancel", "id": self.request_id}, quiet=True)

    def _deliver(self, event: dict[str, Any]) -> None:
        if event.get("event") in TERMINAL_EVENTS:
            if event.get("event") == "result":
                event = {**event, "paths": absolute_paths(event.get("paths"), self.worker.cwd)}
            self._finish(event)
            return
        self._pass_on(event)


class ServeWorker:
    """A `napari-medgen serve` process in its own process group, with a reader thread that hands each
    event to its request. Thread-safe `submit`; `shutdown` lets submitted requests finish."""

    def __init__(self, executable: str, env: dict[str, str] | None = None, preload: str | None = None,
                 cwd: str | None = None, grace_s: float = processes.DEFAULT_GRACE_S) -> None:
        require_executable(executable)
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.grace_s = grace_s
        self.argv = [str(executable), "serve"] + (["--preload", preload] if preload else [])
        self.version: str | None = None
        self.ready = threading.Event()  # set by the worker's `ready` event (imports done, preload loaded)
        self.messages: collections.deque[str] = collections.deque(maxlen=50)  # events with no request id
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=processes.STDERR_TAIL_LINES)
        self.exit_code: int | None = None
        self._runs: dict[str, ServeRun] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._protocol_error: str | None = None
        self.process: subprocess.Popen = processes.popen_group(
            self.argv, env=clean_environment(env), cwd=self.cwd, stdin=subprocess.PIPE)
        self._stderr_thread, self._stdout_thread = processes.start_readers(
            self.process, self.stderr_tail, self._read_stdout, "medgen-serve")

    @property
    def alive(self) -> bool:
        """The worker process is running and takes requests."""
        return not self._ended.is_set() and self.process.poll() is None

    @property
    def pid(self) -> int:
        """The worker's process id (and its process group's, on POSIX)."""
        return self.process.pid

    def submit(self, command: str, args: dict[str, Any]) -> ServeRun:
        """Send a generate / inpaint request (options from `generate_arguments` / `inpaint_arguments`)."""
        check_command(command)
        if not self.alive:
            raise MedGenRunError("the napari-medgen worker is not running" + self._ended_reason())
        request_id = f"medgen-{next(self._ids)}"
        run = ServeRun(self, request_id, command, args)
        with self._lock:
            self._runs[request_id] = run
        self._send({"id": request_id, "command": command, "args": args})
        return run

    def shutdown(self, timeout: float = 10.0) -> int | None:
        """Let the requests already sent finish, then end the worker (killed after `timeout` s)."""
        self._send({"command": "shutdown"}, quiet=True)
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except (OSError, ValueError):
            pass
        if not self._ended.wait(timeout):
            self.stop()
            self._ended.wait(self.grace_s + 5)
        return self.exit_code

    def stop(self) -> None:
        """End the worker now: SIGTERM (it cancels its running request and exits), SIGKILL after the grace
        period. Unfinished requests end with `cancelled`."""
        with self._lock:
            for run in self._runs.values():
                run.cancel_requested = True
        processes.signal_group(self.process, hard=False)
        processes.kill_later(self.process, self.grace_s)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker process has ended and every request has its terminal event."""
        return self._ended.wait(timeout)

    # -- internals ----------------------------------------------------------------------------
    def _send(self, message: dict[str, Any], quiet: bool = False) -> None:
        line = json.dumps(message) + "\n"
        try:
            with self._lock:
                self.process.stdin.write(line)  # type: ignore[union-attr]
                self.process.stdin.flush()  # type: ignore[union-attr]
        except (OSError, ValueError) as error:
            if not quiet:
                raise MedGenRunError(f"cannot reach the napari-medgen worker ({error}){self._ended_reason()}") from None

    def _ended_reason(self) -> str:
        code = self.process.poll()
        if code is None:
            return ""
        tail = processes.stderr_tail_text(self.stderr_tail)
        return f" (it ended with exit code {code}{': ' + tail if tail else ''})"

    def _read_stdout(self) -> None:
        try:
            for line in self.process.stdout:  # type: ignore[union-attr]
                event = parse_event(line)
                if event is None:
                    continue
                problem = protocol_problem(event)
                if problem:
                    self._protocol_error = problem
                    processes.signal_group(self.process, hard=True)
                    continue
                request_id = event.get("id")
                if request_id is None:
                    self._worker_event(event)
                    continue
                with self._lock:
                    run = self._runs.get(str(request_id))
                    if run is not None and event.get("event") in TERMINAL_EVENTS:
                        del self._runs[str(request_id)]
                if run is not None:
                    run._deliver(event)
        except (OSError, ValueError):
            pass
        finally:
            self._settle()

    def _worker_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "ready":
            self.version = str(event.get("version") or "")
            self.ready.set()
        elif event.get("message"):
            self.messages.append(str(event["message"]))

    def _settle(self) -> None:
        code = processes.reap(self.process, self._stderr_thread)
        self.exit_code = code
        with self._lock:
            unfinished, self._runs = list(self._runs.values()), {}
        for run in unfinished:
            run.exit_code = code
            if run.cancel_requested and not self._protocol_error:
                run._finish({"event": "cancelled", "protocol": SUPPORTED_PROTOCOL, "exit_code": code,
                             "message": "the worker was stopped; nothing was written"})
            else:
                message = self._protocol_error or processes.with_stderr_tail(
                    f"the napari-medgen worker stopped unexpectedly (exit code {code})", self.stderr_tail)
                run._finish({"event": "error", "protocol": SUPPORTED_PROTOCOL, "exit_code": code, "message": message})
        self._ended.set()


__all__ = ["ServeRun", "ServeWorker"]
