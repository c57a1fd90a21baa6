"""The napari-medgen command lines a front end starts, and the checks made before starting one, without Slicer.

A generate / inpaint run is described once, as an ordered dict of options (`run_arguments`); the command
line (`command_line`) and a `serve` request are both built from it. `executable_problem` and
`clean_environment` say whether the configured executable can run and give it an environment free of the
host program's Python settings. Imports nothing of Slicer, Qt or numpy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

RUN_COMMANDS = ("generate", "inpaint")
DEVICES = ("auto", "cpu", "cuda", "mps")  # the values of napari-medgen's --device
REQUIRED_ARGS = {"generate": ("out",), "inpaint": ("image", "region", "out")}  # generate: labels unless label-free
PATH_ARGS = ("labels", "like", "image", "region", "out", "model")
IS_WINDOWS = os.name == "nt"


class MedGenRunError(Exception):
    """A run that cannot be started or a command line that cannot be built, in words for the user."""


def check_command(command: str) -> None:
    """Refuse a command other than generate / inpaint (the only ones a front end runs), in words."""
    if command not in RUN_COMMANDS:
        raise MedGenRunError(f"unknown command {command!r}; use one of: {', '.join(RUN_COMMANDS)}")


def _option_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, os.PathLike)):
        raise MedGenRunError(f"option value {value!r} must be a string, a number or a path")
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _attribute_values(value: Any) -> list[str]:
    """`--attribute`'s NAME=VALUE items from {name: number} (a serve request takes the dict itself)."""
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in value.items()):
        raise MedGenRunError(f"attributes {value!r} must be a mapping of names to numbers")
    return [f"{name}={number}" for name, number in value.items()]


def _looks_like_path(model: str) -> bool:
    """A model given as a folder (rather than a registered model's name)."""
    return os.sep in model or (os.altsep is not None and os.altsep in model) or os.path.isdir(model)


def run_arguments(command: str, **options: Any) -> dict[str, Any]:
    """The options of a generate / inpaint run as an ordered dict (None values dropped, paths made
    absolute): what both the command line and a `serve` request are built from.

    Names are the command line's option names with `_` for `-` (`context_mm` -> `--context-mm`)."""
    check_command(command)
    args: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in ("progress", "help"):
            raise MedGenRunError(f"option {name!r} is set by the runner, not by the caller")
        if name in PATH_ARGS and not (name == "model" and not _looks_like_path(str(value))):
            value = os.path.abspath(os.fspath(value))
        if name == "attribute":
            if not value:
                continue  # none asked for: the card's defaults
            _attribute_values(value)
            value = dict(value)
        args[name] = value
    missing = [name for name in REQUIRED_ARGS[command] if name not in args]
    if missing:
        raise MedGenRunError(f"{command} needs {', '.join(missing)}")
    return args


def generate_arguments(labels: str | None, out: str, model: str | None = None, steps: int | None = None,
                       seed: int | None = None, guidance: float | None = None,
                       variants: int | None = None, device: str | None = None,
                       like: str | None = None, attribute: dict[str, float] | None = None,
                       modality: str | None = None, **more: Any) -> dict[str, Any]:
    """Options of `napari-medgen generate`: the label map file (None for a model that takes none: then the grid
    of the image `like`, else the model's own), the output file, the model's context attributes ({name: value};
    the card's defaults for the rest) and modality by name, and sampling options (None: the command line's
    default; guidance None: the model card's)."""
    if labels is not None and like is not None:
        raise MedGenRunError("give a label map, or for a model that takes none the image whose grid to use, not both")
    return run_arguments("generate", labels=labels, like=like, out=out, model=model, steps=steps, seed=seed,
                         guidance=guidance, variants=variants, device=device, attribute=attribute,
                         modality=modality, **more)


def inpaint_arguments(image: str, region: str, out: str, labels: str | None = None,
                      model: str | None = None, steps: int | None = None, seed: int | None = None,
                      guidance: float | None = None, variants: int | None = None,
                      device: str | None = None, **more: Any) -> dict[str, Any]:
    """Options of `napari-medgen inpaint`: the scan, the region mask (non-zero voxels are regenerated),
    the output file, optionally the anatomy label map to follow inside the region."""
    return run_arguments("inpaint", image=image, region=region, labels=labels, out=out, model=model,
                         steps=steps, seed=seed, guidance=guidance, variants=variants, device=device, **more)


def command_line(executable: str, command: str, args: dict[str, Any]) -> list[str]:
    """`napari-medgen COMMAND --name value ... --progress jsonl` for options from `run_arguments` (attributes as
    `--attribute NAME=VALUE ...`)."""
    argv = [os.fspath(executable), command]
    for name, value in args.items():
        values = _attribute_values(value) if name == "attribute" else [_option_value(value)]
        argv += ["--" + name.replace("_", "-"), *values]
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


def require_executable(executable: str | None) -> None:
    """Raise MedGenRunError with `executable_problem`'s words before anything is started with it."""
    problem = executable_problem(executable)
    if problem:
        raise MedGenRunError(problem)


class RunFolder:
    """A temporary folder for one run's input and output files (the front end writes its nodes here and
    removes the folder once the run has ended and the results are loaded)."""

    def __init__(self, parent: str | None = None, prefix: str = "medgen-") -> None:
        self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)

    def file(self, name: str) -> str:
        """The path of `name` inside the folder."""
        return os.path.join(self.path, name)

    def remove(self) -> None:
        """Delete the folder and everything in it (missing files are no error)."""
        shutil.rmtree(self.path, ignore_errors=True)


__all__ = [
    "DEVICES",
    "RUN_COMMANDS",
    "MedGenRunError",
    "RunFolder",
    "check_command",
    "clean_environment",
    "command_line",
    "executable_problem",
    "generate_arguments",
    "inpaint_arguments",
    "require_executable",
    "run_arguments",
]
