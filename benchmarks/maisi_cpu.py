"""MAISI's architecture on this CPU (issue 11): time per sampling step, decode and preview, and peak memory.

    python benchmarks/maisi_cpu.py [--sizes 128x128x64 256x256x128] [--unet-repeats 2] [--full-steps 0]
                                   [--skip-decode-above N] [--threads N] [--smoke]

A latent model with the network sizes of NV-Generate-CTMR's configs/config_network_rflow.json (autoencoder
64/128/256 channels, 4x compression, 4 latent channels; diffusion UNet and ControlNet 64/128/256/512 with
attention on the two coarsest levels, spacing and modality inputs, 8 label bit-planes), RANDOM weights (speed
does not depend on them; no MAISI weights can be downloaded here), CPU-safe settings as `import-maisi` writes
them (fp32, no float16 group norm, num_splits 1). For each output size (x, y, z), on the engine's own pieces
(`engine.synthesis.latent_networks`): one sampling step (ControlNet + UNet on the whole latent), the tiled decode of the
whole latent (the card's 24^3-latent tiles, overlap 0.25), the low-cost preview, and the peak resident memory
of each (the process's high-water mark, reset before each); a 30-step run is estimated from them. With
`--full-steps N` a whole `generate` of N steps runs at the smallest size (label map in, CT volume out).
`--skip-decode-above N`: sizes of more than N output voxels skip the decode (it can take many minutes on two cores).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SMOKE = {"sizes": ["32x32x16"], "unet_repeats": 1, "full_steps": 2, "skip_decode_above": 0}
MAISI_STEPS = 30


def maisi_card(tiny: bool = False):
    """A card with MAISI's rflow-ct architecture (or a tiny one for --smoke), CPU-safe settings."""
    from napari_medgen.engine.model.card import parse_card
    from napari_medgen.engine.model.importers.common import schema_from_label_dict

    if tiny:
        ae_channels, levels, heads, embed, groups, blocks = [8, 8, 8], [8, 16], [0, 8], [8, 8, 8], 4, 1
        attention = [False, True]
    else:
        ae_channels, levels, heads, embed, groups, blocks = [64, 128, 256], [64, 128, 256, 512], [0, 0, 32, 32], [8, 32, 64], 32, 2
        attention = [False, False, True, True]
    unet = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, "num_channels": levels, "attention_levels": attention,
            "num_head_channels": heads, "num_res_blocks": blocks, "norm_num_groups": groups, "use_flash_attention": False,
            "include_top_region_index_input": False, "include_bottom_region_index_input": False,
            "include_spacing_input": True, "num_class_embeds": 128, "resblock_updown": True, "include_fc": True}
    controlnet = {k: v for k, v in unet.items() if not k.startswith("include_") and k != "out_channels"}
    controlnet.update(conditioning_embedding_in_channels=8, conditioning_embedding_num_channels=embed, include_fc=True)
    autoencoder = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "latent_channels": 4, "num_channels": ae_channels,
                   "num_res_blocks": [blocks] * 3, "norm_num_groups": groups, "norm_eps": 1e-6,
                   "attention_levels": [False, False, False], "with_encoder_nonlocal_attn": False,
                   "with_decoder_nonlocal_attn": False, "use_checkpointing": False, "use_convtranspose": False,
                   "norm_float16": False, "num_splits": 1, "dim_split": 1}
    schema = schema_from_label_dict({"liver": 1, "spleen": 3, "right kidney": 5, "left kidney": 14, "body": 200}, "benchmark")
    return parse_card({
        "name": "maisi-architecture-random", "version": "0", "license": "benchmark only (random weights)",
        "network": {"class_name": "DiffusionModelUNetMaisi", "kwargs": unet},
        "controlnet": {"class_name": "ControlNetMaisi", "kwargs": controlnet},
        "autoencoder": {"class_name": "AutoencoderKlMaisi", "kwargs": autoencoder},
        "latent": {"scale_factor": 1.0, "latent_channels": 4, "compression": 4, "image_range": [0.0, 1.0],
                   "array_layout": "ras_xyz", "spacing_input": True, "modality_code": 1, "label_encoding": "bits",
                   "label_bits": 8, "body_label": 200, "decode_tile": [24, 24, 24], "decode_overlap": 0.25},
        "spatial_dims": 3, "tile_size": [256, 256, 128], "spacing_mm": [1.5, 1.5, 2.0], "modality": "CT",
        "normalization": {"kind": "ct_window", "window_min": -1000, "window_max": 1000, "background": -1000, "background_label": 0},
        "label_schema": schema.model_dump(), "conditioning": {"label_map": "controlnet"},
        "scheduler": {"class_name": "RFlowScheduler", "num_train_timesteps": 1000, "prediction_type": "v_prediction",
                      "use_discrete_timesteps": False, "use_timestep_transform": True},
        "tasks": ["generate", "inpaint"],
    })


