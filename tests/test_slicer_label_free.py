"""The 3D Slicer module's Slicer-free logic (MedGenLib) for models that take no label map: the generate command
line and serve request with the scan's grid (--like), the model's context attributes and modality, and what the
model list reads from the card about them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_slicer_logic import cli_runner, models, results  # noqa: E402 - MedGenLib, loaded as Slicer loads it


def test_label_free_generate_takes_the_scans_grid_attributes_and_modality(tmp_path):
    """A model that takes no label map: --like the scan, --attribute NAME=VALUE ..., --modality; a serve request
    carries the attributes as the object the protocol takes."""
    like, out = tmp_path / "scan.nrrd", tmp_path / "out.nrrd"
    args = cli_runner.generate_arguments(None, str(out), like=str(like), model="brain-ldm", steps=2,
                                         attribute={"age": 0.7, "gender": 1}, modality="mri_flair")
    assert "labels" not in args and args["attribute"] == {"age": 0.7, "gender": 1}
    assert cli_runner.command_line("napari-medgen", "generate", args) == [
        "napari-medgen", "generate", "--like", str(like), "--out", str(out), "--model", "brain-ldm", "--steps", "2",
        "--attribute", "age=0.7", "gender=1", "--modality", "mri_flair", "--progress", "jsonl"]
    own = cli_runner.generate_arguments(None, str(out), attribute={})  # the model's own grid and defaults
    assert list(own) == ["out"]
    assert cli_runner.command_line("n", "generate", own) == ["n", "generate", "--out", str(out), "--progress", "jsonl"]
    with pytest.raises(cli_runner.MedGenRunError, match="not both"):
        cli_runner.generate_arguments("l.nrrd", str(out), like=str(like))
    for bad in ({"age": "old"}, {"age": True}, {"a=b": 1.0}, [("age", 1.0)]):
        with pytest.raises(cli_runner.MedGenRunError, match="names to numbers"):
            cli_runner.generate_arguments(None, str(out), attribute=bad)

    # The front end's options: the model's attributes and modality become generate's.
    model = models.ModelInfo(name="m", folder=str(tmp_path / "m"), takes_label_map=False)
    sampling = results.sampling_arguments({"model": model, "steps": 2, "attributes": {"age": 0.5}, "modality": "mri_t2"})
    assert sampling["attribute"] == {"age": 0.5} and sampling["modality"] == "mri_t2"
    assert "attribute" not in results.sampling_arguments({"model": model, "attributes": None})


def test_label_free_models_and_their_conditions_come_from_the_card(tmp_path):
    folder = tmp_path / "ldm"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps({
        "modality": "MR", "conditioning": {"label_map": "none", "context": [
            {"name": "gender", "label": "Gender", "minimum": 0, "maximum": 1, "default": 0},
            {"name": "age", "label": "Age", "minimum": 0, "maximum": 1, "default": 0.1, "unit": "scaled"}]},
        "latent": {"modality_code": 10, "modalities": {"mri_t1": 9, "mri_t2": 10}},
        "label_schema": {"classes": [{"index": 0, "name": "background"}]}}))
    model = models.add_card_details(models.ModelInfo(name="ldm", folder=str(folder)))
    assert not model.takes_label_map
    assert [(a.name, a.minimum, a.maximum, a.default, a.text) for a in model.attributes] == [
        ("gender", 0.0, 1.0, 0.0, "Gender"), ("age", 0.0, 1.0, 0.1, "Age (scaled)")]
    assert model.modalities == ["mri_t1", "mri_t2"] and model.default_modality == "mri_t2"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.json").write_text(json.dumps({"conditioning": {}}))
    model = models.add_card_details(models.ModelInfo(name="plain", folder=str(plain)))
    assert model.takes_label_map and model.attributes == [] and model.modalities == [] and model.default_modality is None
