"""Start-up (issue 19): a cold `napari-medgen generate` against a warm `napari-medgen serve` worker.

    python benchmarks/startup.py [--repeats 5] [--steps 20] [--smoke] [--threads N]

The same one axial slice of the sample brain's labels, the same arguments and seed, through
- a cold process per run: `generate --progress jsonl`, once with MONAI's lean import (what the command
  line does) and once with `NAPARI_MEDGEN_MONAI_IMPORT=full` (a plain `import monai`, as before issue 19),
  alternated A B A B;
- one worker: `serve`, the first request (which loads the model) and then `--repeats` more.
Each is timed from the moment the request is made (the process launched, or the request line written)
to the first network call (a probe in the child process notes when the denoiser is first called) and to
the result; medians of `--repeats`. Every result file must equal the cold command's. Also: fresh-process
wall times of `--help`, `generate --help` and `models` (medians), and where a cold process's time goes
before its first network call (one process per import mode, phase by phase, wall and CPU seconds).
Results: benchmarks/results/startup.json.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET_COMMAND_S = 1.0  # models, --help
TARGET_WARM_FIRST_CALL_S = 0.2

# The child process: note the wall-clock time of every first network call of a denoiser (one per slice
# batch, so a run's first call is its first line after the request), then run the command line as its
# console script does. Nothing is imported before the command line's own imports.
PROBE = r"""
import importlib.abc, importlib.machinery, os, sys, time
_probe_file = os.environ["MEDGEN_PROBE_FILE"]
class _Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "napari_medgen.engine.diffusion.denoiser":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real_exec = spec.loader.exec_module
        def exec_module(module):
            real_exec(module)
            call = module.Denoiser.__call__
            def probed(self, *args, **kwargs):
                if self.calls == 0:
                    with open(_probe_file, "a") as f:
                        f.write(f"{time.time()!r}\n")
                return call(self, *args, **kwargs)
            module.Denoiser.__call__ = probed
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, _Probe())
sys.argv = ["napari-medgen", *sys.argv[1:]]
from napari_medgen.cli import main
sys.exit(main())
"""

# One cold process, phase by phase (the steps cmd_generate takes, each timed on its own).
PHASES = r"""
import json, resource, sys, time
launched = float(sys.argv[1]); labels, model, steps, mode = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
marks = [("interpreter start", time.time(), 0.0)]
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def mark(name):
    marks.append((name, time.time(), cpu()))
marks[0] = ("interpreter start", time.time(), cpu())
from napari_medgen.cli import parse_arguments
args = parse_arguments(["generate", "--labels", labels, "--out", "unused.nii.gz", "--model", model, "--steps", str(steps)])
mark("napari_medgen.cli and the parser")
from napari_medgen.engine.model import networks
networks.use_lean_monai_import(mode == "lean")
import SimpleITK
mark("SimpleITK")
from napari_medgen.engine.io import read_volume
label_map = read_volume(labels)
mark("read the label map")
import torch
mark("torch")
networks.monai_module("monai.networks.nets"); networks.monai_module("monai.networks.schedulers")
mark(f"MONAI ({mode} import)")
from napari_medgen.engine.synthesis import api, run
mark("engine: synthesis, sampling loops")
from napari_medgen.engine.model.registry import find_model
entry = find_model(model)
mark("find the model, parse its card")
from napari_medgen.engine.model.device import resolve_device, resolve_precision
resolve_precision("fp32", resolve_device(args.device))
mark("device set-up")
from napari_medgen.engine.model.loading import load_model
loaded = load_model(model, device=args.device)
mark("networks built, weights checked, loaded, hashed")
from napari_medgen.engine.diffusion import denoiser
first = []
call = denoiser.Denoiser.__call__
def probed(self, *a, **k):
    if not first:
        mark("run set-up to the first network call")
        first.append(1)
    return call(self, *a, **k)
denoiser.Denoiser.__call__ = probed
from napari_medgen.commands.sampling import sampling_options
gen = api.generate(loaded, label_map, sampling_options(args))
next(gen)
gen.close()
phases = {"interpreter start": {"wall_s": marks[0][1] - launched, "cpu_s": marks[0][2]}}
for (_, w0, c0), (name, w1, c1) in zip(marks, marks[1:]):
    phases[name] = {"wall_s": w1 - w0, "cpu_s": c1 - c0}
