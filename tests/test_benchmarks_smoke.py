"""The benchmarks still run: each one's smoke mode (a tiny random-weight model, tiny sizes, one repeat).

Every benchmark listed in benchmarks/run_all.py runs through its `main(["--smoke"])` in this process
(imports paid once), with results in a temporary folder; benchmarks/results/ and the generated tables
(in the pages of docs/ that benchmarks/common.py's GENERATED_BLOCKS names, and any in README.md) must come
out untouched; each generated block is where GENERATED_BLOCKS says it is. run_all itself is checked to go
on past a failing benchmark, name it and exit non-zero. Figures are not looked at: speed lives in the
benchmarks, not in tests.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sys
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
