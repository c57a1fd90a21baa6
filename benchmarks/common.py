"""Shared pieces of the benchmarks: the command line, the model, the inputs, the machine, timing, results.

Every benchmark takes `--threads N` and `--smoke` (see `parse`). The model is the shipped demo model
(`brain-t1-demo`) when its weights exist, else the demo ARCHITECTURE with random weights (speed does
not depend on the weights; quality does, and the quality benchmarks say which they used); under
`--smoke`, a tiny random-weight network on the demo card. Every result file records the machine it
came from and how busy other processes kept it (machine_record.py); a run they disturbed does not replace
the headline figures unless told `--allow-disturbed` (`refused_as_headline`). What a synthesis run did
(sampler, steps, network calls, fill) is read from its result's provenance (`ran`), never from the arguments.
Results go to benchmarks/results/, or to the folder named by $MEDGEN_BENCHMARK_RESULTS (a smoke run makes a
temporary one): only results in benchmarks/results/ update the documentation.

The figures' tables are generated blocks (`<!-- NAME:start -->` ... `<!-- NAME:end -->`) in the pages of
docs/; GENERATED_BLOCKS says which page holds each block, and `update_doc(block, text)` writes it there. The
README's one short performance-and-quality table is hand-kept (a few headline figures with links to these
pages), not generated: after a benchmark changes a headline figure, update that row by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import machine_record
import numpy as np
import torch
from machine_record import cpu_name, machine_line  # noqa: F401 - the benchmarks' names for them

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
# Each generated block -> the page (relative to the repository) that holds it; the one place that says so.
GENERATED_BLOCKS: dict[str, str] = {
    "performance-table": "docs/benchmarks.md",  # run_all.py
    "batch-scaling-table": "docs/benchmarks.md",  # batch_scaling.py
    "quality-table": "docs/quality.md",  # quality.py
    "unseen-inpainting-table": "docs/quality.md",  # unseen_inpainting.py
    "realism-table": "docs/quality.md",  # realism.py
    "tri-planar-table": "docs/quality.md",  # tri_planar.py
    "inpaint-1mm-table": "docs/quality.md",  # inpaint_1mm.py
    "synthetic-training-table": "docs/quality.md",  # synthetic_training.py
    "distilled-table": "docs/models.md",  # distilled.py
}
DEMO = "brain-t1-demo"
RESULTS_ENV = "MEDGEN_BENCHMARK_RESULTS"

# What this process was asked on its command line (`parse`): probes in fresh processes get the same.
_SETTINGS: dict[str, Any] = {"smoke": False, "threads": None, "allow_disturbed": False}


# -- the command line ------------------------------------------------------------------------------
def parse(parser: argparse.ArgumentParser, smoke: dict[str, Any], argv: list[str] | None = None) -> argparse.Namespace:
    """Parse a benchmark's command line with the options every benchmark has, and set up the run (the machine is
    watched from here on).

    `--threads N`: torch's intra-op threads (default: one per core). `--allow-disturbed`: see `refused_as_headline`.
    `--smoke`: `smoke`'s values become the defaults (options given on the command line still win), one thread
    unless told, the model is a tiny random-weight one, and results go to a temporary folder unless
    $MEDGEN_BENCHMARK_RESULTS names one: a check that the script runs, in seconds, on a busy machine too; its
    figures mean nothing.
    """
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and model, results to a temporary folder")
    parser.add_argument("--allow-disturbed", action="store_true",
                        help="let a run on a busy machine replace the headline figures (they say it was disturbed)")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**{"threads": 1, **smoke})
        args = parser.parse_args(argv)
        if not os.environ.get(RESULTS_ENV):
            os.environ[RESULTS_ENV] = tempfile.mkdtemp(prefix="medgen-bench-smoke-")
    _SETTINGS.update(smoke=args.smoke, threads=args.threads, allow_disturbed=args.allow_disturbed)
    machine_record.watch()
    set_threads(args.threads)
    return args


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def smoke() -> bool:
    return bool(_SETTINGS["smoke"])


# -- the machine -----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The machine and settings a figure came from, and how busy other processes kept it (machine_record)."""
    return machine_record.record(smoke())


def refused_as_headline() -> str | None:
    """Why this run's figures may not replace the headline figures (its results file, a generated block), or None.

    A run on a machine that other processes kept busy (machine_record's `busy`) is refused unless the benchmark was
    told `--allow-disturbed`; results outside benchmarks/results/ are never headline figures anyway.
    """
    if not official_results() or _SETTINGS["allow_disturbed"]:
        return None
    words = machine_record.disturbance(machine())
    return f"this run was {words} (over {machine_record.BUSY_PERCENT:g} %)" if words else None


# -- the model -------------------------------------------------------------------------------------
def randomize_zero_layers(module: torch.nn.Module) -> None:
    """Random weights for MONAI's zero-initialised layers: a fresh UNet predicts exactly zero noise."""
    for layer in module.modules():
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.dim() > 1 and not weight.detach().any():
            layer.reset_parameters()


