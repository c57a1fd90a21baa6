"""`napari-medgen serve`: requests in, the command line's jsonl events out, the model kept loaded; and the
contract of docs/protocol.md (every event the worker and the command line write has the documented fields)."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model  # noqa: E402

from napari_medgen._paths import sample_dir  # noqa: E402
from napari_medgen.cli import COMMANDS, PROTOCOL_VERSION, UsageError, build_parser, main, run_command  # noqa: E402
from napari_medgen.engine.io import read_volume, write_volume  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402
from napari_medgen.serve import Worker, request_argv  # noqa: E402

PROTOCOL_DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
TIMEOUT = 300  # seconds for one event; generous for a busy 2-core machine


# -- the documented contract --------------------------------------------------------------------
def _table_rows(lines: list[str]) -> list[list[str]]:
    rows = []
    for line in lines:
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def protocol_events() -> dict[str, dict[str, tuple[str, str]]]:
    """docs/protocol.md's event tables: event type -> field -> (type, present)."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    events_part = text.split("\n## Events", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, dict[str, tuple[str, str]]] = {}
    for section in re.split(r"\n### ", events_part)[1:]:
        name = re.match(r"`([a-z_]+)`", section).group(1)
        rows = _table_rows(section.splitlines())
        tables[name] = {row[0]: (row[1], row[2]) for row in rows}
    return tables


