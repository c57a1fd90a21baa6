"""Every benchmark in one command (issue 6): runs them, writes their JSON, the performance table.

    python benchmarks/run_all.py [--smoke | --quick] [--threads N] [--only vs_monai ...] [--no-docs] [--table-only]
                                 [--allow-disturbed]

BENCHMARKS holds every script whose results feed a figure of README.md or docs/*.md. Each runs in its own
process (memory figures are per process) and writes <name>.json with the machine it ran on into
benchmarks/results/ (FULL_RUNS: the scripts run more than once, or with arguments, for the figures); then the
table of figures (a row from each benchmark's `table_row(result)`, in BENCHMARKS' order, the machine stated once
under it) goes to benchmarks/results/performance.md and into docs/benchmarks.md (between its performance-table
markers); the other scripts write their own tables into the pages common.GENERATED_BLOCKS names (docs/quality.md,
docs/models.md, docs/benchmarks.md). README.md's short table is hand-kept: update its headline figures by hand.
Benchmarks that need the trained demo model (`NEEDS_TRAINED_MODEL`) are skipped without it. The full tier takes
hours on a 2-core CPU (the quality, realism, distillation, MAISI and segmenter-training runs above all).

A benchmark run that other processes disturbed (machine_record.py) keeps the figures it would replace (its results
go to <name>.disturbed.json, the docs are left alone) unless `--allow-disturbed` is passed on to it; a row from a
disturbed result says so beside its figure.

A benchmark that fails does not stop the others: at the end run_all names each failed one with its
error's last line, leaves docs/benchmarks.md as it was (the table would mix fresh and stale figures; rerun the
failed ones with --only, then --table-only) and exits with status 1.

`--smoke` (`--quick` is the same): every benchmark once with `--smoke`, its tiny sizes and a tiny random-weight
model, results in a temporary folder (or $MEDGEN_BENCHMARK_RESULTS): a check that the scripts run, in a few
minutes; its figures are not for quoting, and benchmarks/results/ and docs/ are left alone.

A benchmark is a script benchmarks/<name>.py whose `main(argv=None)` parses its command line with
`common.parse` (so it takes `--smoke` and `--threads N`), gets its model from `common.benchmark_model()`
(or, for a model folder, `common.random_weights_folder(common.tiny_demo_card())` under --smoke), writes
`common.write_result(name, ...)`, and may define `table_row(result) -> (what, figure, target, met)` and
`NEEDS_TRAINED_MODEL`. Adding one is adding its name to BENCHMARKS; tests/test_benchmarks_smoke.py then
runs its `main(["--smoke"])` too. (A script without `table_row` feeds its own generated block or a page's prose.)
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

PAGE = common.GENERATED_BLOCKS["performance-table"]

# In the performance table's order (each benchmark with a `table_row` is a numbered row).
BENCHMARKS = [
    "vs_monai",
    "steps_quality",
    "roi_inpaint",
    "volume_scaling",
    "latency",
    "startup",
    "roofline",
    "sampler_speed",
    "quality",
    "realism",
    "distilled",
    "anatomy_accuracy",
    "batch_scaling",
    "maisi_cpu",
    "synthetic_training",
    "unseen_inpainting",
    "last_call",
    "partial_volume",
    "precision",
    "tri_planar",
    "inpaint_1mm",
]
# The full tier's runs of a script where its defaults alone do not make every figure the docs show: one list of
# arguments per run ("{cases}": a folder of synthetic cases that both segmenter runs share, made once).
FULL_RUNS: dict[str, list[list[str]]] = {
    "maisi_cpu": [["--unet-repeats", "1", "--skip-decode-above", "2000000"]],
    "synthetic_training": [["--data", "{cases}"],
                           ["--data", "{cases}", "--train-steps", "1000", "--seeds", "2", "--result-name",
                            "synthetic_training_1000steps"]],
}


def module(name: str) -> Any | None:
    """The benchmark's module (for its table row and needs), or None when it cannot be imported."""
    try:
        return importlib.import_module(name)
    except Exception as error:  # the table goes on without it
        print(f"{name}: cannot import ({type(error).__name__}: {error}); no table row", file=sys.stderr)
        return None


def needs_trained_model(name: str) -> bool:
    return bool(getattr(module(name), "NEEDS_TRAINED_MODEL", False))


