"""A front end's run: its sampling options, and what its results are called, without Slicer.

`sampling_arguments` turns a front end's options into the command line's; `MedGenJob` keeps what a
finished run still needs (its folder, the scan, the options); `describe_results` says what each result
file becomes in the scene: a name that says it is synthetic and how it was made, and the `MedGen.*`
attributes that mark it, with the provenance napari-medgen wrote beside the file (its `<name>.json`
sidecar, which goes with the run's folder) as `MedGen.Provenance.*`. Imports nothing of Slicer, Qt or numpy.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

ATTRIBUTE_PREFIX = "MedGen."
PROVENANCE_PREFIX = ATTRIBUTE_PREFIX + "Provenance."
RESULT_EXTENSIONS = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")


@dataclass(eq=False)  # a job is itself: compared and hashed by identity
class MedGenJob:
    """One run and what it needs afterwards: its folder, the scan and the options (to name the results)."""

    command: str
    run: Any  # a cli_runner.CliRun or a serve_client.ServeRun
    folder: Any  # its command_lines.RunFolder
    scanNode: Any  # the scan whose geometry the results take
    options: dict[str, Any]


@dataclass
class ResultInfo:
    """What one result file becomes: a node name (made unique by the scene) and its attributes."""

    path: str
    seed: int
    name: str
    attributes: dict[str, str]


def sampling_arguments(options: dict[str, Any]) -> dict[str, Any]:
    """The sampling options of a run for `generate_arguments` / `inpaint_arguments`, from a front end's
    options (steps, seed, guidance, variants, device; the model, a ModelInfo, given by its folder; for a model
    that takes them, `attributes` {name: value} as `attribute` and `modality` by name)."""
    model = options.get("model")
    sampling = {key: options.get(key) for key in ("steps", "seed", "guidance", "variants", "device")}
    sampling["model"] = model.folder if model is not None else None
    if options.get("attributes"):
        sampling["attribute"] = dict(options["attributes"])
    if options.get("modality"):
        sampling["modality"] = options["modality"]
    return sampling


def result_seed(path: str, first_seed: Any, k: int) -> int:
    """The seed of the k-th result: from its file name (`..._seed7.nrrd`), else the first seed + k."""
    found = re.search(r"_seed(-?\d+)\.", os.path.basename(path))
    return int(found.group(1)) if found else int(first_seed or 0) + k


def read_provenance(path: str) -> dict[str, Any]:
    """The provenance in a result's sidecar (`result.nrrd` -> `result.json`); empty where there is none."""
    stem = path
    for extension in RESULT_EXTENSIONS:
        if path.lower().endswith(extension):
            stem = path[: -len(extension)]
            break
    try:
        with open(stem + ".json", encoding="utf-8") as file:
            sidecar = json.load(file)
    except (OSError, ValueError):
        return {}
    provenance = sidecar.get("provenance") if isinstance(sidecar, dict) else None
    return provenance if isinstance(provenance, dict) else {}


def provenance_attributes(provenance: dict[str, Any]) -> dict[str, str]:
    """One `MedGen.Provenance.<key>` attribute per provenance entry: text as it is, anything else as JSON."""
    return {PROVENANCE_PREFIX + str(key): value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in provenance.items()}


def describe_results(command: str, options: dict[str, Any], paths: list[str], scan_name: str,
                     source_id: str) -> list[ResultInfo]:
    """Name and attributes of each result of a run, e.g. `T1 inpainted lesion (synthetic, seed 3)` with
    MedGen.Synthetic = true, MedGen.Seed = 3, ...: a synthetic volume must never pass for a scan."""
    model = options.get("model")
    what = "generated" if command == "generate" else f"inpainted {options.get('region')}"
    results = []
    for k, path in enumerate(paths):
        seed = result_seed(path, options.get("seed"), k)
        attributes = {"Synthetic": "true", "Command": command, "Model": model.name if model else "",
                      "Seed": str(seed), "Steps": str(options.get("steps")),
                      "Guidance": str(options.get("guidance")), "Source": source_id}
        attributes = {ATTRIBUTE_PREFIX + key: value for key, value in attributes.items()}
        attributes.update(provenance_attributes(read_provenance(path)))
        results.append(ResultInfo(path=path, seed=seed, name=f"{scan_name} {what} (synthetic, seed {seed})",
                                  attributes=attributes))
    return results


__all__ = ["ATTRIBUTE_PREFIX", "PROVENANCE_PREFIX", "MedGenJob", "ResultInfo", "describe_results", "provenance_attributes",
           "read_provenance", "result_seed", "sampling_arguments"]