def trained_demo_available() -> bool:
    from napari_medgen.engine.errors import MedgenError
    from napari_medgen.engine.model.registry import find_model

    try:
        entry = find_model(DEMO)
    except MedgenError:
        return False
    return (entry.folder / entry.card.weights).is_file()


def tiny_demo_card():
    """The demo card (conditioning, schema, spacing, schedule) with a tiny network, as the tests build them."""
    from napari_medgen.engine.model.presets import brain_t1_demo_card

    card = brain_t1_demo_card().model_copy(deep=True, update={"name": "brain-t1-demo-tiny"})
    # Attention at the coarsest of three levels, as in the demo (at 64x64 tokens MONAI's explicit attention is slow).
    card.network.kwargs.update(channels=[8, 8, 16], attention_levels=[False, False, True], num_res_blocks=1,
                               norm_num_groups=8, num_head_channels=8)
    return card


_RANDOM_FOLDERS: dict[str, Path] = {}


def random_weights_folder(card) -> Path:
    """A model folder (made once per process) holding `card` with random weights."""
    from napari_medgen.engine.model.networks import build_networks
    from napari_medgen.engine.model.weights import save_model

    if card.name not in _RANDOM_FOLDERS:
        folder = Path(tempfile.mkdtemp(prefix="medgen-bench-")) / card.name
        torch.manual_seed(0)
        networks = build_networks(card)
        for network in networks.values():
            randomize_zero_layers(network)
        save_model(card, networks, folder)
        _RANDOM_FOLDERS[card.name] = folder
    return _RANDOM_FOLDERS[card.name]


def benchmark_model(trained: bool | None = None, precision: str = "fp32"):
    """(LoadedModel, what it is): under --smoke a tiny random-weight model of the demo card, else the demo
    model, trained when its weights are there (trained=None) or its architecture with random weights.

    Speed does not depend on the weights; quality does, and the quality figures say which they used.
    """
    from napari_medgen.engine.model.loading import load_model
    from napari_medgen.engine.model.presets import brain_t1_demo_card

    if _SETTINGS["smoke"]:
        return load_model(random_weights_folder(tiny_demo_card()), device="cpu", precision=precision), "tiny random weights"
    if trained is None:
        trained = trained_demo_available()
    if trained:
        return load_model(DEMO, device="cpu", precision=precision), "trained"
    card = brain_t1_demo_card().model_copy(update={"name": "brain-t1-demo-random"})
    return load_model(random_weights_folder(card), device="cpu", precision=precision), "random weights"


# -- inputs ----------------------------------------------------------------------------------------
@functools.cache
def sample_brain():
    """The shipped sample brain (T1 and tissue labels), canonical orientation, contiguous arrays (shared: read only)."""
    from napari_medgen._paths import sample_dir

    t1, labels = (_canonical_sample(sample_dir() / name) for name in ("mni152_t1_2mm.nii.gz", "mni152_tissue_labels_2mm.nii.gz"))
    return t1, labels


def _canonical_sample(path):
    from napari_medgen.engine.io import read_volume
    from napari_medgen.engine.orientation import to_canonical
    from napari_medgen.engine.volume import Volume

    v = to_canonical(read_volume(path))
    return Volume(np.ascontiguousarray(v.array), v.spacing, v.origin, v.direction)


def sample_fractions():
    """The shipped sample brain's tissue fraction maps (CSF, grey, white matter) on the grid of `sample_brain`."""
    from napari_medgen._paths import sample_dir
    from napari_medgen.engine.training.data import fraction_paths

    return [_canonical_sample(path) for path in fraction_paths(sample_dir() / "mni152_tissue_labels_2mm.nii.gz", 4)]


