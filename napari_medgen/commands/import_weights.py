"""`napari-medgen import-weights`: a PyTorch state dict and a model card made into a safe model folder
(model.json + weights.safetensors); the checkpoint is read as tensors only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .reporting import Reporter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--card", required=True, type=Path, help="model.json describing the network")
    parser.add_argument("--out", required=True, type=Path, help="model folder to create")


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.errors import ModelCardError
    from ..engine.model.card import load_card, parse_card
    from ..engine.model.weights import import_state_dict

    if args.card.name == "model.json":
        card = load_card(args.card.parent)
    else:
        try:
            raw = json.loads(args.card.read_text())
        except (OSError, ValueError, RecursionError) as error:  # unreadable, not UTF-8, not JSON
            raise ModelCardError(f"{args.card}: cannot read the card ({error})") from None
        card = parse_card(raw, str(args.card))
    return [str(import_state_dict(args.checkpoint, card, args.out))]
