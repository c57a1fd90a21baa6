"""Batch synthesis (issue 12): labelled cases in nnU-Net v2's raw layout on dask.distributed.

A LocalCluster of 2 worker processes (module-scoped: starting one costs seconds) and a tiny random-weight
model on 16x16x4 label maps: cases land in the layout with their label map's exact geometry, a rerun skips
them, a case made to fail is reported while the others are written, dataset.json holds what nnU-Net v2
reads, each worker loads the model once, and closing a run leaves no half-written case. Augmentation and
the command line are checked without dask.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from napari_medgen.engine.batch import layout
from napari_medgen.engine.batch.augment import AugmentOptions, augment_label_map
from napari_medgen.engine.batch.distributed import run_synthesis, synthesize_dataset
from napari_medgen.engine.io import read_volume
from napari_medgen.engine.model.labels import TISSUE_SCHEMA
from napari_medgen.engine.synthesis.options import SamplingOptions
from napari_medgen.engine.volume import Volume

FAST = SamplingOptions(steps=2)


def tissue_map(shift: int = 0, direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Volume:
    """A 16x16x4 brain-like label map (CSF rim, grey, white core) on a non-trivial grid."""
    array = np.zeros((4, 16, 16), np.uint8)
    array[:, 2:14, 2 + shift : 14] = 1
    array[:, 3:13, 3 + shift : 13] = 2
    array[:, 6:10, 5 + shift : 11] = 3
    return Volume(array, (4.0, 4.0, 5.0), (12.5, -30.0, 7.0), direction)


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory) -> Path:
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-2d")


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    import logging

    from napari_medgen.engine.batch.distributed import environment_kept

    with environment_kept():  # later tests' subprocesses must not inherit the nanny's one-thread settings
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                           silence_logs=logging.ERROR)
    with distributed.Client(cluster) as dask_client:
        yield dask_client
    cluster.close()


def geometry(volume: Volume) -> tuple:
    return volume.shape, volume.spacing, volume.origin, volume.direction


def nnunet_check(folder: Path) -> dict:
    """What nnU-Net v2's verify_dataset_integrity asks of a raw data set (without installing nnU-Net)."""
    dataset = json.loads((folder / "dataset.json").read_text())
    assert {"labels", "channel_names", "numTraining", "file_ending"} <= set(dataset)
    assert dataset["labels"]["background"] == 0
    values = sorted(dataset["labels"].values())
    assert values == list(range(len(values))), "labels must be consecutive"
    ending = dataset["file_ending"]
    channels = len(dataset["channel_names"])
    images = sorted(p.name for p in (folder / "imagesTr").iterdir() if p.name.endswith(ending) and p.is_file())
    identifiers = sorted({name[: -len(ending) - 5] for name in images})
    assert len(identifiers) == dataset["numTraining"]
    for case in identifiers:
        assert sorted(f"{case}_{c:04d}{ending}" for c in range(channels)) == [n for n in images if n.startswith(case + "_")]
        assert (folder / "labelsTr" / f"{case}{ending}").is_file()
        found = np.unique(read_volume(folder / "labelsTr" / f"{case}{ending}").array)
        assert set(found.tolist()) <= set(values)
    return dataset


