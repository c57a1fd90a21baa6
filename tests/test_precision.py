"""`--precision auto`: bf16 where the processor runs it natively and a cached one-time measurement confirms it
pays, fp32 elsewhere or where the card forbids it; what ran is recorded; bf16 keeps the shipped model's output
within half a percent of the brain's intensity range.

The processor is mocked (its flags and the measurement), so these run the same on any CI machine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reliability_helpers import drive
from tiny_models import make_tiny_model

from napari_medgen._paths import sample_dir
from napari_medgen.engine.errors import DeviceError
from napari_medgen.engine.io import read_volume
from napari_medgen.engine.model import precision
from napari_medgen.engine.model.device import choose_precision
from napari_medgen.engine.model.loading import load_model, release_model
from napari_medgen.engine.orientation import to_canonical
from napari_medgen.engine.synthesis import generate

INTEL_AMX = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AMD_ZEN2 = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n"
CPU = torch.device("cpu")


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A machine whose CPU and bf16 measurement the test sets: (set_cpu, measurements made)."""
    monkeypatch.delenv(precision.AUTO_PRECISION_ENV, raising=False)
    monkeypatch.setenv(precision.CACHE_DIR_ENV, str(tmp_path / "cache"))
    made: list[precision.Bf16Measurement] = []
    speedup = {"value": 2.0}

    def measure(repeats: int = 3) -> precision.Bf16Measurement:
        made.append(precision.Bf16Measurement(precision.cpu_info().describe(), torch.__version__, 1.0, 1.0 / speedup["value"]))
        return made[-1]

    monkeypatch.setattr(precision, "measure_bf16", measure)

    def set_cpu(text: str, bf16_speedup: float = 2.0) -> None:
        monkeypatch.setattr(precision, "cpu_info", lambda cpuinfo_text=None, _text=text: _parse(_text))
        speedup["value"] = bf16_speedup

    return set_cpu, made


_parse = precision.cpu_info  # the real parser, on the given text


def test_cpu_flags_are_read_from_cpuinfo():
    intel, amd, arm = _parse(INTEL_AMX), _parse(AMD_ZEN2), _parse(ARM)
    assert intel.model.startswith("Intel") and intel.native_bf16 and "amx_bf16" in intel.describe()
    assert amd.flags == ("avx2",) and not amd.native_bf16
    assert arm.flags == () and not arm.native_bf16


def test_auto_is_bf16_only_where_native_and_measured_faster(machine):
    set_cpu, made = machine
    set_cpu(AMD_ZEN2)
    assert choose_precision("auto", CPU)[0] == "fp32" and made == []  # no native bf16: not even measured
    set_cpu(INTEL_AMX, bf16_speedup=2.0)
    name, why = choose_precision("auto", CPU)
    assert name == "bf16" and "2.0x" in why
    set_cpu(INTEL_AMX, bf16_speedup=1.05)  # same CPU: the cached measurement (2.0x) is used
    assert choose_precision("auto", CPU)[0] == "bf16" and len(made) == 1
    assert choose_precision("fp32", CPU) == ("fp32", "asked for")
    with pytest.raises(DeviceError, match="auto, fp32, fp16 or bf16"):
        choose_precision("half", CPU)


def test_a_measurement_that_shows_no_gain_keeps_fp32(machine):
    set_cpu, made = machine
    set_cpu(INTEL_AMX, bf16_speedup=1.05)
    name, why = choose_precision("auto", CPU)
    assert name == "fp32" and "1.05x" in why and len(made) == 1


def test_the_measurement_is_cached_per_cpu_and_a_broken_cache_is_measured_again(machine, tmp_path):
    set_cpu, made = machine
    set_cpu(INTEL_AMX)
    precision.bf16_measurement()
    precision.bf16_measurement()
    assert len(made) == 1 and (tmp_path / "cache" / "cpu_precision.json").is_file()
    set_cpu("model name\t: Another CPU\nflags\t\t: avx512_bf16\n")  # another machine sharing the home folder
    precision.bf16_measurement()
    assert len(made) == 2
    (tmp_path / "cache" / "cpu_precision.json").write_text("{not json")
    precision.bf16_measurement()
    assert len(made) == 3


def test_the_card_can_forbid_reduced_precision_and_the_environment_can_pin_it(machine, monkeypatch, tmp_path):
    set_cpu, _ = machine
    set_cpu(INTEL_AMX)
    folder = make_tiny_model(tmp_path / "exact", name="tiny-exact")
    card_file = folder / "model.json"
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), "reduced_precision": False}))
    exact = load_model(folder, device="cpu")
    assert exact.dtype == torch.float32 and "asks for fp32" in exact.extra["precision"]["why"]
    monkeypatch.setenv(precision.AUTO_PRECISION_ENV, "fp32")
    assert choose_precision("auto", CPU) == ("fp32", f"{precision.AUTO_PRECISION_ENV}=fp32")
    release_model(exact)


def test_auto_loads_bf16_and_the_result_says_so(machine, tmp_path):
    set_cpu, _ = machine
    set_cpu(INTEL_AMX)
    model = load_model(make_tiny_model(tmp_path / "tiny"), device="cpu")
    assert model.dtype == torch.bfloat16
    labels = np.zeros((1, 16, 16), np.uint8)
    labels[0, 4:12, 4:12] = 3
    from napari_medgen.engine.volume import Volume

    label_map = Volume(labels, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    (result,), _ = drive(generate(model, label_map, steps=2))
    record = result.metadata["provenance"]
    assert record["precision"] == "bfloat16" and "native bf16" in record["precision_why"]
    assert result.array.dtype == np.float32 and np.isfinite(result.array).all()
    release_model(model)


def test_bf16_keeps_the_fast_models_output_within_half_a_percent_of_the_brain_range():
    """The shipped 4-step model on 4 slices of the sample map, fp32 against bf16, same seed."""
    labels = to_canonical(read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz"))
    middle = labels.shape[0] // 2
    results = {}
    for name in ("fp32", "bf16"):
        model = load_model("brain-t1-demo-fast", device="cpu", precision=name)
        (results[name],), _ = drive(generate(model, labels, seed=2, preview_every=0, slice_range=(middle, middle + 4)))
    brain = labels.array[middle : middle + 4] > 0
    fp32, bf16 = results["fp32"].array[brain], results["bf16"].array[brain]
    brain_range = np.percentile(fp32, 99) - np.percentile(fp32, 1)
    difference = np.abs(bf16 - fp32) / brain_range
    assert difference.mean() < 0.005, difference.mean()
    assert np.percentile(difference, 99) < 0.03, np.percentile(difference, 99)
