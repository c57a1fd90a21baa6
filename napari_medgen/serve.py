"""`napari-medgen serve`: a long-lived worker that runs generate / inpaint requests, the model kept loaded.

A front end in another process (a 3D Slicer module, a notebook) writes requests as JSON lines on the
worker's stdin and reads the command line's `--progress jsonl` events on its stdout, each tagged with the
request's id (docs/protocol.md documents every message, event and field):

    {"id": "r1", "command": "generate", "args": {"labels": "l.nii.gz", "out": "o.nii.gz", "steps": 20, "seed": 1}}
    {"command": "cancel", "id": "r1"}
    {"command": "shutdown"}

A request's `args` are the command line's options of that command (names without the leading dashes,
`-` or `_` alike) and go through the same parser and the same command functions as
`napari-medgen generate` / `inpaint`, so a request gives the same file as the command line with the
same arguments. Requests run one at a time, in the order received, on the main thread; a reader thread
takes stdin, so a `cancel` stops a running request before its next network call (nothing written) and
drops a queued one. An error in one request ends that request only. `shutdown` (or the end of stdin)
lets the requests already received finish, then the worker exits 0; SIGTERM or Ctrl-C cancels the running
and queued requests and exits 130.

Why: a cold process pays seconds of imports and model loading before its first network call
(benchmarks/startup.py); here only the first request does.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import IO, Any

from . import __version__
from .commands.reporting import EXIT_CANCELLED, EXIT_ERROR, PROTOCOL_VERSION, Reporter, RunCancelled, UsageError

# How the worker runs one request: a command line (with `--progress jsonl`) and the request's reporter in,
# the exit status out. The command line hands its own (napari_medgen.cli.run_command) to `serve`.
RunCommand = Callable[[list[str], Reporter], int]

RUN_COMMANDS = ("generate", "inpaint")
CONTROL_COMMANDS = ("cancel", "shutdown")
MAX_LINE_BYTES = 1 << 20  # a request is a few hundred bytes; a line longer than this is refused


@dataclass
class Request:
    """One generate / inpaint request: its id, command, arguments, and whether it was cancelled."""

    id: Any
    command: str
    args: dict[str, Any]
    cancelled: threading.Event = field(default_factory=threading.Event)


class RequestReporter(Reporter):
    """The command line's jsonl reporter for one request: events tagged with its id, and a cancel check."""

    def __init__(self, request: Request, write: Any) -> None:
        super().__init__("jsonl", request_id=request.id, write=write)
        self.request = request

    def check(self) -> None:
        if self.request.cancelled.is_set():
            raise RunCancelled("cancelled by request; nothing was written")

    def progress(self, step: int, total: int, message: str = "", notice: str = "") -> None:
        super().progress(step, total, message, notice)
        self.check()


def request_argv(command: str, args: dict[str, Any]) -> list[str]:
    """A request's arguments as the command line of its command (`--progress jsonl` is the worker's)."""
    if not isinstance(args, dict):
        raise UsageError("'args' must be a JSON object of the command's options, e.g. {\"labels\": ..., \"out\": ...}")
    argv = [command]
    for key, value in args.items():
        name = str(key).strip().lstrip("-").replace("_", "-")
        if not name or name in ("progress", "help", "h"):
            raise UsageError(f"argument {key!r} is not accepted in a request (progress is always jsonl)")
        if value is None:
            continue  # the option's default, as when it is left out
        if name == "attribute" and isinstance(value, dict) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
            argv += [f"--{name}", *(f"{k}={v}" for k, v in value.items())]  # generate's attributes: {"age": 0.5}
            continue
        if isinstance(value, list) and value and (
            all(isinstance(v, str) and not v.startswith("-") for v in value)
            or name in ("size", "spacing") and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value)
        ):
            argv += [f"--{name}", *(str(v) for v in value)]  # several files (fractions) or numbers (size, spacing)
            continue
        if isinstance(value, bool):  # an on/off option (inpaint's continue_anatomy): --name / --no-name
            argv.append(f"--{name}" if value else f"--no-{name}")
            continue
        if not isinstance(value, (str, int, float)):
            raise UsageError(f"argument {key!r} must be a string, a number, true or false, a list of file names or numbers, or (attribute) an "
                             f"object of numbers, not {json.dumps(value)[:60]}")
        argv.append(f"--{name}={value}")
    return [*argv, "--progress", "jsonl"]


