"""`napari-medgen import-bundle`: a MONAI generative bundle as a safe latent model folder.

    napari-medgen import-bundle DIR --out MODEL_DIR [--name N] [--config F [F ...]] [--scale-factor S] [--label-dict F]
                                [--ct-window LOW HIGH] [--layout ras_xyz|las_xyz] [--spacing X Y [Z]]
                                [--autoencoder-weights F] [--unet-weights F] [--controlnet-weights F]

Read as `import-maisi` reads (napari_medgen/commands/import_maisi.py): configs (JSON or YAML) as data, checkpoints
as tensors only; orientation and spacing from the bundle's training configs unless given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .importing import add_checkpoint_arguments, checkpoint_overrides, run_import
from .reporting import Reporter, add_progress_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="MONAI bundle folder (configs/*.json, models/*.pt)")
    parser.add_argument("--out", required=True, type=Path, help="model folder to create")
    parser.add_argument("--name", default=None, help="model name in the card (default: the bundle folder's name)")
    parser.add_argument("--config", nargs="+", default=None,
                        help="config file(s), relative to the folder, read together (default: configs/inference.json, "
                        "else inference.yaml, else common.yaml + infer.yaml)")
    parser.add_argument("--scale-factor", type=float, default=None,
                        help="latent scale factor, where neither the config nor the UNet checkpoint holds it")
    parser.add_argument("--label-dict", type=Path, default=None, help="JSON name -> label index (ControlNet bundles)")
    parser.add_argument("--ct-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="the bundle's images are CT scaled from this HU window to [0, 1] (default: MR, [0, 1])")
    parser.add_argument("--layout", choices=("ras_xyz", "las_xyz"), default=None,
                        help="array orientation the bundle was trained in (default: its training configs' Orientationd)")
    parser.add_argument("--spacing", type=float, nargs="+", default=None, metavar="MM",
                        help="voxel spacing it was trained at, x y [z] mm (default: its training configs' or metadata's)")
    add_checkpoint_arguments(parser, "from the config")
    add_progress_argument(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.model.importers.bundle import import_bundle

    return run_import(reporter, lambda: import_bundle(
        args.folder, args.out, name=args.name, config=args.config, scale_factor=args.scale_factor,
        label_dict=args.label_dict, ct_window=tuple(args.ct_window) if args.ct_window else None,
        weights=checkpoint_overrides(args), layout=args.layout, spacing=args.spacing,
    ))
