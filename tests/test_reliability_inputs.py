"""The catalogue of bad inputs, through the command line (and the engine functions it calls).

Each bad input (a file, a model folder, an output place, a memory budget) must give one error of the
project's own type whose message says what is wrong and what to do, a non-zero exit with one stderr line
and a last JSON line, and must leave every input and every existing output file exactly as it was (no
temporary files either). Where the engine alone already has a test for a case (test_volume_io.py,
test_engine_cards.py, test_engine_models.py, test_engine_synthesis_*.py), this adds the command-line side;
the napari side is in test_reliability_widgets.py.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from reliability_helpers import hidden_leftovers, listing
from tiny_models import make_tiny_model

from napari_medgen import cli
from napari_medgen.engine import memory
from napari_medgen.engine.errors import (
    GeometryMismatchError,
    InvalidVolumeError,
    LabelSchemaError,
    MedgenError,
    ModelCardError,
    ModelWeightsError,
    RegionError,
    UnsupportedFormatError,
    VolumeReadError,
    VolumeWriteError,
)
from napari_medgen.engine.io import write_volume
from napari_medgen.engine.model.card import CARD_FILE
from napari_medgen.engine.volume import Volume

SPACING = (4.0, 4.0, 5.0)
ORIGIN = (-30.0, 12.0, 4.0)
FLIP_XY = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


class CodeRan:
    """Unpickling this creates a file: the proof that code hidden in a weights file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def _labels_array() -> np.ndarray:
    array = np.zeros((3, 12, 16), np.uint8)
    array[:, 2:10, 3:13] = 3
    array[:, 4:8, 5:11] = 2
    array[:, 5:7, 7:9] = 1
    return array


