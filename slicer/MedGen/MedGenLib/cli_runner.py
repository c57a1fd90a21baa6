"""Run `napari-medgen generate / inpaint --progress jsonl` as a subprocess and follow it, without Slicer.

The 3D Slicer module (MedGen.py) writes its scan and label map to files, then calls `start_run` here;
a Qt timer on Slicer's side calls `run.poll()` a few times a second and gets the protocol events seen
since the last call (docs/protocol.md of napari-medgen). Every run ends with exactly one terminal event,
`result`, `error` or `cancelled`, delivered only once the process has exited, so a front end that sees
it may delete the run's folder. A process that dies without a terminal event (a crash, a kill, an
incompatible protocol) still ends with one `error` event whose message holds its exit code and the tail
of its stderr.

Nothing here imports Slicer, Qt, numpy or napari-medgen: the module runs in Slicer's own Python
(3.9 or newer) and in this project's tests against the real command line.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

SUPPORTED_PROTOCOL = 1  # the napari-medgen jsonl protocol version this module understands
RUN_COMMANDS = ("generate", "inpaint")
TERMINAL_EVENTS = ("result", "error", "cancelled")
REQUIRED_ARGS = {"generate": ("labels", "out"), "inpaint": ("image", "region", "out")}
PATH_ARGS = ("labels", "image", "region", "out", "model")
STDERR_TAIL_LINES = 20
DEFAULT_GRACE_S = 3.0  # after SIGTERM, how long a run may take to stop cleanly before it is killed
# After its last event (result / error / cancelled) a napari-medgen process has nothing left to write, but
# tearing down torch and MONAI takes it seconds on a busy machine (2.3 s measured on 2 loaded cores): it
# gets this long to exit by itself, then its process group is killed, so results arrive without that wait.
LINGER_S = 0.5
IS_WINDOWS = os.name == "nt"
EXIT_USAGE = 2  # argparse's status for a command line it refuses (no event is written)


class MedGenRunError(Exception):
    """A run that cannot be started or a command line that cannot be built, in words for the user."""


# -- command lines ------------------------------------------------------------------------------


def _option_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, os.PathLike)):
        raise MedGenRunError(f"option value {value!r} must be a string, a number or a path")
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def run_arguments(command: str, **options: Any) -> dict[str, Any]:
    """The options of a generate / inpaint run as an ordered dict (None values dropped, paths made
    absolute): what both the command line and a `serve` request are built from.

    Names are the command line's option names with `_` for `-` (`context_mm` -> `--context-mm`)."""
    if command not in RUN_COMMANDS:
        raise MedGenRunError(f"unknown command {command!r}; use one of: {', '.join(RUN_COMMANDS)}")
    args: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in ("progress", "help"):
            raise MedGenRunError(f"option {name!r} is set by the runner, not by the caller")
        if name in PATH_ARGS and not (name == "model" and not _looks_like_path(str(value))):
            value = os.path.abspath(os.fspath(value))
        args[name] = value
    missing = [name for name in REQUIRED_ARGS[command] if name not in args]
    if missing:
        raise MedGenRunError(f"{command} needs {', '.join(missing)}")
    return args


def _looks_like_path(model: str) -> bool:
    """A model given as a folder (rather than a registered model's name)."""
    return os.sep in model or (os.altsep is not None and os.altsep in model) or os.path.isdir(model)


def generate_arguments(labels: str, out: str, model: str | None = None, steps: int | None = None,
                       seed: int | None = None, guidance: float | None = None,
                       variants: int | None = None, device: str | None = None,
                       **more: Any) -> dict[str, Any]:
    """Options of `napari-medgen generate`: the label map file, the output file, and sampling options
    (None: the command line's default; guidance None: the model card's)."""
    return run_arguments("generate", labels=labels, out=out, model=model, steps=steps, seed=seed,
                         guidance=guidance, variants=variants, device=device, **more)


def inpaint_arguments(image: str, region: str, out: str, labels: str | None = None,
                      model: str | None = None, steps: int | None = None, seed: int | None = None,
                      guidance: float | None = None, variants: int | None = None,
                      device: str | None = None, **more: Any) -> dict[str, Any]:
    """Options of `napari-medgen inpaint`: the scan, the region mask (non-zero voxels are regenerated),
    the output file, optionally the anatomy label map to follow inside the region."""
    return run_arguments("inpaint", image=image, region=region, labels=labels, out=out, model=model,
                         steps=steps, seed=seed, guidance=guidance, variants=variants, device=device, **more)


def command_line(executable: str, command: str, args: dict[str, Any]) -> list[str]:
    """`napari-medgen COMMAND --name value ... --progress jsonl` for options from `run_arguments`."""
    argv = [os.fspath(executable), command]
    for name, value in args.items():
        argv += ["--" + name.replace("_", "-"), _option_value(value)]
    return argv + ["--progress", "jsonl"]


