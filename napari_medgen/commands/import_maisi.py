"""`napari-medgen import-maisi`: an NV-Generate-CTMR (MAISI) folder as a safe latent model folder.

    napari-medgen import-maisi DIR --out MODEL_DIR [--name N] [--network-config F] [--environment F] [--modality-code C]

The JSON configs are read as data (allow-listed MONAI classes, literal arguments, `@` references; a `$`
expression where a value is needed is refused) and the `.pt` checkpoints as tensors only; the model folder
written (model.json + weights.safetensors) is then listed by `napari-medgen models` when it lies in a models
folder (the user folder or $NAPARI_MEDGEN_MODELS), or used by path: `generate --model MODEL_DIR`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .reporting import Reporter, add_progress_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    add_progress_argument(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.model.importers.maisi import import_maisi

    reporter.progress(0, 1, "reading configs and checkpoints")
    folder = import_maisi(
        args.folder, args.out, name=args.name, network_config=args.network_config,
        environment=args.environment, modality_code=args.modality_code,
    )
    reporter.progress(1, 1, "written")
    return [str(folder)]
