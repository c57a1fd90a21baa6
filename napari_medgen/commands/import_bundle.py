"""`napari-medgen import-bundle`: a MONAI generative bundle as a safe latent model folder.

    napari-medgen import-bundle DIR --out MODEL_DIR [--name N] [--config F] [--scale-factor S] [--label-dict F]
                                [--ct-window LOW HIGH] [--autoencoder-weights F] [--unet-weights F] [--controlnet-weights F]

Read as `import-maisi` reads (napari_medgen/commands/import_maisi.py): configs as data, checkpoints as tensors only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter, add_progress_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="MONAI bundle folder (configs/*.json, models/*.pt)")
    parser.add_argument("--out", required=True, type=Path, help="model folder to create")
    parser.add_argument("--name", default=None, help="model name in the card (default: the bundle folder's name)")
    parser.add_argument("--config", default="configs/inference.json", help="config file, relative to the folder")
    parser.add_argument("--scale-factor", type=float, default=None,
                        help="latent scale factor, where neither the config nor the UNet checkpoint holds it")
    parser.add_argument("--label-dict", type=Path, default=None, help="JSON name -> label index (ControlNet bundles)")
    parser.add_argument("--ct-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="the bundle's images are CT scaled from this HU window to [0, 1] (default: MR, [0, 1])")
    parser.add_argument("--autoencoder-weights", default=None, help="autoencoder checkpoint (default: from the config)")
    parser.add_argument("--unet-weights", default=None, help="diffusion UNet checkpoint (default: from the config)")
    parser.add_argument("--controlnet-weights", default=None, help="ControlNet checkpoint (default: from the config)")
    add_progress_argument(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.model.importers.bundle import import_bundle

    weights = {"autoencoder": args.autoencoder_weights, "network": args.unet_weights, "controlnet": args.controlnet_weights}
    reporter.progress(0, 1, "reading configs and checkpoints")
    folder = import_bundle(
        args.folder, args.out, name=args.name, config=args.config, scale_factor=args.scale_factor,
        label_dict=args.label_dict, ct_window=tuple(args.ct_window) if args.ct_window else None,
        weights={k: v for k, v in weights.items() if v},
    )
    reporter.progress(1, 1, "written")
    return [str(folder)]
