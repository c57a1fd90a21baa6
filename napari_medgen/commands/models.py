"""`napari-medgen models`: the models found (name, version, tasks, conditioning, where from), and what was skipped."""

from __future__ import annotations

import argparse
import sys

from .reporting import Reporter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments: the search path is the package's models, the user folder and $NAPARI_MEDGEN_MODELS."""


def run(args: argparse.Namespace, reporter: Reporter) -> list[str]:
    from ..engine.model.registry import list_models, model_search_path

    entries, problems = list_models()
    rows = [("NAME", "VERSION", "DIMS", "TASKS", "CONDITIONING", "SOURCE", "FOLDER")]
    for entry in entries:
        card = entry.card
        source = entry.source + (f" (shadows {len(entry.shadows)})" if entry.shadows else "")
        rows.append((card.name, card.version, f"{card.spatial_dims}-D", ",".join(card.tasks),
                     card.conditioning_summary(), source, str(entry.folder)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for entry in entries:
        for shadowed in entry.shadows:
            print(f"note: {entry.card.name} from {entry.source} shadows the one in {shadowed}")
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not entries:
        print("no models found; searched: " + ", ".join(f"{s}: {p}" for s, p in model_search_path()))
    return []