def random_model(card):
    """The card's networks with random weights, in memory (a 1.2 GB weights file would only cost disk time)."""
    from napari_medgen.engine.model.loading import LoadedModel
    from napari_medgen.engine.model.networks import build_networks

    torch.manual_seed(0)
    networks = build_networks(card)
    for network in networks.values():
        common.randomize_zero_layers(network)
        network.eval().requires_grad_(False)
    return LoadedModel(card=card, folder=Path("."), source="benchmark", networks=networks, device=torch.device("cpu"),
                       dtype=torch.float32, weights_sha256="random")


def label_map(size_xyz: tuple[int, int, int]):
    """A synthetic abdomen on a (x, y, z) grid at 1.5 x 1.5 x 2 mm: body envelope, liver, spleen, kidneys."""
    from napari_medgen.engine.volume import Volume

    x, y, z = size_xyz
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, z), np.linspace(-1, 1, y), np.linspace(-1, 1, x), indexing="ij")
    labels = np.zeros((z, y, x), np.uint8)
    labels[(xx / 0.85) ** 2 + (yy / 0.65) ** 2 < 1] = 200
    labels[((xx + 0.35) / 0.3) ** 2 + ((yy + 0.1) / 0.3) ** 2 + (zz / 0.6) ** 2 < 1] = 1
    labels[((xx - 0.45) / 0.15) ** 2 + ((yy + 0.2) / 0.2) ** 2 + (zz / 0.4) ** 2 < 1] = 3
    labels[((xx + 0.25) / 0.1) ** 2 + ((yy - 0.4) / 0.12) ** 2 + ((zz + 0.2) / 0.3) ** 2 < 1] = 5
    labels[((xx - 0.25) / 0.1) ** 2 + ((yy - 0.4) / 0.12) ** 2 + ((zz + 0.2) / 0.3) ** 2 < 1] = 14
    return Volume(labels, (1.5, 1.5, 2.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def _peak(fn):
    """(seconds, peak resident memory in GiB during fn, value)."""
    common.reset_peak_rss()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, common.peak_rss_bytes() / 2**30, value


def measure_size(model, size_xyz: tuple[int, int, int], repeats: int, decode_it: bool) -> dict:
    from napari_medgen.engine.orientation import to_canonical
    from napari_medgen.engine.synthesis.latent import latent_problem
    from napari_medgen.engine.synthesis.latent_networks import LatentDenoiser, decode, preview_image, to_layout

    card = model.card
    volume = to_canonical(label_map(size_xyz))
    problem = latent_problem(card, volume, volume, None, None, None)
    latent_shape = tuple(s // 4 for s in to_layout(np.zeros(problem.grid.shape, np.uint8), "ras_xyz").shape)
    denoiser = LatentDenoiser(model, problem)
    z = torch.randn((1, 4) + latent_shape, generator=torch.Generator().manual_seed(0))
    row: dict = {"output_xyz": list(size_xyz), "latent": [4, *latent_shape]}
    steps = []
    with torch.inference_mode():
        for _ in range(repeats):
            seconds, peak, _ = _peak(lambda: denoiser(z, torch.tensor(500.0)))
            steps.append(seconds)
            row["step_peak_rss_gib"] = round(peak, 2)
            print(f"{size_xyz}: step {seconds:.1f} s, peak {peak:.2f} GiB", file=sys.stderr, flush=True)
        row["step_s"] = [round(s, 2) for s in steps]
        seconds, peak, _ = _peak(lambda: preview_image(model, z))
        row["preview_s"], row["preview_peak_rss_gib"] = round(seconds, 2), round(peak, 2)
        if decode_it:
            seconds, peak, image = _peak(lambda: decode(model, z))
            row["decode_s"], row["decode_peak_rss_gib"] = round(seconds, 2), round(peak, 2)
            assert tuple(image.shape[2:]) == tuple(4 * s for s in latent_shape)
            row["estimated_30_step_run_s"] = round(MAISI_STEPS * min(steps) + row["decode_s"], 1)
        else:
            from monai.data.utils import dense_patch_slices
            from monai.inferers.utils import _get_scan_interval

            from napari_medgen.engine.synthesis.latent_networks import decode as decode_latent

            # Not the whole decode (it would take long on two cores): one of its tiles, and how many there are.
            tile = [min(t, s) for t, s in zip(card.latent.decode_tile, latent_shape, strict=True)]
            interval = _get_scan_interval(latent_shape, tile, 3, (card.latent.decode_overlap,) * 3)  # as MONAI tiles it
            windows = len(dense_patch_slices(latent_shape, tile, interval))
            piece = z[(slice(None), slice(None)) + tuple(slice(0, t) for t in tile)]
            seconds, peak, _ = _peak(lambda: decode_latent(model, piece, tile=tile))
            row.update(decode_s=None, decode_tile_s=round(seconds, 2), decode_tile_peak_rss_gib=round(peak, 2),
                       decode_windows=windows, estimated_decode_s=round(seconds * windows, 1),
                       decode_note="whole decode skipped (--skip-decode-above): one tile timed, times the number of tiles")
            row["estimated_30_step_run_s"] = round(MAISI_STEPS * min(steps) + row["estimated_decode_s"], 1)
    print(f"{size_xyz}: {row}", file=sys.stderr, flush=True)
    return row


def full_run(model, size_xyz: tuple[int, int, int], steps: int) -> dict:
    from napari_medgen.engine.synthesis import generate

    source = label_map(size_xyz)
    seconds, peak, results = _peak(lambda: common.drive(generate(model, source, steps=steps, seed=0, preview_every=10)))
    image = results[0]
    assert image.same_grid(source)
    return {"output_xyz": list(size_xyz), "steps_asked": steps, "ran": common.ran(image), "total_s": round(seconds, 1),
            "peak_rss_gib": round(peak, 2), "hu_range": [float(image.array.min()), float(image.array.max())]}


def main(argv: list[str] | None = None) -> dict:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--sizes", nargs="+", default=["128x128x64", "256x256x128"], help="output sizes XxYxZ")
    parser.add_argument("--unet-repeats", type=int, default=2, help="sampling steps timed per size")
    parser.add_argument("--full-steps", type=int, default=0, help="a whole generate of this many steps at the first size (0: none)")
    parser.add_argument("--skip-decode-above", type=int, default=0, help="skip the decode above this many output voxels (0: never)")
    args = common.parse(parser, SMOKE, argv)
    card = maisi_card(tiny=common.smoke())
    model = random_model(card)
    parameters = {role: sum(p.numel() for p in net.parameters()) for role, net in model.networks.items()}
    rows = []
    for text in args.sizes:
        size = tuple(int(v) for v in text.lower().split("x"))
        voxels = int(np.prod(size))
        rows.append(measure_size(model, size, args.unet_repeats, not args.skip_decode_above or voxels <= args.skip_decode_above))
        result = {"machine": common.machine(), "parameters": parameters, "weights": "random", "sizes": rows}
        common.write_result("maisi_cpu", result)  # each size kept as soon as it is measured
    if args.full_steps:
        first = tuple(int(v) for v in args.sizes[0].lower().split("x"))
        result["full_run"] = full_run(model, first, args.full_steps)
    common.write_result("maisi_cpu", result)
    print(result)
    return result


if __name__ == "__main__":
    main()
