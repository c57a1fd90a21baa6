"""Faults during a command-line run: stopped (Ctrl-C, or ended by another program with SIGTERM) at any
step, an exception inside the network, running out of GPU memory. Nothing is written unless the run
completes, earlier outputs stay, no temporary files are left, and the next run works."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import FaultyNetwork, cuda_out_of_memory, hidden_leftovers, listing
from engine_fixtures import one_thread  # noqa: F401 (fixture)
from tiny_models import make_tiny_model

from napari_medgen import cli
from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.model.loading import load_model, release_model
from napari_medgen.engine.volume import Volume

FLIP_XY = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-faults")
    array = np.zeros((4, 12, 16), np.uint8)
    array[:, 2:10, 3:13] = 3
    array[:, 4:8, 5:11] = 2
    labels = Volume(array, (4.0, 4.0, 5.0), (-30.0, 12.0, 4.0), FLIP_XY, {"label_map": True})
    model = make_tiny_model(root / "tiny")
    yield {"labels": write_volume(labels, root / "tissue_labels.nii.gz"), "model": model, "root": root}
    release_model()


def _argv(files, out: Path, *extra: str) -> list[str]:
    return ["generate", "--labels", str(files["labels"]), "--model", str(files["model"]), "--out", str(out),
            "--progress", "jsonl", "--batch-size", "4", *extra]


def _events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _earlier_result(folder: Path) -> Path:
    folder.mkdir()
    out = folder / "result.nii.gz"
    out.write_bytes(b"an earlier result")
    return out


@pytest.mark.parametrize("stop_at", [1, 2, 3], ids=["first step", "middle step", "last step"])
def test_ctrl_c_at_any_step_writes_nothing_and_the_next_run_works(files, tmp_path, capsys, monkeypatch, stop_at):
    out = _earlier_result(tmp_path / "out")
    before = listing(out.parent)
    real = cli.Reporter.progress

    def interrupted(self, step, total, message="", notice=""):
        real(self, step, total, message, notice)
        if step == stop_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.Reporter, "progress", interrupted)
    assert cli.main(_argv(files, out, "--steps", "3")) == cli.EXIT_CANCELLED
    events = _events(capsys.readouterr().out)
    assert events[-1]["event"] == "cancelled" and events[-2]["step"] == stop_at
    assert listing(out.parent) == before and hidden_leftovers(out.parent) == []
    monkeypatch.setattr(cli.Reporter, "progress", real)
    assert cli.main(_argv(files, out, "--steps", "3")) == 0
    assert read_volume(out).metadata["synthetic"] is True


def test_exception_inside_the_network_is_one_error_line_and_nothing_is_written(files, tmp_path, capsys):
    out = _earlier_result(tmp_path / "out")
    before = listing(out.parent)
    model = load_model(files["model"], device="auto")  # the object the command line will get from the cache
    with FaultyNetwork(model, error=lambda: ValueError("a bug in the network"), fail_calls={2}):
        code = cli.main(_argv(files, out, "--steps", "3"))
    captured = capsys.readouterr()
    assert code == cli.EXIT_ERROR
    last = _events(captured.out)[-1]
    assert last["event"] == "error" and "unexpected ValueError: a bug in the network" in last["message"]
    assert "nothing was written" in last["message"] and "report" in last["message"]
    assert captured.err.count("\n") == 1
    assert listing(out.parent) == before and hidden_leftovers(out.parent) == []
    assert cli.main(_argv(files, out, "--steps", "2", "--progress", "none")) == 0  # the next run works


def test_out_of_memory_retries_with_fewer_slices_and_says_so(files, tmp_path, capsys):
    reference = tmp_path / "reference.nii.gz"
    assert cli.main(_argv(files, reference, "--steps", "2", "--seed", "5")) == 0
    capsys.readouterr()
    out = tmp_path / "result.nii.gz"
    model = load_model(files["model"], device="auto")
    with FaultyNetwork(model, error=cuda_out_of_memory, fail_calls={1, 2}) as fault:
        code = cli.main(_argv(files, out, "--steps", "2", "--seed", "5"))
    captured = capsys.readouterr()
    assert code == 0 and fault.batches[:3] == [4, 2, 1]
    events = _events(captured.out)
    notices = [e["notice"] for e in events if "notice" in e]
    assert notices == ["ran out of memory: 2 slices per network call", "ran out of memory: 1 slice per network call"]
    assert events[-1]["event"] == "result"
    assert "napari-medgen: note: ran out of memory" in captured.err
    np.testing.assert_allclose(read_volume(out).array, read_volume(reference).array, rtol=1e-5, atol=1e-3)


def test_sigterm_from_another_program_cancels_cleanly(files, tmp_path, capsys, monkeypatch):
    """How a 3D Slicer module cancels: it ends the process (SIGTERM). The run stops like Ctrl-C: its last
    JSON line says 'cancelled', it exits 130 and leaves no file and no temporary folder behind. (The
    signal is sent to this very process, in the middle of a run: a subprocess would cost seconds.)"""
    out = _earlier_result(tmp_path / "out")
    before = listing(out.parent)
    fallback = []
    previous = signal.signal(signal.SIGTERM, lambda *_: fallback.append("not handled by the command line"))
    real = cli.Reporter.progress

    def terminated(self, step, total, message="", notice=""):
        real(self, step, total, message, notice)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli.Reporter, "progress", terminated)
    try:
        code = cli.main(_argv(files, out, "--steps", "50"))
        assert signal.getsignal(signal.SIGTERM) is not cli._terminate  # put back after the run
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert fallback == []
    assert code == cli.EXIT_CANCELLED
    events = _events(capsys.readouterr().out)
    assert events[-1]["event"] == "cancelled" and events[-2]["step"] == 2
    assert listing(out.parent) == before and hidden_leftovers(out.parent) == []