def protocol_arguments() -> dict[str, set[str]]:
    """docs/protocol.md's request argument tables: command -> argument names."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    found = {}
    for command in ("generate", "inpaint"):
        part = text.split(f"\n{command} arguments:\n", 1)[1]
        lines = []
        for line in part.splitlines()[1:]:
            if not line.startswith("|"):
                break
            lines.append(line)
        found[command] = {row[0] for row in _table_rows(lines)}
    return found


_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "string[]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "string or number": lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
}


def check_events(events: list[dict[str, Any]], serve: bool) -> None:
    """Fail if an event drifts from docs/protocol.md: unknown type or field, wrong type, missing field."""
    documented = protocol_events()
    for event in events:
        kind = event.get("event")
        assert kind in documented, f"event type {kind!r} is not documented in docs/protocol.md: {event}"
        fields = documented[kind]
        assert event["protocol"] == PROTOCOL_VERSION
        for name, value in event.items():
            assert name in fields, f"field {name!r} of {kind!r} is not documented in docs/protocol.md: {event}"
            assert _TYPES[fields[name][0]](value), f"{kind}.{name} should be {fields[name][0]}: {event}"
        for name, (_, present) in fields.items():
            if present == "always" or (present == "serve" and serve):
                assert name in event, f"{kind} lacks its documented field {name!r}: {event}"
            if present == "serve" and not serve:
                assert name not in event, f"a one-shot {kind} has the serve-only field {name!r}: {event}"


def test_protocol_doc_lists_every_request_argument_of_the_parser():
    documented = protocol_arguments()
    for command in ("generate", "inpaint"):
        parser = build_parser(command)._subparsers._group_actions[0].choices[command]  # noqa: SLF001
        options = {a.dest for a in parser._actions if a.option_strings} - {"help", "progress"}  # noqa: SLF001
        assert documented[command] == options, f"docs/protocol.md's {command} arguments differ from the parser's"


def test_protocol_doc_documents_the_worker_commands():
    ready = [json.loads(line) for line in io.StringIO(_run_worker([{"command": "shutdown"}])) if line.strip()]
    assert [e["event"] for e in ready] == ["ready"]
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    for command in ready[0]["commands"]:
        assert re.search(rf"^#### .*`{re.escape(command)}`", text, re.M), f"docs/protocol.md lacks the {command} message"


# -- inputs -------------------------------------------------------------------------------------
def _crop(volume: Volume, z0: int, z1: int) -> Volume:
    origin = volume.index_to_physical(np.array([0.0, 0.0, z0]))
    return Volume(volume.array[z0:z1].copy(), volume.spacing, tuple(origin), volume.direction, dict(volume.metadata))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Two axial slices of the sample brain with its tissue labels and a region, and a tiny model."""
    folder = tmp_path_factory.mktemp("serve")
    t1 = _crop(read_volume(sample_dir() / "mni152_t1_2mm.nii.gz"), 45, 47)
    labels = _crop(read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz"), 45, 47)
    region = labels.with_array(np.zeros(labels.shape, np.uint8), metadata={})
    region.array[:, 50:60, 40:52] = 1
    paths = {"t1": folder / "t1.nii.gz", "labels": folder / "labels.nii.gz", "region": folder / "region.nrrd"}
    write_volume(t1, paths["t1"])
    write_volume(labels, paths["labels"])
    write_volume(region, paths["region"])
    paths["model"] = make_tiny_model(folder / "models" / "tiny")
    return paths


def _generate_args(files: dict[str, Path], out: Path, **extra: Any) -> dict[str, Any]:
    return {"labels": str(files["labels"]), "out": str(out), "model": str(files["model"]), "steps": 3, "seed": 7, **extra}


def _inpaint_args(files: dict[str, Path], out: Path, **extra: Any) -> dict[str, Any]:
    return {"image": str(files["t1"]), "region": str(files["region"]), "labels": str(files["labels"]), "out": str(out),
            "model": str(files["model"]), "steps": 3, "seed": 3, **extra}


def _argv(command: str, args: dict[str, Any]) -> list[str]:
    return request_argv(command, args)


# -- a worker in this process (fast: for the protocol's corners) ----------------------------------
def _run_worker(messages: list[Any]) -> str:
    """Run a Worker on these stdin lines (dicts as JSON, strings as they are) until shutdown; its stdout."""
    lines = "".join((m if isinstance(m, str) else json.dumps(m)) + "\n" for m in messages)
    out = io.StringIO()
    assert Worker(io.StringIO(lines), out, run_command).run() == 0
    return out.getvalue()


def _parse(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_bad_messages_give_error_events_and_the_worker_goes_on(files, tmp_path):
    out = tmp_path / "ok.nii.gz"
    events = _parse(_run_worker([
        "this is not JSON",
        "[1, 2]",
        {"id": "u", "command": "segment", "args": {}},
        {"command": "generate", "args": _generate_args(files, tmp_path / "x.nii.gz")},  # no id
        {"id": "f", "command": "generate", "args": _generate_args(files, tmp_path / "f.nii.gz"), "labels": "x"},
        {"id": "t", "command": "generate", "args": _generate_args(files, tmp_path / "t.nii.gz", steps={"n": 1})},
        {"id": "a", "command": "generate", "args": {"labelz": "x", "out": str(tmp_path / "a.nii.gz")}},
        {"id": "p", "command": "generate", "args": _generate_args(files, tmp_path / "p.nii.gz", progress="bar")},
        {"id": "m", "command": "generate", "args": _generate_args(files, tmp_path / "m.nii.gz", labels=str(tmp_path / "no.nii.gz"))},
        {"command": "cancel", "id": "never-sent"},
        {"id": 5, "command": "generate", "args": _generate_args(files, out)},
        {"command": "shutdown"},
        {"id": "after", "command": "generate", "args": _generate_args(files, tmp_path / "after.nii.gz")},
    ]))
    check_events(events, serve=True)
    without_id = [e["message"] for e in events if e["event"] == "error" and "id" not in e]
    assert len(without_id) == 3 and "not a JSON object" in without_id[0] and "needs an 'id'" in without_id[2]
    by_id = {e["id"]: e for e in events if e["event"] in ("result", "error", "cancelled") and "id" in e}
    assert sorted(by_id, key=str) == sorted(["u", "f", "t", "a", "p", "m", 5], key=str)
    assert all(by_id[k]["event"] == "error" for k in "uftapm")
    assert "unknown command 'segment'" in by_id["u"]["message"] and "unknown request fields: labels" in by_id["f"]["message"]
    assert "must be a string, a number" in by_id["t"]["message"] and "--labelz" in by_id["a"]["message"]  # --labels is optional now (models that take no label map)
    assert "progress" in by_id["p"]["message"] and "no such file" in by_id["m"]["message"]
    assert by_id[5]["event"] == "result" and out.exists()
    assert not any(e.get("id") == "after" for e in events)  # nothing is read after shutdown
    assert not list(tmp_path.glob("[ftapm].nii.gz")) and not (tmp_path / "x.nii.gz").exists()


def test_a_duplicate_id_is_refused_while_the_first_runs(files, tmp_path):
    events = _parse(_run_worker([
        {"id": "r", "command": "generate", "args": _generate_args(files, tmp_path / "one.nii.gz")},
        {"id": "r", "command": "generate", "args": _generate_args(files, tmp_path / "two.nii.gz")},
        {"command": "shutdown"},
    ]))
    check_events(events, serve=True)
    assert [e["event"] for e in events if e.get("id") == "r"][-1] == "result"
    assert any(e["event"] == "error" and "already queued or running" in e["message"] for e in events)
    assert (tmp_path / "one.nii.gz").exists() and not (tmp_path / "two.nii.gz").exists()


def test_the_model_is_loaded_once_for_many_requests(files, tmp_path, monkeypatch):
    from napari_medgen.engine.model import loading

    model = make_tiny_model(tmp_path / "fresh", seed=3)
    builds = []
    real = loading.build_networks
    monkeypatch.setattr(loading, "build_networks", lambda *a, **k: builds.append(1) or real(*a, **k))
    events = _parse(_run_worker(
        [{"id": k, "command": "generate", "args": _generate_args(files, tmp_path / f"{k}.nii.gz", model=str(model), steps=2)}
         for k in range(3)]
        + [{"command": "shutdown"}]
    ))
    assert [e["event"] for e in events if e["event"] in ("result", "error")] == ["result"] * 3
    assert len(builds) == 1


def test_request_arguments_become_the_command_line():
    argv = request_argv("generate", {"labels": "l.nii.gz", "out": "o.nii.gz", "batch_size": 2, "--seed": -1, "guidance": None})
    assert argv == ["generate", "--labels=l.nii.gz", "--out=o.nii.gz", "--batch-size=2", "--seed=-1", "--progress", "jsonl"]
    args = build_parser("generate", exit_on_error=False).parse_args(argv)
    assert args.batch_size == 2 and args.seed == -1 and args.guidance is None and args.progress == "jsonl"
    # Several files for one option (generate's tissue fractions) as a list of names.
    argv = request_argv("generate", {"labels": "l.nii.gz", "fractions": ["f1.nii.gz", "f2.nii.gz", "f3.nii.gz"], "out": "o.nii.gz"})
    args = build_parser("generate", exit_on_error=False).parse_args(argv)
    assert [p.name for p in args.fractions] == ["f1.nii.gz", "f2.nii.gz", "f3.nii.gz"] and args.out.name == "o.nii.gz"
    # An on/off option takes true or false (inpaint's continue_anatomy: --no-continue-anatomy)
    argv = request_argv("inpaint", {"image": "i.nii.gz", "region": "r.nii.gz", "out": "o.nii.gz", "continue_anatomy": False})
    assert "--no-continue-anatomy" in argv
    assert build_parser("inpaint", exit_on_error=False).parse_args(argv).continue_anatomy is False
    for bad in ({"steps": {"n": 1}}, {"progress": "bar"}, {"help": 1}, {"fractions": ["a", 2]},
                {"fractions": []}, {"fractions": ["--seed=1"]}):
        with pytest.raises(UsageError):
            request_argv("generate", bad)
    with pytest.raises(UsageError):  # an abbreviation is not an option name
        build_parser("generate", exit_on_error=False).parse_args(["generate", "--lab=x", "--out=o.nii.gz"])


# -- a worker process, as a front end runs it ----------------------------------------------------
class ServeProcess:
    """`napari-medgen serve` in a subprocess with its stdout read on a thread, as a front end would."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "napari_medgen.cli", "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=cwd, env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.process.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    @staticmethod
    def _pump(stream, lines) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.stderr.append(line)

    def send(self, message: Any) -> None:
        self.process.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        self.process.stdin.flush()

    def wait_for(self, predicate, timeout: float = TIMEOUT) -> dict[str, Any]:
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"the worker ended early; stderr: {''.join(self.stderr)[-2000:]}"
            event = json.loads(line)  # every stdout line is one JSON object
            self.events.append(event)
            if predicate(event):
                return event

    def finish(self, timeout: float = TIMEOUT) -> int:
        code = self.process.wait(timeout=timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.events.append(json.loads(line))
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _ends(request_id: Any):
    return lambda e: e.get("id") == request_id and e["event"] in ("result", "error", "cancelled")


def test_two_requests_in_a_row_match_the_command_line_then_shutdown_exits_0(files, tmp_path, capsys):
    worker = ServeProcess(tmp_path, {"NAPARI_MEDGEN_MODELS": str(files["model"].parent)})
    try:
        served_generate, served_inpaint = tmp_path / "served_gen.nii.gz", tmp_path / "served_inp.nii.gz"
        # tiny-2d by name from $NAPARI_MEDGEN_MODELS for one request, by folder for the other
        worker.send({"id": "gen", "command": "generate", "args": {**_generate_args(files, served_generate), "model": "tiny-2d"}})
        worker.send({"id": "bad", "command": "generate", "args": _generate_args(files, tmp_path / "b.nii.gz", sampler="nope")})
        worker.send({"id": "inp", "command": "inpaint", "args": _inpaint_args(files, served_inpaint)})
        worker.send({"command": "shutdown"})
        assert worker.wait_for(_ends("gen"))["event"] == "result"
        assert worker.wait_for(_ends("bad"))["event"] == "error"
        assert worker.wait_for(_ends("inp"))["event"] == "result"
        assert worker.finish() == 0
    finally:
        worker.kill()
    check_events(worker.events, serve=True)
    assert worker.events[0]["event"] == "ready"
    for request_id, paths in (("gen", [str(served_generate)]), ("inp", [str(served_inpaint)])):
        mine = [e for e in worker.events if e.get("id") == request_id]
        assert [e["event"] for e in mine] == ["started", "progress", "progress", "progress", "result"]
        assert [e["step"] for e in mine[1:4]] == [1, 2, 3] and mine[-1]["paths"] == paths

    # The same requests through the one-shot command line: the same files.
    cli_generate, cli_inpaint = tmp_path / "cli_gen.nii.gz", tmp_path / "cli_inp.nii.gz"
    assert main(_argv("generate", _generate_args(files, cli_generate))) == 0
    assert main(_argv("inpaint", _inpaint_args(files, cli_inpaint))) == 0
    capsys.readouterr()
    for served, direct in ((served_generate, cli_generate), (served_inpaint, cli_inpaint)):
        a, b = read_volume(served), read_volume(direct)
        assert a.same_grid(b) and a.array.dtype == b.array.dtype
        np.testing.assert_array_equal(a.array, b.array)
        assert a.metadata["provenance"]["seed"] == b.metadata["provenance"]["seed"]


def test_cancel_stops_a_running_request_and_the_worker_answers_the_next_then_sigterm_exits_130(files, tmp_path):
    worker = ServeProcess(tmp_path)
    try:
        long_out, next_out, third_out = tmp_path / "long.nii.gz", tmp_path / "next.nii.gz", tmp_path / "third.nii.gz"
        worker.send({"id": "long", "command": "generate", "args": _generate_args(files, long_out, steps=400)})
        worker.wait_for(lambda e: e.get("id") == "long" and e["event"] == "progress")
        worker.send({"command": "cancel", "id": "long"})
        end = worker.wait_for(_ends("long"))
        assert end["event"] == "cancelled" and "nothing was written" in end["message"]
        steps = [e["step"] for e in worker.events if e.get("id") == "long" and e["event"] == "progress"]
        assert steps[-1] < 400
        assert not long_out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

        worker.send({"id": "next", "command": "generate", "args": _generate_args(files, next_out, steps=2)})
        assert worker.wait_for(_ends("next"))["event"] == "result" and next_out.exists()

        # A front end closing: SIGTERM stops the running request before its next network call, drops the queued.
        worker.send({"id": "third", "command": "generate", "args": _generate_args(files, third_out, steps=400)})
        worker.send({"id": "queued", "command": "generate", "args": _generate_args(files, tmp_path / "q.nii.gz")})
        worker.wait_for(lambda e: e.get("id") == "third" and e["event"] == "progress")
        worker.process.send_signal(signal.SIGTERM)
        assert worker.finish() == 130
    finally:
        worker.kill()
    check_events(worker.events, serve=True)
    last = {e["id"]: e["event"] for e in worker.events if "id" in e}
    assert last["third"] == "cancelled" and last["queued"] == "cancelled"
    assert not third_out.exists() and not (tmp_path / "q.nii.gz").exists()
