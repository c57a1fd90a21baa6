"""`napari-medgen import-maisi`: an NV-Generate-CTMR (MAISI) folder as a safe latent model folder.

    napari-medgen import-maisi DIR --out MODEL_DIR [--variant rflow-ct|ddpm-ct|rflow-mr|rflow-mr-brain]
                               [--modality NAME] [--name N] [--network-config F] [--environment F]
                               [--autoencoder-weights F] [--unet-weights F] [--controlnet-weights F]

The variant's own configs name its files (configs/environment_<variant>.json or
environment_maisi_diff_model_<variant>.json), modality, guidance, size and spacing; a file they leave null is never
taken from another variant. The JSON configs are read as data (allow-listed MONAI classes, literal arguments, `@`
references; a `$` expression where a value is needed is refused) and the `.pt` checkpoints as tensors only; the
model folder written (model.json + weights.safetensors) is then listed by `napari-medgen models` when it lies in a
models folder (the user folder or $NAPARI_MEDGEN_MODELS), or used by path: `generate --model MODEL_DIR`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .importing import add_checkpoint_arguments, checkpoint_overrides, run_import
from .reporting import Reporter, add_progress_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.model.importers.maisi_variants import VARIANTS

    parser.add_argument("folder", type=Path, help="NV-Generate-CTMR folder (configs/ and models/ with the .pt checkpoints)")
    parser.add_argument("--out", required=True, type=Path, help="model folder to create")
    parser.add_argument("--variant", choices=VARIANTS, default=VARIANTS[0],
                        help="which of the folder's models (default: rflow-ct, CT from a label map through its ControlNet; "
                        "rflow-mr and rflow-mr-brain generate MR without a label map)")
    parser.add_argument("--modality", default=None,
                        help="the modality by its name in configs/modality_mapping.json, e.g. mri_t2 (default: the "
                        "variant's configs/config_maisi_diff_model_<variant>.json)")
    parser.add_argument("--name", default=None, help="model name in the card (default: maisi-<variant>)")
    parser.add_argument("--network-config", default=None,
                        help="network definitions, relative to the folder (default: configs/config_network_<rflow|ddpm>.json)")
    parser.add_argument("--environment", default=None,
                        help="checkpoint paths, relative to the folder (default: the variant's environment config)")
    parser.add_argument("--modality-code", type=int, default=None, help="MAISI modality code, where no name fits")
    add_checkpoint_arguments(parser, "the environment's")
    add_progress_argument(parser)


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.model.importers.maisi import import_maisi

    return run_import(reporter, lambda: import_maisi(
        args.folder, args.out, name=args.name, network_config=args.network_config, environment=args.environment,
        modality_code=args.modality_code, variant=args.variant, modality=args.modality,
        weights=checkpoint_overrides(args),
    ))