# -- on the cluster ---------------------------------------------------------------------------------------------
def test_cases_written_in_layout_and_geometry_then_skipped_on_rerun(client, tiny_model_folder, tmp_path):
    sources = [tissue_map(0), tissue_map(1, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))]
    out = tmp_path / "ds"
    summary = run_synthesis(synthesize_dataset(sources, out, 4, model=tiny_model_folder, options=FAST, device="cpu",
                                               augment="elastic,flip,lesion", client=client))
    assert sorted(summary.done) == [f"case_{k:04d}" for k in range(4)] and not summary.failed
    dataset = nnunet_check(out)
    assert dataset["numTraining"] == 4 and dataset["channel_names"] == {"0": "MR"} and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"] == {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3}
    changed = 0
    for k in range(4):
        source = sources[k % 2]
        image = read_volume(layout.image_path(out, f"case_{k:04d}"))
        labels = read_volume(layout.label_path(out, f"case_{k:04d}"))
        assert image.same_grid(source) and labels.same_grid(source)  # the label map's exact grid
        assert labels.is_label_map and image.array.dtype.kind == "f"
        changed += not np.array_equal(labels.array, source.array)
        sidecar = json.loads(layout.sidecar(layout.image_path(out, f"case_{k:04d}")).read_text())
        assert sidecar["synthetic"] is True and sidecar["batch"]["case"] == f"case_{k:04d}" and sidecar["batch"]["seed"] == k
        assert sidecar["provenance"]["inputs_sha256"]["label_map"] == labels.with_array(labels.array.astype(source.array.dtype)).content_hash()
    assert changed == 4  # every case's truth is its own augmented map
    # The model is loaded once per worker process, not per case.
    workers = {r.worker for r in summary.results if r.status == "done"}
    assert summary.models_loaded == len(workers) <= 2
    # Two worker processes on this machine split its cores between their torch threads.
    assert {r.torch_threads for r in summary.results} == {max(1, len(os.sched_getaffinity(0)) // 2)}
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    again = run_synthesis(synthesize_dataset(sources, out, 4, model=tiny_model_folder, options=FAST, device="cpu",
                                             augment="elastic,flip,lesion", client=client))
    assert again.skipped == summary.skipped + sorted(summary.done) and not again.done and not again.other_settings
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == before


def test_failing_case_is_reported_and_others_written(client, tiny_model_folder, tmp_path):
    out = tmp_path / "ds"
    layout.prepare(out)
    layout.image_path(out, "case_0001").mkdir()  # a folder where case_0001's image must go: that case cannot be written
    summary = run_synthesis(synthesize_dataset([tissue_map()], out, 3, model=tiny_model_folder, options=FAST, device="cpu",
                                               client=client, retries=1))
    assert sorted(summary.done) == ["case_0000", "case_0002"]
    assert list(summary.failed) == ["case_0001"] and "2 attempts" in summary.failed["case_0001"]
    assert "in the way" in summary.failed["case_0001"]
    assert not layout.label_path(out, "case_0001").exists()  # nothing of the failed case
    assert nnunet_check(out)["numTraining"] == 2


def test_closing_a_run_leaves_no_half_written_case(client, tiny_model_folder, tmp_path):
    out = tmp_path / "ds"
    run = synthesize_dataset([tissue_map()], out, 8, model=tiny_model_folder, options=SamplingOptions(steps=6), device="cpu",
                             client=client)
    first = next(run)
    assert first.result.status == "done"
    run.close()  # as Ctrl-C does: the unfinished cases are cancelled
    deadline = time.monotonic() + 30
    while any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(client.processing().values())
    cases = layout.image_case_ids(out)
    assert 1 <= len(cases) < 8
    assert all(layout.case_complete(out, case) for case in cases)
    labels = sorted(p.name[:-7] for p in (out / "labelsTr").glob("*.nii.gz"))
    assert labels == cases or layout.sweep(out) == sorted(set(labels) - set(cases))
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == len(layout.image_case_ids(out))


# -- without dask ------------------------------------------------------------------------------------------------
def test_augmentation_is_seeded_keeps_grid_and_schema():
    source = tissue_map()
    options = AugmentOptions(elastic=True, flip=True, lesion=True)
    a = augment_label_map(source, TISSUE_SCHEMA, options, seed=(3, 1))
    b = augment_label_map(source, TISSUE_SCHEMA, options, seed=(3, 1))
    c = augment_label_map(source, TISSUE_SCHEMA, options, seed=(4, 1))
    assert np.array_equal(a.label_map.array, b.label_map.array) and a.record == b.record
    assert not np.array_equal(a.label_map.array, c.label_map.array)
    assert geometry(a.label_map) == geometry(source) and a.label_map.array.dtype == source.array.dtype
    assert set(np.unique(a.label_map.array).tolist()) <= set(TISSUE_SCHEMA.indices)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1), (0, 1, 0, 1, 0, 0, 0, 0, 1)])