def clean_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a napari-medgen process started from inside another program's Python.

    3D Slicer's launcher sets PYTHONHOME / PYTHONPATH to Slicer's own Python: an environment's
    `napari-medgen` must not see them (pass `slicer.util.startupEnvironment()` as `base` there).
    stdout is made UTF-8 and unbuffered so every event arrives as soon as it is printed."""
    env = dict(os.environ if base is None else base)
    for name in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def executable_problem(executable: str | None) -> str | None:
    """Why `executable` cannot be the napari-medgen command (None when it looks usable)."""
    if not executable or not str(executable).strip():
        return ("the napari-medgen executable is not set: give the path of `napari-medgen` in an environment "
                "where napari-medgen is installed (e.g. .../venv/bin/napari-medgen)")
    path = str(executable).strip()
    if not os.path.exists(path):
        return f"{path} does not exist; check the path of the napari-medgen executable"
    if os.path.isdir(path):
        return f"{path} is a folder; give the napari-medgen executable inside it (bin/napari-medgen)"
    if not IS_WINDOWS and not os.access(path, os.X_OK):
        return f"{path} is not executable (chmod +x, or pick the napari-medgen script of an environment)"
    return None


def stderr_tail_text(lines: Sequence[str], limit: int = 1500) -> str:
    text = "\n".join(line.rstrip() for line in lines if line.strip())
    return text[-limit:]


class RunFolder:
    """A temporary folder for one run's input and output files (the front end writes its nodes here and
    removes the folder once the run has ended and the results are loaded)."""

    def __init__(self, parent: str | None = None, prefix: str = "medgen-") -> None:
        self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# -- processes ----------------------------------------------------------------------------------


def popen_group(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
    """Start `argv` in its own process group (a new session on POSIX), pipes for stdout and stderr, so
    that cancelling ends it and whatever it started, and never the program that started it."""
    kwargs: dict[str, Any] = {}
    if IS_WINDOWS:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True
    try:
        return subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
        )
    except OSError as error:
        raise MedGenRunError(f"cannot start {argv[0]}: {error.strerror or error}; check the napari-medgen "
                             "executable in the module's settings") from None


def signal_group(process: subprocess.Popen, hard: bool) -> None:
    """Ask the process group to stop (SIGTERM; Windows: CTRL_BREAK), or end it (SIGKILL; Windows: kill
    the process tree). Only while the leader has not been reaped, so its group id cannot be reused."""
    if process.poll() is not None:
        return
    try:
        if IS_WINDOWS:
            if hard:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], check=False, capture_output=True,
                               timeout=10)
                if process.poll() is None:
                    process.kill()
            else:
                process.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            os.killpg(process.pid, signal.SIGKILL if hard else signal.SIGTERM)
    except (ProcessLookupError, PermissionError, OSError, subprocess.SubprocessError):
        pass  # already gone


def read_stderr(stream: Any, tail: collections.deque[str]) -> None:
    """Drain a process's stderr (a full pipe would block it), keeping its last lines."""
    try:
        for line in stream:
            tail.append(line.rstrip("\n"))
    except (OSError, ValueError):
        pass


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


# -- a run --------------------------------------------------------------------------------------


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
        raise NotImplementedError

    # -- for the runners --
    def _note_progress(self, event: dict[str, Any]) -> None:
        if event.get("event") != "progress":
            return
        step, total = event.get("step"), event.get("total")
        if isinstance(step, int) and isinstance(total, int):
            self.step, self.total = step, total
        self.message = str(event.get("message") or "")
        if event.get("notice"):
            self.notices.append(str(event["notice"]))

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


def _make_absolute(paths: Any, cwd: str) -> list[str]:
    return [os.path.normpath(os.path.join(cwd, str(p))) for p in (paths or [])]


