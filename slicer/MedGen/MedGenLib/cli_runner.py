"""Run `napari-medgen generate / inpaint --progress jsonl` as a subprocess and follow it, without Slicer.

The 3D Slicer module (MedGen.py) writes its scan and label map to files, then calls `start_run` here;
a Qt timer on Slicer's side calls `run.poll()` a few times a second and gets the protocol events seen
since the last call (docs/protocol.md of napari-medgen). Every run ends with exactly one terminal event,
`result`, `error` or `cancelled`, delivered only once the process has exited, so a front end that sees
it may delete the run's folder. A process that dies without a terminal event (a crash, a kill, an
incompatible protocol) still ends with one `error` event whose message holds its exit code and the tail
of its stderr.

The command line is built in `command_lines`, the process handled with `processes`, its events read with
`events`; the public names of those modules are importable from here too, as the module's one entry point.
Nothing here imports Slicer, Qt, numpy or napari-medgen: the module runs in Slicer's own Python
(3.9 or newer) and in this project's tests against the real command line.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any

from .command_lines import (
    RUN_COMMANDS,
    MedGenRunError,
    RunFolder,
    check_command,
    clean_environment,
    command_line,
    executable_problem,
    generate_arguments,
    inpaint_arguments,
    require_executable,
    run_arguments,
)
from .events import SUPPORTED_PROTOCOL, TERMINAL_EVENTS, Run, absolute_paths, parse_event, protocol_problem
from .processes import (
    DEFAULT_GRACE_S,
    STDERR_TAIL_LINES,
    kill_later,
    popen_group,
    reap,
    signal_group,
    start_readers,
    with_stderr_tail,
)

# After its last event (result / error / cancelled) a napari-medgen process has nothing left to write, but
# tearing down torch and MONAI takes it seconds on a busy machine (2.3 s measured on 2 loaded cores): it
# gets this long to exit by itself, then its process group is killed, so results arrive without that wait.
LINGER_S = 0.5
EXIT_USAGE = 2  # argparse's status for a command line it refuses (no event is written)


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
        self.process = popen_group(self.argv, env=clean_environment(env), cwd=self.cwd)
        self._stderr_thread, self._stdout_thread = start_readers(
            self.process, self.stderr_tail, self._read_stdout, "medgen")

    @property
    def pid(self) -> int:
        """The process id, which is also its process group's id (POSIX)."""
        return self.process.pid

    def cancel(self) -> None:
        """Ask the run to stop (non-blocking); it is killed if it has not stopped after `grace_s`."""
        if self.done or self.cancel_requested:
            return
        self.cancel_requested = True
        signal_group(self.process, hard=False)
        self._kill_timer = kill_later(self.process, self.grace_s)

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
                self._pass_on(event)
        except (OSError, ValueError):
            pass
        finally:
            self._settle(terminal)

    def _end_after(self, terminal: dict[str, Any]) -> None:
        """The process has said its last word: kill its teardown now if it was cancelled, else after LINGER_S."""
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if self.cancel_requested or terminal["event"] == "cancelled":
            signal_group(self.process, hard=True)
            return
        self._kill_timer = kill_later(self.process, LINGER_S)

    def _settle(self, terminal: dict[str, Any] | None) -> None:
        code = reap(self.process, self._stderr_thread)
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
                return {**terminal, "paths": absolute_paths(terminal.get("paths"), self.cwd), "exit_code": code}
            if kind in ("error", "cancelled"):
                return {**terminal, "exit_code": code}
        if self.cancel_requested:
            return {"event": "cancelled", **base, "message": "cancelled; nothing was written"}
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if code == 0:
            message = "napari-medgen ended without reporting a result (exit code 0)"
        elif code == EXIT_USAGE:
            message = ("napari-medgen refused the command line (exit code 2); it may be older than this module: "
                       "update napari-medgen")
        else:
            message = f"napari-medgen stopped unexpectedly ({how})"
        return {"event": "error", **base, "message": with_stderr_tail(message, self.stderr_tail)}


def start_run(executable: str, command: str, args: dict[str, Any], env: dict[str, str] | None = None,
              cwd: str | None = None, grace_s: float = DEFAULT_GRACE_S) -> CliRun:
    """Start `napari-medgen COMMAND` with the options from `generate_arguments` / `inpaint_arguments`.

    `env` is the environment to clean (default: this process's); raises MedGenRunError when the
    executable is unusable or cannot be started."""
    require_executable(executable)
    check_command(command)
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
