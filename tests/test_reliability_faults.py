"""Faults during a run, in the engine: cancel at any step, an exception inside the network, running out of
GPU (or CPU) memory. After each the inputs are as they were and a new run works (and gives the same image).

No Qt. The command-line and widget sides of the same faults are in test_reliability_cli_faults.py and
test_reliability_widgets.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reliability_helpers import (
    FaultyNetwork,
    assert_volume_unchanged,
    cuda_out_of_memory,
    drive,
    on_fake_accelerator,
    runtime_out_of_memory,
    volume_copy,
)
from engine_fixtures import one_thread  # noqa: F401 (fixture)
from tiny_models import make_tiny_model

from napari_medgen.engine.errors import DeviceError, MedgenError
from napari_medgen.engine.memory import is_out_of_memory as _is_out_of_memory
from napari_medgen.engine.model.loading import LoadedModel, load_model, release_model
from napari_medgen.engine.synthesis import generate, inpaint
from napari_medgen.engine.volume import Volume

SPACING = (4.0, 4.0, 4.0)
ORIGIN = (-20.0, 11.0, 3.5)
FLIP_XY = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("fault-models")
    folders = {
        "2d": make_tiny_model(root / "tiny-2d"),
        "repaint": make_tiny_model(root / "repaint", name="tiny-repaint", known_image=False),
        "3d": make_tiny_model(root / "tiny-3d", name="tiny-3d", spatial_dims=3),
    }
    loaded = {key: load_model(folder, device="cpu") for key, folder in folders.items()}
    yield loaded
    for model in loaded.values():
        release_model(model)


def labels(slices: int = 4) -> Volume:
    array = np.zeros((slices, 12, 16), np.uint8)
    array[:, 2:10, 3:13] = 3
    array[:, 4:8, 5:11] = 2
    array[:, 5:7, 7:9] = 1
    return Volume(array, SPACING, ORIGIN, FLIP_XY, {"label_map": True})


def image() -> Volume:
    rng = np.random.default_rng(5)
    return Volume(rng.uniform(0, 800, (4, 12, 16)).astype(np.float32), SPACING, ORIGIN, FLIP_XY, {"modality": "MR"})


def region(like: Volume) -> Volume:
    array = np.zeros(like.shape, np.uint8)
    array[1:3, 3:9, 4:12] = 1
    return like.with_array(array, metadata={})


# -- cancel at any step ----------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["generate", "inpaint", "repaint"])
def test_cancel_at_every_step_changes_nothing_and_a_new_run_matches(models, task):
    """Close the run before its first event and after each event (the last one included): the network is not called again, the inputs are untouched, and a new run gives the image a
    run that was never cancelled gives."""
    label_map, scan = labels(), image()
    model = models["repaint" if task == "repaint" else "2d"]

    def start():
        options = {"steps": 3, "seed": 4, "batch_size": 2, "variants": 2, "preview_every": 2, "jump_length": 1,
                   "jump_count": 2}
        if task == "generate":
            return generate(model, label_map, **options)
        return inpaint(model, scan, region(scan), **options)

    before_labels, before_image = volume_copy(label_map), volume_copy(scan)
    reference, events = drive(start())
    total = len(events)
    assert total == events[-1].total > 4
    for k in range(total + 1):
        with FaultyNetwork(model, fail_calls=set()) as counter:
            run = start()
            for _ in range(k):
                next(run)
            run.close()
            assert counter.calls == k  # stopped before the next network call
        assert not torch.is_inference_mode_enabled()
        assert_volume_unchanged(label_map, before_labels)
        assert_volume_unchanged(scan, before_image)
    again, _ = drive(start())
    for a, b in zip(again, reference, strict=True):
        np.testing.assert_array_equal(a.array, b.array)


def test_between_events_the_caller_is_not_in_inference_mode(models):
    """The caller's own code between two events runs normally (tensors it makes can be trained on)."""
    run = generate(models["2d"], labels(), steps=3, seed=0)
    next(run)
    assert not torch.is_inference_mode_enabled()
    weight = torch.ones(2, requires_grad=True)
    (weight * 2).sum().backward()
    run.close()


def test_cancel_at_every_step_of_a_3d_run(models):
    label_map = labels(slices=8)
    reference, events = drive(generate(models["3d"], label_map, steps=3, seed=1))
    for k in range(len(events) + 1):
        run = generate(models["3d"], label_map, steps=3, seed=1)
        for _ in range(k):
            next(run)
        run.close()
    again, _ = drive(generate(models["3d"], label_map, steps=3, seed=1))
    np.testing.assert_array_equal(again[0].array, reference[0].array)


# -- an exception inside the network ---------------------------------------------------------------
@pytest.mark.parametrize("call", [1, 2, 3])
@pytest.mark.parametrize("task", ["generate", "inpaint"])
def test_exception_inside_the_network_mid_run(models, task, call):
    """A bug in a network (not the user's fault) surfaces as itself, not swallowed or retried; nothing
    was changed and the next run gives the right image."""
    model = models["2d"]
    label_map, scan = labels(), image()
    before_labels, before_image = volume_copy(label_map), volume_copy(scan)

    def start():
        if task == "generate":
            return generate(model, label_map, steps=3, seed=2, batch_size=2)
        return inpaint(model, scan, region(scan), steps=3, seed=2, batch_size=2)

    reference, _ = drive(start())
    with FaultyNetwork(model, error=lambda: ValueError("a bug in the network"), fail_calls={call}) as fault:
        with pytest.raises(ValueError, match="a bug in the network"):
            drive(start())
        assert fault.raised == 1 and fault.calls == call  # no retry of a failure that is not memory
    assert not torch.is_inference_mode_enabled()
    assert_volume_unchanged(label_map, before_labels)
    assert_volume_unchanged(scan, before_image)
    again, _ = drive(start())
    np.testing.assert_array_equal(again[0].array, reference[0].array)