def _write_mha_with_spacing(path: Path, spacing: bytes) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(_labels_array()), str(path), False)
    header = path.read_bytes()
    path.write_bytes(header.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = " + spacing))


def _write_model_folder(root: Path, name: str, change=None) -> Path:
    folder = make_tiny_model(root / name, name=name)
    if change is not None:
        raw = json.loads((folder / CARD_FILE).read_text())
        change(raw)
        (folder / CARD_FILE).write_text(json.dumps(raw))
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Good inputs, a good tiny model, and every bad input of the catalogue, each in a file or folder."""
    root = tmp_path_factory.mktemp("catalogue")
    inputs = root / "inputs"
    inputs.mkdir()
    labels = Volume(_labels_array(), SPACING, ORIGIN, FLIP_XY, {"label_map": True})
    rng = np.random.default_rng(3)
    image = labels.with_array((labels.array * 250 + rng.normal(0, 20, labels.shape)).astype(np.float32), metadata={})
    region_array = np.zeros(labels.shape, np.uint8)
    region_array[1, 4:8, 5:11] = 1
    w: dict[str, Path] = {"root": root, "inputs": inputs}
    w["labels"] = write_volume(labels, inputs / "tissue_labels.nii.gz")
    w["image"] = write_volume(image, inputs / "t1.nii.gz")
    w["region"] = write_volume(labels.with_array(region_array, metadata={}), inputs / "region.nrrd")
    # -- bad files ----------------------------------------------------------------------------------
    w["missing"] = inputs / "nowhere.nii.gz"
    (w.setdefault("empty", inputs / "empty.nii.gz")).write_bytes(b"")
    good = w["labels"].read_bytes()
    (w.setdefault("truncated", inputs / "truncated.nii.gz")).write_bytes(good[: len(good) // 2])
    (w.setdefault("corrupt", inputs / "corrupt.nii.gz")).write_bytes(np.random.default_rng(1).bytes(3000))
    damaged = write_volume(labels, inputs / "damaged.mha")  # compressed: voxels damaged mid-stream
    data = bytearray(damaged.read_bytes())
    start = data.index(b"ElementDataFile = LOCAL\n") + 24
    middle = start + (len(data) - start) // 2
    data[middle : middle + 8] = bytes(8)
    damaged.write_bytes(bytes(data))
    w["damaged"] = damaged
    (w.setdefault("unsupported", inputs / "labels.png")).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    w["four_d"] = inputs / "timeseries.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 12, 16), np.uint8), isVector=False), str(w["four_d"]))
    w["rgb"] = inputs / "photo.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 12, 16, 3), np.uint8), isVector=True), str(w["rgb"]))
    w["complex"] = inputs / "raw_mr.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 12, 16), np.complex64)), str(w["complex"]))
    for name, bad in (("nan_image", np.nan), ("inf_image", np.inf)):
        array = image.array.copy()
        array[1, 5, 5] = bad
        w[name] = inputs / f"{name}.mha"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(w[name]))
        # ITK's NIfTI reader turns these voxels into 0 without a word: the NIfTI files must be refused too.
        for ext in (".nii.gz", ".nii"):
            w[name + ext] = inputs / f"{name}_nifti{ext}"
            sitk.WriteImage(sitk.GetImageFromArray(array), str(w[name + ext]))
    w["zero_spacing"] = inputs / "flat_labels.mha"
    _write_mha_with_spacing(w["zero_spacing"], b"4 0 5")
    w["negative_spacing"] = inputs / "negative_labels.mha"
    _write_mha_with_spacing(w["negative_spacing"], b"4 -4 5")
    w["huge_header"] = inputs / "huge_labels.mha"
    w["huge_header"].write_bytes(b"ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = False\n"
                                 b"DimSize = 100000 100000 100000\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
                                 + bytes(64))
    w["labels_other_shape"] = write_volume(Volume(_labels_array()[:, :10], SPACING, ORIGIN, FLIP_XY), inputs / "small_labels.nii.gz")
    w["labels_other_grid"] = write_volume(Volume(_labels_array(), SPACING, (0.0, 0.0, 0.0), FLIP_XY), inputs / "moved_labels.nii.gz")
    outside = _labels_array()
    outside[1, 3, 3] = 9
    w["labels_outside_schema"] = write_volume(labels.with_array(outside), inputs / "labels9_labels.nii.gz")
    w["region_empty"] = write_volume(labels.with_array(np.zeros(labels.shape, np.uint8), metadata={}), inputs / "empty_region.nrrd")
    far = Volume(np.ones((2, 2, 2), np.uint8), (1.0, 1.0, 1.0), (5000.0, 5000.0, 5000.0), np.eye(3).ravel())
    w["region_outside"] = write_volume(far, inputs / "far_region.nrrd")
    w["mask_as_image"] = write_volume(labels.with_array(region_array, metadata={}), inputs / "mask_as_scan.nii.gz")
    # -- models -------------------------------------------------------------------------------------
    models = root / "models"
    w["model"] = make_tiny_model(models / "tiny-good", name="tiny-good")
    w["no_weights"] = _write_model_folder(models, "no-weights")
    (w["no_weights"] / "weights.safetensors").unlink()
    w["other_arch"] = _write_model_folder(models, "other-arch")
    shutil.copy(make_tiny_model(root / "spare" / "no-known", known_image=False) / "weights.safetensors",
                w["other_arch"] / "weights.safetensors")
    w["bad_schema"] = _write_model_folder(models, "bad-schema", lambda raw: raw.pop("license"))
    w["unknown_network"] = _write_model_folder(models, "unknown-net", lambda raw: raw["network"].update(class_name="UNet"))
    w["unknown_scheduler"] = _write_model_folder(models, "unknown-sched", lambda raw: raw["scheduler"].update(class_name="EulerScheduler"))
    w["nan_card"] = _write_model_folder(models, "nan-card", lambda raw: raw.update(spacing_mm=[float("nan"), 4.0]))
    w["monai_refuses"] = _write_model_folder(
        models, "monai-refuses", lambda raw: raw["network"]["kwargs"].update(norm_num_groups=0)
    )
    w["bad_json"] = _write_model_folder(models, "bad-json")
    (w["bad_json"] / CARD_FILE).write_text('{"name": "bad-json", ')
    w["marker"] = root / "code-ran"
    w["pickled"] = _write_model_folder(models, "pickled")
    torch.save({"network.conv_in.conv.weight": torch.zeros(1), "x": CodeRan(w["marker"])}, w["pickled"] / "weights.safetensors")
    w["pickled_plain"] = _write_model_folder(models, "pickled-plain")
    with open(w["pickled_plain"] / "weights.safetensors", "wb") as handle:
        pickle.dump({"x": CodeRan(w["marker"])}, handle)
    w["path_outside"] = _write_model_folder(models, "path-outside", lambda raw: raw.update(weights="../tiny-good/weights.safetensors"))
    w["checkpoint"] = root / "evil_checkpoint.pt"
    torch.save({"conv_in.conv.weight": torch.zeros(1), "x": CodeRan(w["marker"])}, w["checkpoint"])
    w["card"] = w["model"] / CARD_FILE
    return w


@dataclass(frozen=True)
class Case:
    """One bad input: the command line that meets it, the error it must raise, what the message says."""

    command: str
    arguments: Any  # world -> extra arguments
    error: type[MedgenError]
    match: str


def _generate(labels_key: str) -> Any:
    return lambda w: ["--labels", str(w[labels_key])]


def _inpaint(image="image", region="region", labels=None) -> Any:
    def arguments(w):
        argv = ["--image", str(w[image]), "--region", str(w[region])]
        return argv + (["--labels", str(w[labels])] if labels else [])

    return arguments


def _model(key: str) -> Any:
    return lambda w: ["--labels", str(w["labels"]), "--model", str(w[key])]


CATALOGUE = {
    # files
    "missing file": Case("generate", _generate("missing"), VolumeReadError, "no such file"),
    "empty file": Case("generate", _generate("empty"), VolumeReadError, "empty"),
    "truncated file": Case("generate", _generate("truncated"), VolumeReadError, "truncated"),
    "corrupt file": Case("generate", _generate("corrupt"), VolumeReadError, "corrupt|not a readable"),
    "damaged compressed voxels": Case("generate", _generate("damaged"), VolumeReadError, "corrupt"),
    "unsupported format": Case("generate", _generate("unsupported"), UnsupportedFormatError, "unsupported file type"),
    "4-D volume": Case("generate", _generate("four_d"), InvalidVolumeError, "4-D"),
    "RGB volume": Case("generate", _generate("rgb"), InvalidVolumeError, "components per voxel"),
    "complex volume": Case("inpaint", _inpaint(image="complex"), InvalidVolumeError, "complex"),
    "boolean mask as the scan": Case("inpaint", _inpaint(image="mask_as_image"), InvalidVolumeError, "only 0 and 1"),
    "NaN voxels": Case("inpaint", _inpaint(image="nan_image"), InvalidVolumeError, "NaN"),
    "Inf voxels": Case("inpaint", _inpaint(image="inf_image"), InvalidVolumeError, "infinite"),
    "NaN voxels in NIfTI (.nii.gz)": Case("inpaint", _inpaint(image="nan_image.nii.gz"), InvalidVolumeError, "1 NaN"),
    "Inf voxels in NIfTI (.nii)": Case("inpaint", _inpaint(image="inf_image.nii"), InvalidVolumeError, "1 NaN or infinite"),
    "zero spacing": Case("generate", _generate("zero_spacing"), InvalidVolumeError, "spacing"),
    "negative spacing": Case("generate", _generate("negative_spacing"), InvalidVolumeError, "spacing"),
    "header promising more than memory": Case("generate", _generate("huge_header"), InvalidVolumeError, "memory"),
    "label map of another shape": Case("inpaint", _inpaint(labels="labels_other_shape"), GeometryMismatchError, "shape"),
    "label map on another grid": Case("inpaint", _inpaint(labels="labels_other_grid"), GeometryMismatchError, "origin"),
    "label values outside the schema": Case("generate", _generate("labels_outside_schema"), LabelSchemaError, "9"),
    "empty inpainting region": Case("inpaint", _inpaint(region="region_empty"), RegionError, "empty"),
    "region outside the image": Case("inpaint", _inpaint(region="region_outside"), RegionError, "outside"),
    # models
    "model folder without weights": Case("generate", _model("no_weights"), ModelWeightsError, "missing"),
    "weights of another architecture": Case("generate", _model("other_arch"), ModelWeightsError, "do not fit"),
    "card failing the schema": Case("generate", _model("bad_schema"), ModelCardError, "license"),
    "unknown network": Case("generate", _model("unknown_network"), ModelCardError, "UNet"),
    "unknown scheduler": Case("generate", _model("unknown_scheduler"), ModelCardError, "EulerScheduler"),
    "card with a NaN spacing": Case("generate", _model("nan_card"), ModelCardError, "spacing_mm"),
    "card MONAI refuses": Case("generate", _model("monai_refuses"), ModelCardError, "not accepted by MONAI"),
    "card that is not JSON": Case("generate", _model("bad_json"), ModelCardError, "not valid JSON"),
    "pickled code in the weights (torch.save)": Case("generate", _model("pickled"), ModelWeightsError, "never loads pickled"),
    "pickled code in the weights (pickle)": Case("generate", _model("pickled_plain"), ModelWeightsError, "never loads pickled"),
    "card path outside its folder": Case("generate", _model("path_outside"), ModelCardError, "weights"),
    "pickled code in a checkpoint to import": Case(
        "import-weights", lambda w: ["--checkpoint", str(w["checkpoint"]), "--card", str(w["card"])], ModelWeightsError, "refusing"
    ),
}


def _argv(case: Case, w: dict[str, Path], out: Path) -> list[str]:
    argv = [case.command, *case.arguments(w), "--out", str(out)]
    if case.command != "import-weights":
        if "--model" not in argv:
            argv += ["--model", str(w["model"])]
        argv += ["--steps", "1"]
    return argv


def _handler(command: str):
    """The command's own function (args, reporter) -> paths, as the command line calls it."""
    return cli.command_module(command).run


def _run_main(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    code = cli.main([*argv, "--progress", "jsonl"] if argv[0] != "import-weights" else argv)
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return code, events, captured.err


@pytest.mark.parametrize("case", CATALOGUE.values(), ids=CATALOGUE.keys())
def test_bad_input_gives_our_error_and_changes_nothing(world, case, tmp_path, capsys):
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    out = out_folder / ("model" if case.command == "import-weights" else "result.nii.gz")
    if case.command != "import-weights":
        out.write_bytes(b"an earlier result that must survive")
    before_inputs, before_out = listing(world["root"]), listing(out_folder)
    argv = _argv(case, world, out)
    # The engine functions the command calls raise the project's own error type...
    args = cli.build_parser().parse_args(argv)
    with pytest.raises(case.error, match=case.match) as raised:
        handler = _handler(case.command)
        handler(args, cli.Reporter("none"))
    message = str(raised.value)
    # ... and the command line turns it into one stderr line, a last JSON line and exit status 1.
    code, events, err = _run_main(argv, capsys)
    assert code == cli.EXIT_ERROR
    if case.command != "import-weights":
        assert events[-1]["event"] == "error" and events[-1]["message"] == message
    assert err.count("\n") == 1 and err.startswith("napari-medgen: error: ")
    # Nothing was changed: inputs, models, the earlier output; no temporary files; no code ran.
    assert listing(world["root"]) == before_inputs
    assert listing(out_folder) == before_out
    assert hidden_leftovers(out_folder) == []
    assert not world["marker"].exists()


def test_the_catalogue_names_what_to_do(world):
    """Every message says what to do, not only what is wrong (a verb of advice, or a way out)."""
    advice = ("check", "copy", "give", "fix", "convert", "split", "extract", "remap", "resample", "paint", "draw",
              "replace", "crop", "save", "take", "open", "re-export", "put", "choose", "use", "refusing", "write", "load")
    for name, case in CATALOGUE.items():
        args = cli.build_parser().parse_args(_argv(case, world, world["root"] / "never.nii.gz"))
        handler = _handler(case.command)
        with pytest.raises(MedgenError) as raised:
            handler(args, cli.Reporter("none"))
        text = str(raised.value).lower()
        assert any(word in text for word in advice), f"{name}: {raised.value}"


# -- the memory budget and the output place ----------------------------------------------------------
def _generate_argv(w, out: Path, *extra: str) -> list[str]:
    return ["generate", "--labels", str(w["labels"]), "--model", str(w["model"]), "--out", str(out), "--steps", "1", *extra]


def _existing_outputs(folder: Path) -> Path:
    folder.mkdir()
    out = folder / "result.nii.gz"
    write_volume(Volume(np.ones((2, 3, 4), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3).ravel(), {"earlier": True}), out)
    (folder / "result_seed0.mha").write_bytes(b"an earlier variant")
    return out


def test_volume_too_large_for_the_memory_budget(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "MAX_WORK_VOXELS", 100)
    out = _existing_outputs(tmp_path / "out")
    before = listing(out.parent)
    args = cli.build_parser().parse_args(_generate_argv(world, out))
    with pytest.raises(InvalidVolumeError, match="memory budget.*NAPARI_MEDGEN_MAX_VOXELS"):
        cli.command_module("generate").run(args, cli.Reporter("none"))
    code, events, _ = _run_main(_generate_argv(world, out), capsys)
    assert code == 1 and "memory budget" in events[-1]["message"]
    assert listing(out.parent) == before


def _fail_replace(monkeypatch, code: int, when=lambda destination: True):
    real = os.replace

    def replace(source, destination, *args, **kwargs):
        # A new file moved into the folder fails; putting back what was there (a rollback) still works.
        if when(Path(destination)) and ".medgen-write-" in str(source) and ".replaced" not in str(source):
            raise OSError(code, os.strerror(code), str(destination))
        return real(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC], ids=["read-only", "full"])
def test_output_folder_read_only_or_full(world, tmp_path, capsys, monkeypatch, code):
    """As root chmod stops nothing, so the file system's refusal is simulated where the result is moved
    into place: the earlier result and its sidecar stay, no temporary file is left."""
    out = _existing_outputs(tmp_path / "out")
    before = listing(out.parent)
    _fail_replace(monkeypatch, code)
    args = cli.build_parser().parse_args(_generate_argv(world, out))
    with pytest.raises(VolumeWriteError, match="full or read-only"):
        cli.command_module("generate").run(args, cli.Reporter("none"))
    exit_code, events, err = _run_main(_generate_argv(world, out), capsys)
    assert exit_code == 1 and events[-1]["event"] == "error" and os.strerror(code) in events[-1]["message"]
    assert err.count("\n") == 1
    assert listing(out.parent) == before
    assert hidden_leftovers(out.parent) == []


def test_disk_full_while_itk_writes(world, tmp_path, capsys, monkeypatch):
    """ITK itself fails half-way through the file (what a full disk does): the old file stays."""
    out = _existing_outputs(tmp_path / "out")
    before = listing(out.parent)
    real = sitk.WriteImage

    def write_half(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise RuntimeError("ITK ERROR: NiftiImageIO: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", write_half)
    code, events, _ = _run_main(_generate_argv(world, out), capsys)
    assert code == 1 and "No space left on device" in events[-1]["message"]
    assert listing(out.parent) == before
    assert hidden_leftovers(out.parent) == []


def test_failure_on_the_second_variant_takes_back_the_first(world, tmp_path, capsys, monkeypatch):
    """Variants are written all or none: the second fails, the first (which replaced an earlier file)
    is taken back and the earlier file is there again."""
    folder = tmp_path / "out"
    out = _existing_outputs(folder).with_name("result.mha")
    before = listing(folder)
    _fail_replace(monkeypatch, errno.ENOSPC, when=lambda destination: destination.name == "result_seed1.mha")
    code, events, _ = _run_main(_generate_argv(world, out, "--variants", "2"), capsys)
    assert code == 1 and events[-1]["event"] == "error"
    assert listing(folder) == before
    assert hidden_leftovers(folder) == []


@pytest.mark.parametrize("name", ["result.png", "missing/result.nii.gz"])
def test_output_that_cannot_be_written_is_refused_before_the_run(world, tmp_path, capsys, name):
    out = tmp_path / name
    args = cli.build_parser().parse_args(_generate_argv(world, out))
    with pytest.raises((UnsupportedFormatError, VolumeWriteError)):
        cli.command_module("generate").run(args, cli.Reporter("none"))
    code, events, _ = _run_main(_generate_argv(world, out), capsys)
    assert code == 1 and not [e for e in events if e["event"] == "progress"]  # refused before any sampling
    assert list(tmp_path.iterdir()) == []  # no file, and no folder made for a missing one


def test_models_listing_survives_broken_model_folders(world, capsys, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDGEN_MODELS", str(world["model"].parent))
    assert cli.main(["models"]) == 0
    captured = capsys.readouterr()
    assert "tiny-good" in captured.out
    for name in ("bad-schema", "unknown-net", "unknown-sched", "nan-card", "bad-json"):
        assert name in captured.err  # listed as skipped, with the reason
    assert not world["marker"].exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_bad_voxels_set_after_reading_are_refused_by_the_engine(world, bad):
    """A notebook can change an array in place after the Volume was made: generate and inpaint check again at
    the start of a run, and name how many voxels are bad, before any work."""
    from napari_medgen.engine.io import read_volume
    from napari_medgen.engine.synthesis import generate, inpaint

    image, region = read_volume(world["image"]), read_volume(world["region"])
    image.array[1, 5, 5:7] = bad
    with pytest.raises(InvalidVolumeError, match="2 NaN or infinite voxels"):
        inpaint(str(world["model"]), image, region, steps=1)
    float_labels = read_volume(world["labels"])
    float_labels = float_labels.with_array(float_labels.array.astype(np.float32))
    float_labels.array[0, 0, 0] = bad
    with pytest.raises(InvalidVolumeError, match="1 NaN or infinite voxels"):
        generate(str(world["model"]), float_labels, steps=1)