def test_flip_is_left_right_in_physical_space(direction):
    source = tissue_map(direction=direction)
    array = source.array.copy()
    marker = np.zeros_like(array, bool)
    # A marker on the patient's left (+x in LPS) of the anatomy, wherever the grid's axes point.
    points = np.stack(np.nonzero(array), axis=1)
    xs = np.array([source.index_to_physical(p[::-1])[0] for p in points])
    left = points[xs >= np.percentile(xs, 90)]
    marker[tuple(left.T)] = True
    array[marker] = 3
    labelled = source.with_array(array)
    flipped = augment_label_map(labelled, TISSUE_SCHEMA, AugmentOptions(elastic=False, flip=True, flip_probability=1.0), seed=0)
    assert flipped.record["flip_left_right"] and geometry(flipped.label_map) == geometry(source)

    def x_of(volume: Volume, mask: np.ndarray) -> float:
        return float(np.mean([volume.index_to_physical(p[::-1])[0] for p in np.argwhere(mask)]))

    centre = x_of(labelled, labelled.array > 0)
    assert x_of(flipped.label_map, flipped.label_map.array > 0) == pytest.approx(centre, abs=2.0)  # the anatomy stays put
    moved = flipped.label_map.array == 3
    assert x_of(flipped.label_map, moved) < centre < x_of(labelled, labelled.array == 3)  # the marker went to the right


def test_lesions_only_inside_the_anatomy_and_labels_with_gaps_made_consecutive():
    source = tissue_map()
    pasted = augment_label_map(source, TISSUE_SCHEMA, AugmentOptions(elastic=False, flip=False, lesion=True, lesion_label="CSF",
                                                                     lesion_radius_mm=(6.0, 8.0)), seed=5)
    assert pasted.record["lesions"] and all(blob["label"] == 1 for blob in pasted.record["lesions"])
    assert np.array_equal(pasted.label_map.array > 0, source.array > 0)  # the outline is kept
    assert (pasted.label_map.array == 1).sum() > (source.array == 1).sum()

    from tiny_models import tiny_card

    card = tiny_card()
    card.label_schema.classes[-1].index = 7  # a schema with a gap: 0, 1, 2, 7
    labels, mapping = layout.nnunet_labels(card)
    assert labels == {"background": 0, "CSF": 1, "grey matter": 2, "white matter": 3} and mapping == {0: 0, 1: 1, 2: 2, 7: 3}


def test_command_line_plain_loop_jsonl(tiny_model_folder, tmp_path, capsys):
    from napari_medgen.cli import main
    from napari_medgen.engine.io import write_volume

    labels = write_volume(tissue_map(), tmp_path / "labels.nii.gz")
    out = tmp_path / "ds"
    argv = ["batch", "--labels", str(labels), "--out", str(out), "--cases", "2", "--steps", "2", "--workers", "0",
            "--model", str(tiny_model_folder), "--device", "cpu", "--progress", "jsonl"]
    assert main(argv) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == ["progress", "progress", "summary", "result"]
    assert events[1]["step"] == 2 and events[1]["total"] == 2 and events[2]["done"] == 2
    assert events[-1]["paths"][0] == str(out / "dataset.json") and len(events[-1]["paths"]) == 5
    assert main(argv) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-2]["skipped"] == 2 and events[-2]["done"] == 0
    assert main([*argv[:5], "--cases", "0", *argv[7:]]) == 1  # refused before anything runs
    assert "at least 1" in capsys.readouterr().err


def test_a_local_cluster_leaves_the_callers_environment_as_it_was(tmp_path):
    """distributed's nanny sets OMP_NUM_THREADS=1 (and more) in the process that starts it; a notebook's or a
    test's later subprocesses would then run on one thread."""
    pytest.importorskip("distributed")
    import logging
    import os

    import distributed

    from napari_medgen.engine.batch.distributed import environment_kept

    before = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with environment_kept():
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                           silence_logs=logging.ERROR)
    try:
        assert {name: os.environ.get(name) for name in before} == before
    finally:
        cluster.close()
