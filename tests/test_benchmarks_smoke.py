"""The benchmarks still run: each one's smoke mode (a tiny random-weight model, tiny sizes, one repeat).

Every benchmark listed in benchmarks/run_all.py runs through its `main(["--smoke"])` in this process
(imports paid once), with results in a temporary folder; benchmarks/results/ and the generated tables
(in the pages of docs/ that benchmarks/common.py's GENERATED_BLOCKS names, and any in README.md) must come
out untouched; each generated block is where GENERATED_BLOCKS says it is. run_all itself is checked to go
on past a failing benchmark, name it and exit non-zero. What a run did (sampler, steps, network calls, fill)
must come from its result's provenance; the machine watch must count another process's CPU as other work, and
a disturbed run must not replace the headline figures unless allowed (then it says so beside them). Figures are
not looked at: speed lives in the benchmarks, not in tests.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_DIR = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS_DIR))

import run_all  # noqa: E402

BLOCK_START = r"<!-- ([a-z][a-z0-9-]*):start -->"  # a generated block's marker (prose may write NAME)


def generated_pages() -> list[str]:
    """The pages that hold generated tables: README.md and every page GENERATED_BLOCKS names."""
    return sorted({"README.md", *run_all.common.GENERATED_BLOCKS.values()})


def committed_figures() -> dict[str, str]:
    """A fingerprint of what a smoke run must not touch: the results folder and every generated table."""
    prints = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((BENCHMARKS_DIR / "results").glob("*"))}
    for page in generated_pages():
        text = (REPO / page).read_text()
        for block in re.findall(BLOCK_START, text):
            prints[f"{page} {block}"] = text.split(f"<!-- {block}:start -->", 1)[1].split(f"<!-- {block}:end -->", 1)[0]
    return prints


def test_each_generated_block_lies_in_the_page_named_for_it():
    """update_doc writes a block into the page GENERATED_BLOCKS names: the markers must be there, once, and
    in no other page (a block moved by hand without the table would no longer be regenerated)."""
    for block, page in run_all.common.GENERATED_BLOCKS.items():
        for other in generated_pages():
            text = (REPO / other).read_text()
            count = (text.count(f"<!-- {block}:start -->"), text.count(f"<!-- {block}:end -->"))
            assert count == ((1, 1) if other == page else (0, 0)), f"{block} in {other}: {count}"
    for page in generated_pages():
        for block in re.findall(BLOCK_START, (REPO / page).read_text()):
            assert block in run_all.common.GENERATED_BLOCKS, f"{page} holds {block}, which no benchmark regenerates"


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """The folder smoke results go to; torch's thread count and the committed figures as they were."""
    results = tmp_path_factory.mktemp("benchmark-results")
    patch = pytest.MonkeyPatch()
    patch.setenv(run_all.common.RESULTS_ENV, str(results))
    threads = torch.get_num_threads()
    before = committed_figures()
    yield results, before
    torch.set_num_threads(threads)
    patch.undo()


@pytest.mark.parametrize("name", run_all.BENCHMARKS)
def test_benchmark_runs_in_smoke_mode(name, smoke_results):
    results, _ = smoke_results
    module = importlib.import_module(name)
    module.main(["--smoke"])
    result = json.loads((results / f"{name}.json").read_text())
    if hasattr(module, "table_row"):
        cells = module.table_row(result)
        assert len(cells) == 4 and all(isinstance(cell, str) and cell for cell in cells)


def test_smoke_runs_leave_committed_figures_alone(smoke_results):
    results, before = smoke_results
    assert committed_figures() == before
    table = run_all.table()  # from the smoke results
    assert table.startswith("| # | What |") and "| GPU |" in table


