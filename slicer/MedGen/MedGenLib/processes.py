"""The napari-medgen processes a front end starts: own process group, stopping it, reading its stderr.

A run (`cli_runner.CliRun`) and a `serve` worker (`serve_client.ServeWorker`) are both started here in a
process group of their own, so that cancelling ends the process and whatever it started, never the
program that started it; both drain stderr on a thread, keeping its tail for error messages. Imports
nothing of Slicer, Qt or numpy.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .command_lines import IS_WINDOWS, MedGenRunError

STDERR_TAIL_LINES = 20
DEFAULT_GRACE_S = 3.0  # after SIGTERM, how long a run may take to stop cleanly before it is killed


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


def kill_later(process: subprocess.Popen, delay_s: float) -> threading.Timer:
    """End the process group after `delay_s` seconds unless the returned timer is cancelled first
    (a grace period after SIGTERM, or the teardown a finished process is allowed)."""
    timer = threading.Timer(delay_s, signal_group, args=(process, True))
    timer.daemon = True
    timer.start()
    return timer


def read_stderr(stream: Any, tail: collections.deque[str]) -> None:
    """Drain a process's stderr (a full pipe would block it), keeping its last lines."""
    try:
        for line in stream:
            tail.append(line.rstrip("\n"))
    except (OSError, ValueError):
        pass


def start_readers(process: subprocess.Popen, stderr_tail: collections.deque[str],
                  read_stdout: Callable[[], None], name: str) -> tuple[threading.Thread, threading.Thread]:
    """Start the two daemon threads that follow a process: `{name}-stderr` keeps the tail of its stderr,
    `{name}-stdout` runs `read_stdout`. Returns (stderr thread, stdout thread)."""
    stderr_thread = threading.Thread(target=read_stderr, args=(process.stderr, stderr_tail),
                                     name=f"{name}-stderr", daemon=True)
    stdout_thread = threading.Thread(target=read_stdout, name=f"{name}-stdout", daemon=True)
    stderr_thread.start()
    stdout_thread.start()
    return stderr_thread, stdout_thread


def reap(process: subprocess.Popen, stderr_thread: threading.Thread) -> int:
    """Wait for the process to exit and its stderr to be read to the end; its exit code."""
    code = process.wait()
    stderr_thread.join(timeout=5)
    return code


def stderr_tail_text(lines: Sequence[str], limit: int = 1500) -> str:
    """The last non-blank stderr lines as one text of at most `limit` characters (for error messages)."""
    text = "\n".join(line.rstrip() for line in lines if line.strip())
    return text[-limit:]


def with_stderr_tail(message: str, lines: Sequence[str]) -> str:
    """`message`, followed by the tail of the process's stderr when it wrote any."""
    tail = stderr_tail_text(lines)
    return message + (f":\n{tail}" if tail else "")


__all__ = [
    "DEFAULT_GRACE_S",
    "STDERR_TAIL_LINES",
    "kill_later",
    "popen_group",
    "read_stderr",
    "reap",
    "signal_group",
    "start_readers",
    "stderr_tail_text",
    "with_stderr_tail",
]
