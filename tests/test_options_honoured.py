"""What a run reports is what ran: an option the model cannot honour is refused before any work (engine,
command line, serve, batch) or switched off in the widget, and the provenance records the options as
applied (guidance, sampler, steps, network calls, fill, device, precision)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from reliability_helpers import drive  # noqa: E402
from tiny_models import make_tiny_model  # noqa: E402

from napari_medgen.cli import main, run_command  # noqa: E402
from napari_medgen.engine.errors import OptionNotSupportedError  # noqa: E402
from napari_medgen.engine.io import write_volume  # noqa: E402
from napari_medgen.engine.model.loading import load_model  # noqa: E402
from napari_medgen.engine.synthesis import generate, inpaint  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402
from napari_medgen.serve import Worker  # noqa: E402


def _label_map() -> Volume:
    labels = np.zeros((2, 16, 16), np.uint8)
    labels[:, 3:13, 3:13] = 3
    labels[:, 6:10, 6:10] = 2
    return Volume(labels, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0),
                  direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), metadata={"label_map": True})


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "unguided": make_tiny_model(root / "unguided", name="tiny-unguided", condition_dropout=0.0),
        "guided": make_tiny_model(root / "guided", name="tiny-guided", condition_dropout=0.2),
    }


def test_guidance_the_model_cannot_apply_is_refused_and_left_out_records_one(folders):
    model = load_model(folders["unguided"], device="cpu")
    with pytest.raises(OptionNotSupportedError, match="cannot apply classifier-free guidance 3.*give 1"):
        generate(model, _label_map(), steps=2, guidance=3.0)
    for asked in (None, 1.0):
        results, _ = drive(generate(model, _label_map(), steps=2, guidance=asked))
        assert results[0].metadata["provenance"]["guidance"] == 1.0


def test_provenance_records_what_ran(folders):
    model = load_model(folders["guided"], device="cpu")
    results, events = drive(generate(model, _label_map(), steps=3, sampler="ddim", guidance=3.0, variants=2))
    for record in (result.metadata["provenance"] for result in results):
        assert record["guidance"] == 3.0 and record["sampler"] == "ddim" and record["steps"] == 3
        assert record["network_calls"] * 2 == len(events)  # every call is one progress event
        assert record["device"] == "cpu" and record["precision"] == "float32"
    # An inpainting records its fill as settled ("auto" -> the mean or a draw) and the calls it took.
    image = Volume(np.random.default_rng(0).normal(500, 50, (2, 16, 16)).astype(np.float32), spacing=(2.0, 2.0, 2.0),
                   origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    region = np.zeros((2, 16, 16), np.uint8)
    region[:, 6:9, 6:9] = 1
    results, events = drive(inpaint(model, image, image.with_array(region), None, steps=3))
    record = results[0].metadata["provenance"]
    assert record["inpaint_estimate"] in ("mean", "sample") and record["network_calls"] == len(events)


def test_command_line_and_serve_refuse_it_in_one_line_and_write_nothing(folders, tmp_path, capsys):
    labels = write_volume(_label_map(), tmp_path / "labels.nii.gz")
    out = tmp_path / "out.nii.gz"
    argv = ["generate", "--labels", str(labels), "--out", str(out), "--model", str(folders["unguided"]),
            "--steps", "2", "--guidance", "3", "--progress", "jsonl"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "cannot apply classifier-free guidance" in captured.err
    assert json.loads(captured.out.splitlines()[-1])["event"] == "error"
    assert not out.exists()
    request = {"id": "r1", "command": "generate",
               "args": {"labels": str(labels), "out": str(out), "model": str(folders["unguided"]), "guidance": 3}}
    stdout = io.StringIO()
    assert Worker(io.StringIO(json.dumps(request) + "\n"), stdout, run_command).run() == 0
    last = [json.loads(line) for line in stdout.getvalue().splitlines() if '"r1"' in line][-1]
    assert last["event"] == "error" and "cannot apply classifier-free guidance" in last["message"]
    assert not out.exists()


def test_batch_refuses_it_before_any_case(folders, tmp_path):
    from napari_medgen.engine.batch.distributed import synthesize_dataset
    from napari_medgen.engine.synthesis.options import SamplingOptions

    labels = write_volume(_label_map(), tmp_path / "labels.nii.gz")
    with pytest.raises(OptionNotSupportedError):
        next(synthesize_dataset([labels], tmp_path / "set", 2, model=str(folders["unguided"]),
                                options=SamplingOptions(steps=2, guidance=3.0), workers=0))
    assert not (tmp_path / "set").exists() or not any((tmp_path / "set").rglob("*.nii.gz"))