def test_run_all_goes_on_past_a_failing_benchmark(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken.py").write_text("raise ValueError('the engine moved')\n")
    (tmp_path / "fine.py").write_text("print('fine')\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "BENCHMARKS", ["broken", "fine"])
    monkeypatch.setenv(run_all.common.RESULTS_ENV, str(tmp_path / "results"))
    assert run_all.main(["--smoke"]) == 1
    out = capsys.readouterr().out
    assert "== fine" in out  # ran after the broken one
    assert "FAILED broken: ValueError: the engine moved" in out
    assert "FAILED fine" not in out


def test_labels_say_what_ran_not_what_was_asked(smoke_results):
    """The tiny model's card runs dpm++2m (not the engine's default ddim); a small inpainting region is filled with
    the posterior mean (one call per draw), whatever steps were asked: the results must say so."""
    results, _ = smoke_results
    load = lambda name: json.loads((results / f"{name}.json").read_text())  # noqa: E731
    card = run_all.common.tiny_demo_card()
    assert load("latency")["ran"]["sampler"] == card.sampling.sampler
    assert load("startup")["ran"]["sampler"] == card.sampling.sampler
    roi = load("roi_inpaint")["slice_256_at_1mm_20mm_disk"]["ran"]["roi"]
    assert roi["inpaint_estimate"] == "mean" and roi["steps"] == 1
    assert "posterior-mean fill" in importlib.import_module("roi_inpaint").table_row(load("roi_inpaint"))[0]
    assert load("synthetic_training")["synthesis"]["made_with"] == [{"sampler": card.sampling.sampler, "steps": 1}]


def test_the_watch_counts_another_process_as_other_work():
    """CPU time of this run's own child counts as ours; an orphan's (a process outside this one's tree) as other
    work, however busy the machine is otherwise."""
    import psutil

    machine_record = run_all.common.machine_record
    me = psutil.Process()
    spin = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass"
    ours_before = machine_record.tree_cpu_s(psutil, me)
    own = psutil.Popen([sys.executable, "-c", spin.format(s=0.6)])
    while own.cpu_times().user < 0.2 and own.is_running():
        time.sleep(0.05)
    own_cpu = sum(own.cpu_times()[:2])
    own.wait()
    assert machine_record.tree_cpu_s(psutil, me) - ours_before >= own_cpu

    machine_record.watch()
    launcher = f"import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', {spin.format(s=5)!r}]).pid)"
    orphan = psutil.Process(int(subprocess.run([sys.executable, "-c", launcher], check=True, capture_output=True,
                                                text=True).stdout))
    try:
        while orphan.cpu_times().user < 0.3:
            time.sleep(0.05)
        orphan_cpu = sum(orphan.cpu_times()[:2])
        theirs = machine_record.record()
    finally:
        orphan.kill()
    other_cpu_s = theirs["other_cpu_percent"] / 100 * theirs["cores"] * theirs["watched_s"]
    assert other_cpu_s >= 0.8 * orphan_cpu, theirs


def test_a_disturbed_run_keeps_the_headline_figures(tmp_path, monkeypatch, capsys):
    common = run_all.common
    page = tmp_path / "docs" / "quality.md"
    page.parent.mkdir()
    page.write_text("<!-- quality-table:start -->\nold\n<!-- quality-table:end -->\n")
    busy = {"cpu": "x", "cores": 2, "torch": "t", "device": "cpu", "torch_threads": 2, "busy": True,
            "other_cpu_percent": 40.0}
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "REPO", tmp_path)
    monkeypatch.delenv(common.RESULTS_ENV, raising=False)
    monkeypatch.setattr(common, "machine", lambda: busy)
    monkeypatch.setattr(common.machine_record, "watching", lambda: True)
    monkeypatch.setitem(common._SETTINGS, "allow_disturbed", False)
    assert common.write_result("latency", {"machine": busy}).name == "latency.disturbed.json"
    assert not (tmp_path / "results" / "latency.json").exists()
    assert not common.update_doc("quality-table", "new") and "old" in page.read_text()
    assert "disturbed: other processes used 40 % of the CPU" in capsys.readouterr().err
    monkeypatch.setitem(common._SETTINGS, "allow_disturbed", True)
    assert common.write_result("latency", {"machine": busy}).name == "latency.json"
    assert common.update_doc("quality-table", "new")
    assert "new\n\n(disturbed: other processes used 40 % of the CPU" in page.read_text()
    latency = json.loads((BENCHMARKS_DIR / "results" / "latency.json").read_text())
    latency["machine"] = busy
    (tmp_path / "results" / "latency.json").write_text(json.dumps(latency))
    monkeypatch.setenv(common.RESULTS_ENV, str(tmp_path / "results"))
    row = next(line for line in run_all.table(["latency"]).splitlines() if line.startswith("| 1 |"))
    assert "(disturbed: other processes used 40 % of the CPU)" in row
