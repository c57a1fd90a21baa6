"""Batch synthesis throughput: cases per minute with 1 and 2 dask workers, and the distributed path's overhead.

    python benchmarks/batch_scaling.py [--cases 4] [--slices 12] [--steps 4] [--smoke]

The same cases (the sample brain's label map cut to its `--slices` central axial slices, augmented
elastic + flip, brain-t1-demo, `--steps` DPM++ steps) are made three ways into fresh folders: a plain loop
in this process (`workers=0`: the model loaded once, torch on every core), a LocalCluster of 1 worker
(torch on every core) and of 2 workers (half the cores each). Wall time end to end, cluster start-up
and the workers' imports and model loads included: what a user waits for. The overhead of the
distributed path is the 1-worker time over the loop's (same cores, same cases). Per-case seconds inside
the workers are also kept (`case_seconds`). Writes benchmarks/results/batch_scaling.json.
`--smoke`: the tiny random-weight model, 2 cases of 2 slices, 1 step, the plain loop only (a check that it runs;
a cluster's start-up would cost more than the rest of the smoke run).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SMOKE = {"cases": 2, "slices": 2, "steps": 1}


def slab(count: int):
    """The sample label map's `count` central axial slices, on their own part of its grid."""
    from napari_medgen.engine.volume import Volume

    _, labels = common.sample_brain()
    z0 = labels.shape[0] // 2 - count // 2
    origin = labels.index_to_physical(np.array([0.0, 0.0, float(z0)]))
    return Volume(np.ascontiguousarray(labels.array[z0 : z0 + count]), labels.spacing, tuple(origin), labels.direction)


def run(label_map, model, cases: int, steps: int, workers: int, folder: Path) -> dict:
    from napari_medgen.engine.batch import run_synthesis, synthesize_dataset
    from napari_medgen.engine.batch.layout import image_path
    from napari_medgen.engine.io import read_volume
    from napari_medgen.engine.synthesis.options import SamplingOptions

    start = time.perf_counter()
    summary = run_synthesis(synthesize_dataset([label_map], folder, cases, model=model, options=SamplingOptions(sampler="dpm++2m", steps=steps),
                                               augment="elastic,flip", workers=workers, device="cpu"))
    wall = time.perf_counter() - start
    if summary.failed or len(summary.done) != cases:
        raise RuntimeError(f"{workers} workers: {summary.line()} {summary.failed}")
    seconds = [r.seconds for r in summary.results if r.status == "done"]
    # What the run cost beyond the cases' own work (cluster and worker start-up, scheduling, transfers):
    # the wall time less the case seconds each process spent (the loop's first case includes its model load).
    outside = wall - sum(seconds) / max(1, workers)
    ran = [common.ran(read_volume(image_path(folder, case))) for case in sorted(summary.done)]  # each case's provenance
    return {"workers": workers, "where": summary.where, "wall_s": round(wall, 2), "cases_per_minute": round(60 * cases / wall, 3),
            "case_seconds": [round(s, 2) for s in seconds], "outside_cases_s": round(outside, 2), "models_loaded": summary.models_loaded,
            "torch_threads_per_process": sorted({r.torch_threads for r in summary.results if r.status == "done"}),
            "ran": sorted({common.ran_words({k: v for k, v in r.items() if k != "network_calls"}) for r in ran})}


def main(argv: list[str] | None = None) -> dict:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--steps", type=int, default=4)
    args = common.parse(parser, SMOKE, argv)
    if common.smoke():
        model, what = str(common.random_weights_folder(common.tiny_demo_card())), "tiny random weights"
    else:
        model, what = common.DEMO, "brain-t1-demo (trained)" if common.trained_demo_available() else "brain-t1-demo"
    label_map = slab(args.slices)
    root = Path(tempfile.mkdtemp(prefix="medgen-batch-scaling-"))
    rows = []
    try:
        for workers in ((0,) if common.smoke() else (0, 1, 2)):
            rows.append(run(label_map, model, args.cases, args.steps, workers, root / f"w{workers}"))
            print(f"{rows[-1]['where']}: {rows[-1]['wall_s']} s, {rows[-1]['cases_per_minute']} cases/min", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    loop = rows[0]
    one = next((r for r in rows if r["workers"] == 1), None)
    result = {
        "what": "batch synthesis: cases per minute, plain loop vs LocalCluster of 1 and 2 workers, same cases",
        "machine": common.machine(),
        "model": what,
        "cases": args.cases,
        "label_map": f"sample tissue labels, {args.slices} central axial slices {list(label_map.shape)} at 2 mm",
        "asked": {"sampler": "dpm++2m", "steps": args.steps},
        "ran": sorted({words for row in rows for words in row["ran"]}),
        "rows": rows,
        "distributed_overhead_1_worker": round(one["wall_s"] / loop["wall_s"] - 1, 3) if one else None,
        "speedup_2_vs_1_worker": round(one["wall_s"] / rows[-1]["wall_s"], 3) if len(rows) > 2 else None,
        "cpu_count": os.cpu_count(),
    }
    common.write_result("batch_scaling", result)
    common.update_doc("batch-scaling-table", readme_table(result))
    print(result)
    return result


def readme_table(result: dict) -> str:
    rows = [("| Run | Torch threads per process | Wall time | Cases per minute | Seconds per case in its process "
             "(the first includes the model load) | Wall time beyond the cases' own work |"),
            "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        name = {0: "plain loop in one process", 1: "LocalCluster, 1 worker", 2: "LocalCluster, 2 workers"}[row["workers"]]
        outside = row.get("outside_cases_s", row["wall_s"] - sum(row["case_seconds"]) / max(1, row["workers"]))
        rows.append(f"| {name} | {', '.join(map(str, row.get('torch_threads_per_process', [])))} | {row['wall_s']:.1f} s | "
                    f"{row['cases_per_minute']:.2f} | {', '.join(f'{s:.1f}' for s in row['case_seconds'])} | {outside:.1f} s |")
    rows.append("")
    ran = "; ".join(result["ran"]) if "ran" in result else f"{result['sampler']} {result['steps']} steps asked (what ran was not recorded)"
    rows.append(f"{result['cases']} cases of the {result['label_map']}, {ran}, "
                f"{result['model']}"
                + (f". Distributed overhead (1 worker over the loop, same cores): {100 * result['distributed_overhead_1_worker']:.0f} %"
                   if result.get("distributed_overhead_1_worker") is not None else "")
                + (f"; 2 workers vs 1: {result['speedup_2_vs_1_worker']:.2f}x" if result.get("speedup_2_vs_1_worker") else "")
                + f". Machine: {common.machine_line(result['machine'])}; "
                f"{common.machine_record.disturbance(result['machine']) or result['machine']['note']}.")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