def run_benchmark(name: str, flags: list[str]) -> str | None:
    """Run benchmarks/<name>.py in its own process, its output passed through; None when it succeeded,
    else the last line of its error output (or its exit status)."""
    command = [sys.executable, str(HERE / f"{name}.py"), *flags]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    last = ""
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            last = line.strip() or last
    if process.returncode == 0:
        return None
    return last or f"exit status {process.returncode}"


def run_benchmarks(names: list[str], flags: list[str], full: bool) -> tuple[dict[str, float], dict[str, str]]:
    """Run each benchmark (`full`: its FULL_RUNS, else once with `flags` alone), going on past failures: (wall
    seconds by name, last error line of each failed one)."""
    timings: dict[str, float] = {}
    failed: dict[str, str] = {}
    trained = common.trained_demo_available() if full else True
    cases = tempfile.mkdtemp(prefix="medgen-run-all-cases-")
    for name in names:
        if not trained and needs_trained_model(name):
            print(f"{name}: skipped, the trained brain-t1-demo model is not there", flush=True)
            continue
        begin = time.perf_counter()
        for extra in FULL_RUNS.get(name, [[]]) if full else [[]]:
            error = run_benchmark(name, [arg.format(cases=cases) for arg in extra] + flags)
            if error is not None:
                failed[name] = error
        timings[name] = round(time.perf_counter() - begin, 1)
    return timings, failed


def table(names: list[str] = BENCHMARKS) -> str:
    """The performance table, from whatever results exist in the results folder; the machine is stated
    once under it (each distinct machine once, with its rows), and rows measured while other processes
    were busy are named in one line."""
    rows = ["| # | What | Figure | Target | Met |", "|---|---|---|---|---|"]
    machines: dict[str, list[int]] = {}
    busy: list[int] = []
    for name in names:
        result = common.load_result(name)
        row = getattr(module(name), "table_row", None)
        if result is None or row is None:
            continue
        number = len(rows) - 1
        what, figure, target, met = row(result)
        words = common.machine_record.disturbance(result.get("machine"))
        if words:  # beside the figure: it was measured while other processes used the CPU
            figure += f" ({words})"
            busy.append(number)
        rows.append(f"| {number} | " + " | ".join((what, figure, target, met)) + " |")
        if isinstance(result.get("machine"), dict):
            machines.setdefault(common.machine_line(result["machine"]), []).append(number)
    rows.append(f"| {len(rows) - 1} | GPU | not measured: no GPU in this session | - | - |")
    if len(machines) == 1:
        notes = [f"Machine: {next(iter(machines))}."]
    else:
        notes = ["Machines: " + "; ".join(f"rows {', '.join(map(str, numbers))}: {line}"
                                          for line, numbers in sorted(machines.items())) + "."]
    if busy:
        notes.append(f"Rows {', '.join(map(str, busy))} ran while other processes used the CPU (timings disturbed; "
                     "each result's JSON `machine` names them).")
    return "\n".join(rows + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", "--quick", action="store_true", help="tiny sizes and model, results to a temporary folder")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=None)
    parser.add_argument("--no-docs", "--no-readme", dest="no_readme", action="store_true", help=f"leave {PAGE} alone")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table from the existing results")
    parser.add_argument("--allow-disturbed", action="store_true",
                        help="passed on: a benchmark disturbed by other processes may still replace the figures")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.smoke and not os.environ.get(common.RESULTS_ENV):
        os.environ[common.RESULTS_ENV] = tempfile.mkdtemp(prefix="medgen-bench-smoke-")  # the benchmarks inherit it
    timings: dict[str, float] = {}
    failed: dict[str, str] = {}
    if not args.table_only:
        flags = ((["--smoke"] if args.smoke else []) + (["--threads", str(args.threads)] if args.threads else [])
                 + (["--allow-disturbed"] if args.allow_disturbed else []))
        timings, failed = run_benchmarks(args.only or BENCHMARKS, flags, full=not args.smoke)
    text = table()
    common.result_path("performance.md").write_text(text + "\n")
    print(text)
    if failed:
        print(f"{PAGE} left as it was: some benchmarks failed")
    elif not args.no_readme and common.official_results():
        print(f"performance table updated in {PAGE}" if common.update_doc("performance-table", text)
              else f"{PAGE} has no performance table markers; the table is in results/performance.md")
    print(f"results in {common.results_dir()}; benchmark wall times: {timings}; total {time.perf_counter() - started:.0f} s")
    for name, error in failed.items():
        print(f"FAILED {name}: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