class CliRun(Run):
    """One `napari-medgen generate|inpaint ... --progress jsonl` process, followed by a reader thread.

    Start it with `start_run`. Cancel with `cancel()`: SIGTERM to its process group (the command line
    then stops before its next network call and writes nothing), SIGKILL after `grace_s` seconds."""

    def __init__(self, executable: str, command: str, args: dict[str, Any], env: dict[str, str] | None = None,
                 cwd: str | None = None, grace_s: float = DEFAULT_GRACE_S) -> None:
        super().__init__(command, args)
        self.argv = command_line(executable, command, args)
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.grace_s = grace_s
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._protocol_error: str | None = None
        self._kill_timer: threading.Timer | None = None
        self._after_terminal = False  # its last event came; a kill from here on is ours, not a crash
        self.process = popen_group(self.argv, env=clean_environment(env) if env is not None else clean_environment(),
                                   cwd=self.cwd)
        self._stderr_thread = threading.Thread(target=read_stderr, args=(self.process.stderr, self.stderr_tail),
                                               name="medgen-stderr", daemon=True)
        self._stdout_thread = threading.Thread(target=self._read_stdout, name="medgen-stdout", daemon=True)
        self._stderr_thread.start()
        self._stdout_thread.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def cancel(self) -> None:
        """Ask the run to stop (non-blocking); it is killed if it has not stopped after `grace_s`."""
        if self.done or self.cancel_requested:
            return
        self.cancel_requested = True
        signal_group(self.process, hard=False)
        self._kill_timer = threading.Timer(self.grace_s, signal_group, args=(self.process, True))
        self._kill_timer.daemon = True
        self._kill_timer.start()

    def kill(self) -> None:
        """End the run now (SIGKILL to its process group)."""
        self.cancel_requested = True
        signal_group(self.process, hard=True)

    def _read_stdout(self) -> None:
        terminal: dict[str, Any] | None = None
        try:
            for line in self.process.stdout:  # type: ignore[union-attr]
                event = parse_event(line)
                if event is None:
                    if line.strip():
                        self.other_output.append(line.rstrip("\n"))
                    continue
                problem = protocol_problem(event)
                if problem and self._protocol_error is None:
                    self._protocol_error = problem
                    self.kill()
                if self._protocol_error:
                    continue
                if event["event"] in TERMINAL_EVENTS:
                    terminal = event  # held until the process has exited
                    self._end_after(terminal)
                    continue
                self._note_progress(event)
                self._events.put(event)
        except (OSError, ValueError):
            pass
        finally:
            self._settle(terminal)

    def _end_after(self, terminal: dict[str, Any]) -> None:
        """The process has said its last word: kill its teardown now if it was cancelled, else after LINGER_S."""
        self._after_terminal = True
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        delay = 0.0 if self.cancel_requested or terminal["event"] == "cancelled" else LINGER_S
        if delay == 0.0:
            signal_group(self.process, hard=True)
            return
        self._kill_timer = threading.Timer(delay, signal_group, args=(self.process, True))
        self._kill_timer.daemon = True
        self._kill_timer.start()

    def _settle(self, terminal: dict[str, Any] | None) -> None:
        code = self.process.wait()
        self._stderr_thread.join(timeout=5)
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self.exit_code = code
        self._finish(self._outcome(terminal, code))

    def _outcome(self, terminal: dict[str, Any] | None, code: int) -> dict[str, Any]:
        base = {"protocol": SUPPORTED_PROTOCOL, "exit_code": code}
        if self._protocol_error:
            return {"event": "error", **base, "message": self._protocol_error}
        if terminal is not None:
            kind = terminal["event"]
            if kind == "result":  # its files were complete before it said so; the exit code is its teardown's
                return {**terminal, "paths": _make_absolute(terminal.get("paths"), self.cwd), "exit_code": code}
            if kind in ("error", "cancelled"):
                return {**terminal, "exit_code": code}
        if self.cancel_requested:
            return {"event": "cancelled", **base, "message": "cancelled; nothing was written"}
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        tail = stderr_tail_text(self.stderr_tail)
        if code == 0:
            message = "napari-medgen ended without reporting a result (exit code 0)"
        elif code == EXIT_USAGE:
            message = ("napari-medgen refused the command line (exit code 2); it may be older than this module: "
                       "update napari-medgen")
        else:
            message = f"napari-medgen stopped unexpectedly ({how})"
        return {"event": "error", **base, "message": message + (f":\n{tail}" if tail else "")}


def start_run(executable: str, command: str, args: dict[str, Any], env: dict[str, str] | None = None,
              cwd: str | None = None, grace_s: float = DEFAULT_GRACE_S) -> CliRun:
    """Start `napari-medgen COMMAND` with the options from `generate_arguments` / `inpaint_arguments`.

    `env` is the environment to clean (default: this process's); raises MedGenRunError when the
    executable is unusable or cannot be started."""
    problem = executable_problem(executable)
    if problem:
        raise MedGenRunError(problem)
    if command not in RUN_COMMANDS:
        raise MedGenRunError(f"unknown command {command!r}; use one of: {', '.join(RUN_COMMANDS)}")
    return CliRun(executable, command, args, env=env, cwd=cwd, grace_s=grace_s)


def run_to_end(run: Run, timeout: float | None = None) -> list[dict[str, Any]]:
    """Wait for a run and return all its events (scripts, tests); cancels it on timeout."""
    if not run.wait(timeout):
        run.cancel()
        run.wait(DEFAULT_GRACE_S + 5)
    return run.poll()


__all__ = [
    "RUN_COMMANDS",
    "SUPPORTED_PROTOCOL",
    "TERMINAL_EVENTS",
    "CliRun",
    "MedGenRunError",
    "Run",
    "RunFolder",
    "clean_environment",
    "command_line",
    "executable_problem",
    "generate_arguments",
    "inpaint_arguments",
    "parse_event",
    "run_arguments",
    "run_to_end",
    "start_run",
]