def brain_label_slices(count: int, size: int = 128, first: int | None = None):
    """`count` axial slices of the sample brain's labels padded to size x size at 2 mm (a Volume)."""
    from napari_medgen.engine.volume import Volume

    _, labels = sample_brain()
    z0 = labels.shape[0] // 2 - count // 2 if first is None else first
    block = labels.array[z0 : z0 + count]
    out = np.zeros((block.shape[0], size, size), np.uint8)
    h, w = min(size, block.shape[1]), min(size, block.shape[2])
    oy, ox = (size - h) // 2, (size - w) // 2
    out[:, oy : oy + h, ox : ox + w] = block[:, :h, :w]
    return Volume(out, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


# -- what ran --------------------------------------------------------------------------------------
RAN_KEYS = ("sampler", "steps", "network_calls", "guidance", "inpaint_estimate", "slice_noise_correlation",
            "slice_noise_correlation_by_label", "device", "precision", "planes", "planes_average_last", "fine_detail",
            "anatomy", "anatomy_at_scan_resolution")


def ran(volume) -> dict[str, Any]:
    """What a synthesis run did, read from its result's provenance (never from what the benchmark asked for): the
    sampler and steps as applied, its network calls (all slice batches of the variant), guidance, slice-noise
    correlation, an inpainting's fill as settled (`mean`: the posterior mean, one call per draw; `sample`: the whole
    walk), device, precision."""
    provenance = volume.metadata["provenance"]
    return {key: provenance[key] for key in RAN_KEYS if key in provenance}


def ran_words(record: dict[str, Any] | None, asked: str = "") -> str:
    """A table's words for what ran: 'dpm++2m 20 steps, 20 network calls', or for a posterior-mean fill
    'posterior-mean fill, 4 network calls'; a result from before the record says what was `asked` and no more."""
    if not record:
        return f"{asked} asked (what ran was not recorded)" if asked else "what ran was not recorded"
    calls = f", {record['network_calls']} network calls" if "network_calls" in record else ""
    if record.get("inpaint_estimate") == "mean":
        return f"posterior-mean fill{calls}"
    guidance = f", guidance {record['guidance']:g}" if record.get("guidance", 1.0) != 1.0 else ""
    precision = f", {record['precision']}" if record.get("precision", "float32") != "float32" else ""
    return f"{record['sampler']} {record['steps']} steps{calls}{guidance}{precision}"


# -- timing ----------------------------------------------------------------------------------------
def drive(run, on_event: Callable[[Any], None] | None = None):
    """Run a progress generator to its end, handing each event to `on_event`; returns its result."""
    try:
        while True:
            event = next(run)
            if on_event is not None:
                on_event(event)
    except StopIteration as stop:
        return stop.value


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def side_by_side(functions: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Alternate the functions (A B A B ...) so slow phases of a noisy machine hit all of them alike."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            times[name].append(timed(fn)[0])
    return times


# -- memory ----------------------------------------------------------------------------------------
def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's resident memory (Linux), after freeing
    what the C allocator holds, so the next peak is the next run's own."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_in_subprocess(module: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run `python benchmarks/<module>.py <args>` in a fresh process (with this process's --threads and
    --smoke); it prints one JSON line last, which is returned.

    Under --smoke the same command line runs in this process instead (`<module>.main(args)`): a fresh
    process would cost seconds of imports to check what a smoke run checks, and smoke figures (the
    per-process memory ones included) mean nothing anyway.
    """
    script = Path(__file__).resolve().parent / f"{module}.py"
    args = list(args)
    if _SETTINGS["threads"]:
        args += ["--threads", str(_SETTINGS["threads"])]
    if smoke():
        args.append("--smoke")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            importlib.import_module(module).main(args)
        return json.loads(printed.getvalue().strip().splitlines()[-1])
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- results ---------------------------------------------------------------------------------------
def results_dir() -> Path:
    """Where results go: benchmarks/results/, or the folder $MEDGEN_BENCHMARK_RESULTS names."""
    return Path(os.environ.get(RESULTS_ENV) or RESULTS)


def official_results() -> bool:
    """Whether results go to benchmarks/results/ (only those may update the documentation's tables)."""
    return results_dir().resolve() == RESULTS.resolve()


def update_doc(block: str, text: str) -> bool:
    """Put `text` between the `<!-- block:start -->` and `<!-- block:end -->` markers of the page that
    GENERATED_BLOCKS names for `block`; False (nothing written) when the page lacks the markers.

    Only for results in benchmarks/results/: a smoke run (or one writing elsewhere) leaves the pages alone. A
    benchmark's own run on a busy machine leaves them alone too (`refused_as_headline`), unless it was told
    --allow-disturbed: then the block says under the table that it was disturbed. (run_all's performance table is
    built from results files that passed `write_result`'s same check, so run_all, which watches no run, is not held.)
    """
    if not official_results():
        return False
    page = REPO / GENERATED_BLOCKS[block]
    if machine_record.watching():
        why = refused_as_headline()
        if why:
            print(f"{page.name}'s {block} left as it was: {why}; rerun on a quiet machine, or pass --allow-disturbed",
                  file=sys.stderr)
            return False
        words = machine_record.disturbance(machine())
        text += f"\n\n({words} while this ran; written with --allow-disturbed)" if words else ""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    current = page.read_text() if page.is_file() else ""
    if start not in current or end not in current:
        return False
    head, rest = current.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    return True


def publish(name: str, report: dict[str, Any], block: str, text: str) -> None:
    """A benchmark's ending: its results file (with the machine it ran on), its table printed, and the table put into
    the page that holds `block` (official results only; see `update_doc`)."""
    report["machine"] = machine()
    write_result(name, report)
    print(text)
    if official_results():
        update_doc(block, text)


def result_path(name: str) -> Path:
    """A file in the results folder (made when missing)."""
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write <name>.json into the results folder; a run that `refused_as_headline` writes <name>.disturbed.json
    instead, so the figures measured on a quiet machine stay the ones the tables are built from."""
    why = refused_as_headline() if isinstance(payload.get("machine"), dict) else None
    path = result_path(f"{name}.disturbed.json" if why else f"{name}.json")
    if why:
        print(f"{name}.json left as it was: {why}; this run's results are in {path.name} (rerun on a quiet machine, "
              "or pass --allow-disturbed to make them the figures)", file=sys.stderr)
    path.write_text(json.dumps(payload, indent=2, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


def load_result(name: str) -> dict[str, Any] | None:
    path = results_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def met(value: bool | None) -> str:
    """A table's "Met" cell."""
    return "n/a" if value is None else ("yes" if value else "**no**")


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: its default, one per core)."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