# -- out of memory ---------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [cuda_out_of_memory, runtime_out_of_memory], ids=["OutOfMemoryError", "RuntimeError"])
def test_out_of_memory_halves_the_slice_batch_and_gives_the_same_image(models, error):
    model = models["2d"]
    label_map = labels()
    reference, ref_events = drive(generate(model, label_map, steps=3, seed=7, batch_size=4, variants=2))
    with FaultyNetwork(model, error=error, fail_calls={1, 2}) as fault:
        results, events = drive(generate(model, label_map, steps=3, seed=7, batch_size=4, variants=2))
    # 4 slices fail, then 2 slices fail, then 1 slice per call to the end (the next variant too).
    assert fault.batches[:3] == [4, 2, 1]
    assert set(fault.batches[3:]) == {1}
    for a, b in zip(results, reference, strict=True):
        np.testing.assert_allclose(a.array, b.array, rtol=1e-5, atol=1e-3)
    notices = [e.notice for e in events if e.notice]
    assert notices == ["ran out of memory: 2 slices per network call", "ran out of memory: 1 slice per network call"]
    assert events[-1].step == events[-1].total
    assert "1 slice per network call" in events[-1].message
    assert results[0].metadata["provenance"]["device"] == "cpu"
    assert ref_events[-1].total < events[-1].total  # more, smaller calls


def test_out_of_memory_on_the_gpu_at_one_slice_falls_back_to_the_cpu(models):
    model = models["2d"]
    label_map = labels()
    reference, _ = drive(generate(model, label_map, steps=3, seed=3, batch_size=2))
    gpu = on_fake_accelerator(model)
    with FaultyNetwork(gpu, error=cuda_out_of_memory) as fault:  # every call on the 'GPU' fails
        results, events = drive(generate(gpu, label_map, steps=3, seed=3, batch_size=2))
    assert fault.batches == [2, 1]
    notices = [e.notice for e in events if e.notice]
    assert notices[-1] == "ran out of META memory: fell back to the CPU (slower)"
    assert "fell back to the CPU" in events[-1].message
    np.testing.assert_allclose(results[0].array, reference[0].array, rtol=1e-5, atol=1e-3)
    provenance = results[0].metadata["provenance"]
    assert provenance["device"] == "cpu" and provenance["weights_sha256"] == model.weights_sha256
    assert events[-1].step == events[-1].total


def test_out_of_memory_of_a_3d_model_falls_back_to_the_cpu(models):
    model = models["3d"]
    label_map = labels(slices=8)
    scan = Volume(np.random.default_rng(0).uniform(0, 500, label_map.shape).astype(np.float32), SPACING, ORIGIN, FLIP_XY)
    reference, _ = drive(inpaint(model, scan, region(scan), steps=2, seed=1))
    gpu = on_fake_accelerator(model)
    with FaultyNetwork(gpu, error=cuda_out_of_memory):
        results, events = drive(inpaint(gpu, scan, region(scan), steps=2, seed=1))
    assert any("fell back to the CPU" in e.notice for e in events)
    np.testing.assert_allclose(results[0].array, reference[0].array, rtol=1e-5, atol=1e-3)
    outside = region(scan).array == 0
    np.testing.assert_array_equal(results[0].array[outside], scan.array[outside])


def test_out_of_memory_on_the_cpu_at_one_slice_is_a_clear_error_and_the_next_run_works(models):
    model = models["2d"]
    label_map = labels()
    with FaultyNetwork(model, error=lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: 8 GB")) as fault:
        with pytest.raises(DeviceError, match="out of memory on the CPU"):
            drive(generate(model, label_map, steps=2, seed=0, batch_size=2))
        assert fault.batches == [2, 1]
    results, _ = drive(generate(model, label_map, steps=2, seed=0))
    assert np.isfinite(results[0].array).all()


def test_cancel_after_running_out_of_memory(models):
    gpu = on_fake_accelerator(models["2d"])
    with FaultyNetwork(gpu, error=cuda_out_of_memory):
        run = generate(gpu, labels(), steps=3, seed=0, batch_size=1)
        event = next(run)
        assert "fell back" in event.notice
        next(run)
        run.close()
    assert not torch.is_inference_mode_enabled()


def test_what_counts_as_out_of_memory():
    assert _is_out_of_memory(cuda_out_of_memory())
    assert _is_out_of_memory(runtime_out_of_memory())
    assert _is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert _is_out_of_memory(MemoryError())
    assert not _is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not _is_out_of_memory(ValueError("out of memory"))  # not an error PyTorch raises for memory
    assert not isinstance(DeviceError("x"), RuntimeError) and issubclass(DeviceError, MedgenError)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_out_of_memory_on_a_real_gpu_falls_back_to_the_cpu(models):
    model = models["2d"]
    gpu = load_model(model.folder, device="cuda")
    label_map = labels()
    reference, _ = drive(generate(model, label_map, steps=3, seed=3, batch_size=2))
    try:
        with FaultyNetwork(gpu, error=cuda_out_of_memory) as fault:
            results, events = drive(generate(gpu, label_map, steps=3, seed=3, batch_size=2))
        assert fault.batches == [2, 1]
        assert "ran out of CUDA memory: fell back to the CPU (slower)" in [e.notice for e in events]
        np.testing.assert_allclose(results[0].array, reference[0].array, rtol=1e-4, atol=1e-2)
        assert results[0].metadata["provenance"]["device"] == "cpu"
        assert next(p.device for p in gpu.networks["network"].parameters()).type == "cuda"  # the loaded model stays
    finally:
        release_model(gpu)