print(json.dumps({"phases": phases, "first_network_call_s": marks[-1][1] - launched}))
"""

CLI = "import sys; from napari_medgen.cli import main; sys.exit(main())"  # what the console script runs


def _env(threads: int | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NAPARI_MEDGEN_MONAI_IMPORT", "MEDGEN_PROBE_FILE")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(extra)
    return env


def _probe_times(path: Path) -> list[float]:
    return [float(line) for line in path.read_text().split()] if path.is_file() else []


def time_command(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh `napari-medgen ARGV` process (it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CLI, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise RuntimeError(f"napari-medgen {' '.join(argv)} failed: {run.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cold_run(generate_args: list[str], out: Path, probe: Path, env: dict[str, str]) -> dict[str, float]:
    """One cold `napari-medgen generate ... --progress jsonl` process: to its first network call, to its end."""
    probe.unlink(missing_ok=True)
    argv = ["generate", *generate_args, "--out", str(out), "--progress", "jsonl"]
    launched = time.time()
    run = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         env={**env, "MEDGEN_PROBE_FILE": str(probe)})
    total = time.time() - launched
    if run.returncode != 0:
        raise RuntimeError(f"cold generate failed: {run.stderr[-2000:]}")
    return {"first_network_call_s": _probe_times(probe)[0] - launched, "total_s": total}


class Worker:
    """A `napari-medgen serve` process with the probe; requests timed from the line written."""

    def __init__(self, probe: Path, env: dict[str, str]) -> None:
        self.probe = probe
        probe.unlink(missing_ok=True)
        self.launched = time.time()
        self.process = subprocess.Popen([sys.executable, "-c", PROBE, "serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        env={**env, "MEDGEN_PROBE_FILE": str(probe)})
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._ready = threading.Condition()
        self._ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._ready:
                self.events.append((time.time(), json.loads(line)))
                self._ready.notify_all()
        with self._ready:
            self._ended = True
            self._ready.notify_all()

    def wait(self, predicate, timeout: float = 1800) -> tuple[float, dict[str, Any]]:
        """The first event (with the time it was read) that `predicate` accepts."""
        deadline = time.time() + timeout
        seen = 0
        with self._ready:
            while True:
                for stamp, event in self.events[seen:]:
                    if predicate(event):
                        return stamp, event
                seen = len(self.events)
                if self._ended or time.time() > deadline:
                    raise RuntimeError("the worker ended or did not answer in time")
                self._ready.wait(1)

    def request(self, request_id: str, args: list[str], out: Path) -> dict[str, float]:
        values = dict(zip((a.lstrip("-") for a in args[::2]), args[1::2], strict=True))
        message = {"id": request_id, "command": "generate", "args": {**values, "out": str(out)}}
        sent = time.time()
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        stamp, event = self.wait(lambda e: e.get("id") == request_id and e["event"] in ("result", "error", "cancelled"))
        if event["event"] != "result":
            raise RuntimeError(f"worker request failed: {event}")
        first = min(t for t in _probe_times(self.probe) if t >= sent)
        return {"first_network_call_s": first - sent, "total_s": stamp - sent}

    def shutdown(self) -> int:
        self.process.stdin.write(json.dumps({"command": "shutdown"}) + "\n")
        self.process.stdin.flush()
        return self.process.wait(timeout=600)


def _median(runs: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def main(argv: list[str] | None = None) -> None:
    import common  # imports torch: only the parent, never a timed child

    parser = common.argument_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="cold runs per import mode, warm requests, command runs")
    parser.add_argument("--steps", type=int, default=20)
    args = common.parse(parser, smoke={"repeats": 1, "steps": 2}, argv=argv)
    import numpy as np

    from napari_medgen._paths import sample_dir
    from napari_medgen.engine.io import read_volume, write_volume
    from napari_medgen.engine.volume import Volume

    model, kind = common.benchmark_model()
    folder = Path(tempfile.mkdtemp(prefix="medgen-startup-"))
    labels = read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz")
    z = labels.shape[0] // 2
    origin = labels.index_to_physical(np.array([0.0, 0.0, float(z)]))
    one_slice = Volume(labels.array[z : z + 1].copy(), labels.spacing, tuple(origin), labels.direction, dict(labels.metadata))
    labels_path = write_volume(one_slice, folder / "labels_one_slice.nii.gz")
    generate_args = ["--labels", str(labels_path), "--model", str(model.folder), "--steps", str(args.steps), "--seed", "1",
                     "--device", "cpu"]
    env = _env(args.threads)
    probe = folder / "probe.txt"

    # --help and models: fresh processes
    commands = {"--help": ["--help"], "generate --help": ["generate", "--help"], "models": ["models"]}
    command_repeats = args.repeats if args.smoke else max(args.repeats, 3)
    command_runs = {name: [time_command(argv_, env) for _ in range(command_repeats)] for name, argv_ in commands.items()}
    command_s = {name: {"wall_s": round(statistics.median(w for w, _ in runs), 3),
                        "cpu_s": round(statistics.median(c for _, c in runs), 3)} for name, runs in command_runs.items()}

    # cold processes, lean and full MONAI import alternated
    modes = {"lean": env, "full": {**env, "NAPARI_MEDGEN_MONAI_IMPORT": "full"}}
    if args.smoke:  # a check that the script runs: one cold process of each kind is enough
        del modes["full"]
    cold: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    cold_out = folder / "cold.nii.gz"
    for _ in range(args.repeats):
        for mode, mode_env in modes.items():
            cold[mode].append(cold_run(generate_args, cold_out, probe, mode_env))
    phases = {}
    for mode in modes:
        out = subprocess.run([sys.executable, "-c", PHASES, repr(time.time()), str(labels_path), str(model.folder),
                              str(args.steps), mode], capture_output=True, text=True, env=env, cwd=folder)
        if out.returncode != 0:
            raise RuntimeError(f"phase timing failed: {out.stderr[-2000:]}")
        phases[mode] = json.loads(out.stdout.strip().splitlines()[-1])

    # one warm worker
    worker = Worker(probe, env)
    ready_at, _ = worker.wait(lambda e: e["event"] == "ready")
    first_request = worker.request("first", generate_args, folder / "warm_first.nii.gz")
    warm = [worker.request(f"r{k}", generate_args, folder / f"warm_{k}.nii.gz") for k in range(args.repeats)]
    exit_code = worker.shutdown()

    cold_result = read_volume(cold_out)
    reference = cold_result.array
    warm_files = [folder / "warm_first.nii.gz"] + [folder / f"warm_{k}.nii.gz" for k in range(args.repeats)]
    max_diff = max(float(np.max(np.abs(read_volume(p).array.astype(np.float64) - reference))) for p in warm_files)

    summary = {
        "cold_lean": {"first_network_call_s": _median(cold["lean"], "first_network_call_s"), "total_s": _median(cold["lean"], "total_s")},
        "cold_full_monai": {"first_network_call_s": _median(cold["full"], "first_network_call_s"),
                            "total_s": _median(cold["full"], "total_s")} if "full" in cold else None,
        "warm": {"first_network_call_s": _median(warm, "first_network_call_s"), "total_s": _median(warm, "total_s")},
    }
    met = (all(v["wall_s"] < TARGET_COMMAND_S for k, v in command_s.items() if k in ("--help", "models"))
           and summary["warm"]["first_network_call_s"] < TARGET_WARM_FIRST_CALL_S)
    result = {
        "machine": common.machine(),
        "model": f"{model.card.name} ({kind})",
        "settings": {"slice": list(one_slice.shape), "steps": args.steps, "seed": 1, "repeats": args.repeats, "device": "cpu"},
        "ran": common.ran(cold_result),  # the cold command's result file: what it ran (the warm ones are equal to it)
        "commands": command_s,
        "summary": summary,
        "cold": {mode: {"runs": [{k: round(v, 3) for k, v in r.items()} for r in runs]} for mode, runs in cold.items()},
        "phases_before_first_network_call": {
            mode: {"first_network_call_s": round(p["first_network_call_s"], 3),
                   "phases": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in p["phases"].items()}}
            for mode, p in phases.items()
        },
        "worker": {
            "ready_after_s": round(ready_at - worker.launched, 3),
            "first_request": {k: round(v, 3) for k, v in first_request.items()},
            "next_requests": [{k: round(v, 3) for k, v in r.items()} for r in warm],
            "exit_code_after_shutdown": exit_code,
        },
        "same_result": {"max_abs_difference_to_cold": max_diff, "equal": max_diff == 0.0},
        "targets": {"models_and_help_s": TARGET_COMMAND_S, "warm_first_network_call_s": TARGET_WARM_FIRST_CALL_S},
        "met": met,
    }
    path = common.write_result("startup", result)
    print(json.dumps({"summary": summary, "commands": command_s, "same_result": result["same_result"], "met": met,
                      "written": str(path)}, indent=1))


def table_row(r: dict) -> tuple[str, str, str, str]:
    """The performance table's row (docs/benchmarks.md): what, figure, target, met."""
    import common

    s, c = r["summary"], r["commands"]
    full = s.get("cold_full_monai")
    was = f" (was {full['first_network_call_s']} s with all of MONAI)" if full else ""
    return (
        f"Start-up: cold `generate` process vs a warm `serve` worker, one {r['settings']['slice'][1]}x"
        f"{r['settings']['slice'][2]} slice, {common.ran_words(r.get('ran'), str(r['settings']['steps']) + ' steps')}, {r['model']}",
        f"first network call: cold **{s['cold_lean']['first_network_call_s']} s**{was}, warm **{s['warm']['first_network_call_s']} s**; "
        f"result: cold {s['cold_lean']['total_s']} s, warm {s['warm']['total_s']} s; same file: "
        f"{'yes' if r['same_result']['equal'] else 'no'}; `--help` {c['--help']['wall_s']} s, `models` {c['models']['wall_s']} s "
        f"(CPU {c['--help']['cpu_s']} s / {c['models']['cpu_s']} s)",
        f"`models`, `--help` < {TARGET_COMMAND_S:g} s; warm first call < {TARGET_WARM_FIRST_CALL_S:g} s",
        common.met(r["met"]),
    )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