class Worker:
    """Reads requests on a thread, runs them on the calling (main) thread, writes events to `out`."""

    def __init__(self, stdin: IO[str], out: IO[str], run_command: RunCommand, preload: str | None = None) -> None:
        self.stdin = stdin
        self.out = out
        self.run_command = run_command
        self.preload = preload
        self._write_lock = threading.Lock()
        self._state = threading.Condition()
        self._queue: collections.deque[Request] = collections.deque()
        self._running: Request | None = None
        self._closing = False  # shutdown received or stdin ended: finish what is queued, then exit
        self._terminating = False  # a signal: cancel everything, then exit

    # -- output --------------------------------------------------------------------------------
    def write(self, line: str) -> None:
        with self._write_lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
            except (BrokenPipeError, ValueError):  # the front end went away; the work goes on to its end
                pass

    def event(self, kind: str, request_id: Any = None, **fields: Any) -> None:
        Reporter("jsonl", request_id=request_id, write=self.write).event(kind, **fields)

    # -- input ---------------------------------------------------------------------------------
    def read_requests(self) -> None:
        """The reader thread: one JSON object per line until shutdown or the end of stdin."""
        try:
            while True:
                line = self.stdin.readline(MAX_LINE_BYTES + 1)
                if not line:
                    break
                if len(line) > MAX_LINE_BYTES:
                    self.event("error", message=f"a request line is longer than {MAX_LINE_BYTES} bytes; refused")
                    while line and not line.endswith("\n"):  # skip the rest of that line
                        line = self.stdin.readline(MAX_LINE_BYTES)
                    continue
                if line.strip() and self.handle_line(line) == "shutdown":
                    break
        finally:
            with self._state:
                self._closing = True
                self._state.notify_all()

    def handle_line(self, line: str) -> str | None:
        """Act on one line: queue a request, cancel one, or shut down; a bad line is an error event."""
        try:
            message = json.loads(line)
        except ValueError as error:
            self.event("error", message=f"not a JSON object: {error}; send one JSON object per line")
            return None
        if not isinstance(message, dict):
            self.event("error", message="a request must be a JSON object with a 'command'")
            return None
        request_id = message.get("id")
        if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int, float))):
            self.event("error", message="'id' must be a string or a number")
            return None
        command = message.get("command")
        if command == "shutdown":
            return "shutdown"
        if command == "cancel":
            self.cancel(request_id)
            return None
        if command not in RUN_COMMANDS:
            self.event("error", request_id, message=f"unknown command {command!r}; use one of: "
                       + ", ".join(RUN_COMMANDS + CONTROL_COMMANDS))
            return None
        if request_id is None:
            self.event("error", message=f"a {command} request needs an 'id' (a string or a number) to tag its events")
            return None
        unknown = set(message) - {"id", "command", "args"}
        if unknown:
            self.event("error", request_id, message=f"unknown request fields: {', '.join(sorted(unknown))}; "
                       "the command's options go in 'args'")
            return None
        with self._state:
            if any(r.id == request_id for r in self._queue) or (self._running and self._running.id == request_id):
                busy = True
            else:
                busy = False
                self._queue.append(Request(request_id, command, message.get("args") or {}))
                self._state.notify_all()
        if busy:
            self.event("error", request_id, message=f"a request with id {request_id!r} is already queued or running; "
                       "this one was not run (use a new id)")
        return None

    def cancel(self, request_id: Any) -> None:
        """Cancel a queued request (dropped: a `cancelled` event) or the running one (it stops before its
        next network call); an unknown or finished id does nothing."""
        dropped = None
        with self._state:
            if self._running is not None and self._running.id == request_id:
                self._running.cancelled.set()
                return
            for request in self._queue:
                if request.id == request_id:
                    dropped = request
                    self._queue.remove(request)
                    break
        if dropped is not None:
            self.event("cancelled", request_id, message="cancelled before it started; nothing was written")

    # -- running -------------------------------------------------------------------------------
    def terminate(self, signum: int = 0, frame: Any = None) -> None:
        """SIGTERM / Ctrl-C: cancel the running request (it stops before its next network call) and the
        queued ones, then exit."""
        self._terminating = True
        request = self._running
        if request is not None:
            request.cancelled.set()

    def warm_up(self) -> None:
        """Import what every request needs (torch, MONAI's networks, the engine) and load the preloaded
        model, so that the first request pays only its own work."""
        from .engine.model.networks import monai_module
        from .engine.synthesis import api  # noqa: F401 - torch and the sampling loops

        monai_module("monai.networks.nets")
        monai_module("monai.networks.schedulers")
        if self.preload:
            from .engine.model.loading import load_model

            load_model(self.preload)

    def next_request(self) -> Request | None:
        with self._state:
            while not self._queue and not self._closing and not self._terminating:
                self._state.wait(0.2)  # woken by a request; the timeout notices a signal
            if self._terminating or not self._queue:
                return None
            self._running = self._queue.popleft()
            return self._running

    def run_request(self, request: Request) -> int:
        reporter = RequestReporter(request, self.write)
        try:
            argv = request_argv(request.command, request.args)
        except UsageError as error:
            reporter.error(f"bad arguments for {request.command}: {error}")
            return EXIT_ERROR
        return self.run_command(argv, reporter)

    def run(self) -> int:
        reader = threading.Thread(target=self.read_requests, name="napari-medgen-serve-stdin", daemon=True)
        reader.start()
        try:
            self.warm_up()
        except Exception as error:  # noqa: BLE001 - e.g. a preload model that is not there: said, then go on
            self.event("error", message=f"warm-up failed: {type(error).__name__}: {str(error)[:300]}")
        self.event("ready", version=__version__, pid=os.getpid(), commands=list(RUN_COMMANDS + CONTROL_COMMANDS))
        while True:
            request = self.next_request()
            if request is None:
                break
            try:
                self.run_request(request)
            finally:
                with self._state:
                    self._running = None
        if self._terminating:
            with self._state:
                dropped, self._queue = list(self._queue), collections.deque()
            for request in dropped:
                self.event("cancelled", request.id, message="the worker was stopped; nothing was written")
            return EXIT_CANCELLED
        return 0


def serve(run_command: RunCommand, preload: str | None = None, stdin: IO[str] | None = None,
          stdout: IO[str] | None = None) -> int:
    """Run the worker on this process's stdin / stdout until shutdown; returns the exit status.
    `run_command` runs one request's command line (the command line's own parse-and-run).

    Everything else that would print on stdout (a library's stray print) goes to stderr: stdout carries
    the protocol only."""
    out = stdout or sys.stdout
    worker = Worker(stdin or sys.stdin, out, run_command, preload)
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            handlers[signum] = signal.signal(signum, worker.terminate)
    saved_stdout = sys.stdout
    if stdout is None:
        sys.stdout = sys.stderr
    try:
        return worker.run()
    finally:
        sys.stdout = saved_stdout
        for signum, previous in handlers.items():
            signal.signal(signum, previous)


__all__ = ["PROTOCOL_VERSION", "Request", "Worker", "request_argv", "serve"]
