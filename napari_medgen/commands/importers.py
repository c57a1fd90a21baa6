"""`napari-medgen import-maisi` and `import-bundle`: latent models from elsewhere as safe model folders.

    napari-medgen import-maisi DIR --out MODEL_DIR [--name N] [--network-config F] [--environment F] [--modality-code C]
    napari-medgen import-bundle DIR --out MODEL_DIR [--name N] [--config F] [--scale-factor S] [--label-dict F]
                                [--ct-window LOW HIGH] [--autoencoder-weights F] [--unet-weights F] [--controlnet-weights F]

The JSON configs are read as data (allow-listed MONAI classes, literal arguments, `@` references; a `$`
expression where a value is needed is refused) and the `.pt` checkpoints as tensors only; the model folder
written (model.json + weights.safetensors) is then listed by `napari-medgen models` when it lies in a models
folder (the user folder or $NAPARI_MEDGEN_MODELS), or used by path: `generate --model MODEL_DIR`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_maisi_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.model.importers.maisi import DEFAULT_ENVIRONMENT, DEFAULT_NETWORK_CONFIG

    parser.add_argument("folder", type=Path, help="NV-Generate-CTMR folder (configs/ and models/ with the .pt checkpoints)")
    parser.add_argument("--out", required=True, type=Path, help="model folder to create")
    parser.add_argument("--name", default="maisi-ct-rflow", help="model name in the card (default: maisi-ct-rflow)")
    parser.add_argument("--network-config", default=DEFAULT_NETWORK_CONFIG,
                        help=f"network definitions, relative to the folder (default: {DEFAULT_NETWORK_CONFIG})")
    parser.add_argument("--environment", default=DEFAULT_ENVIRONMENT,
                        help=f"checkpoint paths, relative to the folder (default: {DEFAULT_ENVIRONMENT})")
    parser.add_argument("--modality-code", type=int, default=None,
                        help="MAISI modality code (1 = CT; default: the folder's configs/config_infer.json, else 1)")
    parser.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto")


def add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--progress", choices=("auto", "bar", "jsonl", "none"), default="auto")


def run_maisi(args: argparse.Namespace, reporter: Any) -> list[str]:
    from ..engine.model.importers.maisi import import_maisi

    reporter.progress(0, 1, "reading configs and checkpoints")
    folder = import_maisi(
        args.folder, args.out, name=args.name, network_config=args.network_config,
        environment=args.environment, modality_code=args.modality_code,
    )
    reporter.progress(1, 1, "written")
    return [str(folder)]


def run_bundle(args: argparse.Namespace, reporter: Any) -> list[str]:
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
