"""Sampler speed on this machine: network calls (steps) per second for 64x64 and 128x128 slices.

Uses the demo model's architecture (a 2-D MONAI DiffusionModelUNet with label, inpainting and
slice-position channels) with random weights: speed does not depend on the weights. Reports the
median of several runs of a full DPM-Solver++ generation of one slice, through the engine's own
`generate`, and writes benchmarks/results/sampler_speed.json.

    python benchmarks/sampler_speed.py [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from napari_medgen.engine.model.card import ModelCard  # noqa: E402
from napari_medgen.engine.model.labels import TISSUE_SCHEMA  # noqa: E402
from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.model.networks import build_networks
from napari_medgen.engine.model.weights import save_model  # noqa: E402
from napari_medgen.engine.synthesis import generate  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402

DEMO_ARCHITECTURE = {
    "spatial_dims": 2,
    "in_channels": 15,
    "out_channels": 1,
    "channels": [32, 64, 128],
    "attention_levels": [False, False, True],
    "num_res_blocks": 2,
    "norm_num_groups": 16,
    "num_head_channels": 32,
}


def demo_sized_card() -> ModelCard:
    return ModelCard.model_validate(
        {
            "name": "speed-probe",
            "version": "0",
            "license": "BSD-3-Clause",
            "network": {"class_name": "DiffusionModelUNet", "kwargs": DEMO_ARCHITECTURE},
            "spatial_dims": 2,
            "tile_size": [128, 128],
            "spacing_mm": [2.0, 2.0],
            "normalization": {"kind": "mri_percentile"},
            "label_schema": {"classes": TISSUE_SCHEMA.to_json()},
            "conditioning": {"label_map": "channels", "known_image": True, "slice_position": True, "condition_dropout": 0.1},
            "scheduler": {"num_train_timesteps": 1000},
            "tasks": ["generate", "inpaint"],
        }
    )


def time_generation(model, size: int, steps: int) -> float:
    labels = np.zeros((1, size, size), np.uint8)
    labels[0, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 3
    label_map = Volume(labels, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    start = time.perf_counter()
    run = generate(model, label_map, steps=steps, seed=0, preview_every=0)
    for _ in run:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp()) / "speed-probe"
    card = demo_sized_card()
    torch.manual_seed(0)
    save_model(card, build_networks(card), folder)
    model = load_model(folder, device="auto")
    results = {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, device {model.device}",
               "sampler": "dpm++2m", "steps": args.steps, "sizes": {}}
    for size in (64, 128):
        time_generation(model, size, 2)  # warm-up
        times = [time_generation(model, size, args.steps) for _ in range(args.repeats)]
        median = statistics.median(times)
        results["sizes"][f"{size}x{size}"] = {
            "seconds_per_slice": round(median, 3),
            "steps_per_second": round(args.steps / median, 2),
            "runs": [round(t, 3) for t in times],
        }
        print(f"{size}x{size}: {args.steps / median:.1f} steps/s ({median:.2f} s for {args.steps} steps, median of {args.repeats})")
    out = Path(__file__).parent / "results" / "sampler_speed.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
