"""Repeated use: fifty generate runs in a row in one process with a tiny model, each result written to
disk, must not make the process grow. The resident memory after 10 and after 50 runs is printed (run
pytest with -s to see it) and must not grow by more than a few MiB between the two."""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest
import torch
from reliability_helpers import drive
from tiny_models import make_tiny_model

from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.model.loading import load_model, loaded_models, release_model
from napari_medgen.engine.synthesis import generate
from napari_medgen.engine.volume import Volume

RUNS = 50
WARM_UP = 10
# Allowed growth from run 10 to run 50: far below what keeping anything per run would cost (each run's
# result and working arrays are ~0.1 MiB, its tensors and previews more), above the allocator's noise.
ALLOWED_GROWTH_MIB = 8.0


def resident_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc, else psutil)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        psutil = pytest.importorskip("psutil")
        return psutil.Process().memory_info().rss / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the resident memory")
def test_fifty_generate_runs_do_not_grow_memory(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = make_tiny_model(tmp_path / "tiny")
        array = np.zeros((2, 16, 24), np.uint8)
        array[:, 2:14, 3:21] = 3
        array[:, 5:11, 6:18] = 2
        array[:, 7:9, 10:14] = 1
        labels = Volume(array, (4.0, 4.0, 5.0), (10.0, -20.0, 3.0), np.eye(3).ravel(), {"label_map": True})
        out = tmp_path / "result.nii.gz"
        memory: dict[int, float] = {}
        for run in range(1, RUNS + 1):
            model = load_model(folder, device="cpu")  # by folder each time, as the command line does
            results, events = drive(generate(model, labels, steps=2, seed=run, preview_every=1))
            assert events[-1].step == events[-1].total and events[-1].preview is not None
            write_volume(results[0], out)
            del results, events, model
            if run in (WARM_UP, RUNS):
                gc.collect()
                memory[run] = resident_mib()
        assert read_volume(out).metadata["provenance"]["seed"] == RUNS
        assert len([m for m in loaded_models() if m.folder == folder.resolve()]) == 1  # cached once, not per run
        growth = memory[RUNS] - memory[WARM_UP]
        with capsys.disabled():
            print(f"\nresident memory after {WARM_UP} runs: {memory[WARM_UP]:.1f} MiB, after {RUNS} runs: "
                  f"{memory[RUNS]:.1f} MiB (growth {growth:+.1f} MiB)")
        assert growth < ALLOWED_GROWTH_MIB, f"memory grew by {growth:.1f} MiB from run {WARM_UP} to run {RUNS}"
    finally:
        torch.set_num_threads(threads)
        release_model()
