"""The command line end to end: sample brain + a tiny model, JSON-lines progress, clean failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model  # noqa: E402

from napari_medgen._paths import sample_dir  # noqa: E402
from napari_medgen.cli import PROTOCOL_VERSION, main  # noqa: E402
from napari_medgen.engine.io import read_volume, write_volume  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402


def _crop(volume: Volume, z0: int, z1: int) -> Volume:
    origin = volume.index_to_physical(np.array([0.0, 0.0, z0]))
    return Volume(volume.array[z0:z1].copy(), volume.spacing, tuple(origin), volume.direction, dict(volume.metadata))


@pytest.fixture(scope="module")
def brain_files(tmp_path_factory) -> dict[str, Path]:
    """A few axial slices of the shipped sample brain, with its tissue labels and a region."""
    folder = tmp_path_factory.mktemp("brain")
    t1 = _crop(read_volume(sample_dir() / "mni152_t1_2mm.nii.gz"), 44, 48)
    labels = _crop(read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz"), 44, 48)
    region = labels.with_array(np.zeros(labels.shape, np.uint8), metadata={})
    region.array[1:3, 50:60, 40:52] = 1
    paths = {"t1": folder / "t1.nii.gz", "labels": folder / "tissue_labels.nii.gz", "region": folder / "region.nrrd"}
    write_volume(t1, paths["t1"])
    write_volume(labels, paths["labels"])
    write_volume(region, paths["region"])
    paths["model"] = make_tiny_model(folder / "tiny")
    return paths


def _events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_generate_writes_result_in_label_geometry_with_jsonl_progress(brain_files, tmp_path, capsys):
    out = tmp_path / "synthetic.nii.gz"
    code = main(["generate", "--labels", str(brain_files["labels"]), "--out", str(out), "--model", str(brain_files["model"]),
                 "--steps", "3", "--seed", "7", "--progress", "jsonl"])
    assert code == 0
    events = _events(capsys.readouterr().out)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["step"] == progress[-1]["total"]
    assert events[-1] == {"event": "result", "protocol": PROTOCOL_VERSION, "paths": [str(out)]}
    result = read_volume(out)
    labels = read_volume(brain_files["labels"])
    assert result.same_grid(labels)
    assert result.metadata["synthetic"] is True
    assert result.metadata["provenance"]["seed"] == 7


def test_generate_variants_are_named_by_seed(brain_files, tmp_path, capsys):
    out = tmp_path / "variant.mha"
    assert main(["generate", "--labels", str(brain_files["labels"]), "--out", str(out), "--model", str(brain_files["model"]),
                 "--steps", "2", "--seed", "3", "--variants", "2", "--progress", "none"]) == 0
    first, second = tmp_path / "variant_seed3.mha", tmp_path / "variant_seed4.mha"
    assert first.exists() and second.exists()
    assert not np.array_equal(read_volume(first).array, read_volume(second).array)


def test_inpaint_keeps_voxels_outside_region(brain_files, tmp_path, capsys):
    out = tmp_path / "inpainted.nii.gz"
    assert main(["inpaint", "--image", str(brain_files["t1"]), "--region", str(brain_files["region"]),
                 "--labels", str(brain_files["labels"]), "--out", str(out), "--model", str(brain_files["model"]),
                 "--steps", "3", "--progress", "none"]) == 0
    image, region, result = (read_volume(brain_files[k]) for k in ("t1", "region")), None, read_volume(out)
    image, region = read_volume(brain_files["t1"]), read_volume(brain_files["region"])
    outside = region.array == 0
    assert result.array.dtype == image.array.dtype
    assert np.array_equal(result.array[outside], image.array[outside])
    assert not np.array_equal(result.array[~outside], image.array[~outside])
    assert result.same_grid(image)


def test_error_is_one_line_and_nothing_is_written(brain_files, tmp_path, capsys):
    bad_labels = tmp_path / "bad_labels.nii.gz"
    labels = read_volume(brain_files["labels"])
    write_volume(labels.with_array(np.where(labels.array == 3, 9, labels.array).astype(np.uint8)), bad_labels)
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"precious")
    code = main(["generate", "--labels", str(bad_labels), "--out", str(out), "--model", str(brain_files["model"]),
                 "--steps", "2", "--progress", "jsonl"])
    captured = capsys.readouterr()
    assert code == 1
    assert _events(captured.out)[-1]["event"] == "error"
    assert "9" in captured.err and captured.err.count("\n") == 1
    assert out.read_bytes() == b"precious"


def test_missing_input_file_exits_nonzero_in_a_subprocess(tmp_path):
    """As another front end would run it: a process, a non-zero exit, a JSON error line."""
    run = subprocess.run(
        [sys.executable, "-m", "napari_medgen.cli", "generate", "--labels", str(tmp_path / "nope.nii.gz"),
         "--out", str(tmp_path / "o.nii.gz"), "--progress", "jsonl"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert run.returncode == 1
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and "nope.nii.gz" in last["message"]
    assert not (tmp_path / "o.nii.gz").exists()


def test_models_lists_environment_models(brain_files, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_MEDGEN_MODELS", str(brain_files["model"].parent))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-2d" in out and "environment" in out


def test_jsonl_events_match_the_documented_protocol(brain_files, tmp_path, capsys):
    """The one-shot events (progress, result, error) have exactly the fields docs/protocol.md lists, and no id."""
    from test_serve import check_events

    out = tmp_path / "documented.nii.gz"
    assert main(["generate", "--labels", str(brain_files["labels"]), "--out", str(out), "--model", str(brain_files["model"]),
                 "--steps", "2", "--progress", "jsonl"]) == 0
    assert main(["generate", "--labels", str(tmp_path / "missing.nii.gz"), "--out", str(out), "--model",
                 str(brain_files["model"]), "--progress", "jsonl"]) == 1
    events = _events(capsys.readouterr().out)
    assert [e["event"] for e in events] == ["progress", "progress", "result", "error"]
    check_events(events, serve=False)


def test_help_lists_every_command_and_builds_only_the_asked_one(capsys):
    from napari_medgen.cli import COMMANDS, build_parser

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in COMMANDS)
    only = build_parser("models")
    with pytest.raises(SystemExit):  # generate's arguments were not built: its required options are unknown
        only.parse_args(["models", "--labels", "x"])
    capsys.readouterr()


def test_segment_writes_a_label_map_on_the_scans_grid_that_generate_accepts(brain_files, tmp_path, capsys):
    """`segment` on a coarse copy of the sample T1 (4 mm, shifted origin): the label map lands on the scan's
    exact grid in the model's schema, roughly where the true tissues are, and `generate` takes it."""
    import SimpleITK as sitk

    t1 = read_volume(sample_dir() / "mni152_t1_2mm.nii.gz").to_sitk()
    truth = read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz").to_sitk()
    size = [int(round(s * sp / 4.0)) for s, sp in zip(t1.GetSize(), t1.GetSpacing(), strict=True)]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing((4.0, 4.0, 4.0))
    reference.SetOrigin(tuple(o + 3.0 for o in t1.GetOrigin()))
    reference.SetDirection(t1.GetDirection())
    scan = Volume.from_sitk(sitk.Resample(t1, reference, sitk.Transform(), sitk.sitkLinear, 0.0))
    scan_path = write_volume(scan, tmp_path / "coarse_t1.nii.gz")
    out = tmp_path / "coarse_t1_labels.nii.gz"
    code = main(["segment", "--image", str(scan_path), "--out", str(out), "--progress", "jsonl"])
    events = _events(capsys.readouterr().out)
    assert code == 0, events[-1]
    assert events[-1]["event"] == "result" and events[-1]["paths"] == [str(out)]
    labels = read_volume(out)
    assert labels.same_grid(scan) and labels.is_label_map
    assert set(np.unique(labels.array)) <= {0, 1, 2, 3}
    true = sitk.GetArrayFromImage(sitk.Resample(truth, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    for tissue in (2, 3):  # grey and white matter, roughly in place at 4 mm
        a, b = labels.array == tissue, true == tissue
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.6
    synthetic = tmp_path / "synthetic.nii.gz"
    assert main(["generate", "--labels", str(out), "--out", str(synthetic), "--model", str(brain_files["model"]),
                 "--steps", "1", "--progress", "none"]) == 0
    assert read_volume(synthetic).same_grid(scan)
