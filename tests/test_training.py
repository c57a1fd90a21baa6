"""Training: a few steps of the real loop on a tiny model, resume, the card and files it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_card  # noqa: E402

from napari_medgen._paths import sample_dir  # noqa: E402
from napari_medgen.engine.errors import MedgenError  # noqa: E402
from napari_medgen.engine.io import read_volume, write_volume  # noqa: E402
from napari_medgen.engine.model.loading import load_model  # noqa: E402
from napari_medgen.engine.synthesis import generate  # noqa: E402
from napari_medgen.engine.training import TrainingConfig, find_training_pairs, train  # noqa: E402
from napari_medgen.engine.volume import Volume  # noqa: E402


def _drive(run):
    events = []
    try:
        while True:
            events.append(next(run))
    except StopIteration as stop:
        return stop.value, events


@pytest.fixture(scope="module")
def flat_dataset(tmp_path_factory) -> Path:
    """Two cases named <case>_image / <case>_label: slabs of the sample brain."""
    folder = tmp_path_factory.mktemp("data")
    t1 = read_volume(sample_dir() / "mni152_t1_2mm.nii.gz")
    labels = read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz")
    for case, z0 in (("a", 40), ("b", 50)):
        origin = t1.index_to_physical(np.array([0.0, 0.0, z0]))
        for volume, suffix in ((t1, "image"), (labels, "label")):
            slab = Volume(volume.array[z0 : z0 + 3].copy(), volume.spacing, tuple(origin), volume.direction)
            write_volume(slab, folder / f"{case}_{suffix}.nii.gz")
    return folder


def _config(steps: int) -> TrainingConfig:
    return TrainingConfig(steps=steps, batch_size=2, crop_size=16, checkpoint_every=2, warmup_steps=2, device="cpu")


def test_train_writes_loadable_model_card_and_curve(flat_dataset, tmp_path):
    out = tmp_path / "model"
    card = tiny_card(name="tiny-trained")
    folder, events = _drive(train(card, find_training_pairs(flat_dataset), out, _config(3), data_description="two slabs"))
    assert folder == out
    assert [e.step for e in events] == [1, 2, 3] and all(np.isfinite(e.loss) for e in events)
    assert (out / "loss_curve.png").stat().st_size > 0
    saved = json.loads((out / "model.json").read_text())
    assert saved["provenance"]["training_data"] == "two slabs"
    assert saved["provenance"]["training"]["steps"] == 3
    assert saved["provenance"]["training_slices"]["slices"] == 6
    model = load_model(out, device="cpu")
    label_map = read_volume(flat_dataset / "a_label.nii.gz")
    result, _ = _drive(generate(model, label_map, steps=2))
    assert result[0].same_grid(label_map)


def test_resume_continues_from_checkpoint(flat_dataset, tmp_path):
    out = tmp_path / "model"
    pairs = find_training_pairs(flat_dataset)
    _drive(train(tiny_card(), pairs, out, _config(2)))
    state = json.loads((out / "checkpoint" / "training_state.json").read_text())
    assert state["step"] == 2
    _, events = _drive(train(tiny_card(), pairs, out, _config(4), resume=True))
    assert [e.step for e in events] == [3, 4]
    state = json.loads((out / "checkpoint" / "training_state.json").read_text())
    assert state["step"] == 4 and len(state["losses"]) == 4


def test_checkpoints_outside_the_model_folder_leave_it_unwritten_until_the_end(flat_dataset, tmp_path):
    out, checkpoint = tmp_path / "model", tmp_path / "runs" / "checkpoint"
    run = train(tiny_card(), find_training_pairs(flat_dataset), out, _config(3), checkpoint_dir=checkpoint)
    next(run), next(run)  # two steps: one checkpoint written
    assert (checkpoint / "training_state.json").is_file() and (checkpoint / "loss_curve.png").is_file()
    assert not out.exists()
    _drive(run)
    assert (out / "model.json").is_file() and (out / "loss_curve.png").is_file()
    assert not (out / "checkpoint").exists()


def test_resume_without_checkpoint_is_a_clear_error(flat_dataset, tmp_path):
    with pytest.raises(MedgenError, match="no checkpoint"):
        _drive(train(tiny_card(), find_training_pairs(flat_dataset), tmp_path / "m", _config(2), resume=True))


def test_training_pairs_from_nnunet_layout_and_manifest(flat_dataset, tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for case in ("a", "b"):
        (tmp_path / "imagesTr" / f"{case}_0000.nii.gz").write_bytes((flat_dataset / f"{case}_image.nii.gz").read_bytes())
        (tmp_path / "labelsTr" / f"{case}.nii.gz").write_bytes((flat_dataset / f"{case}_label.nii.gz").read_bytes())
    assert [p[1].name for p in find_training_pairs(tmp_path)] == ["a.nii.gz", "b.nii.gz"]
    manifest = tmp_path / "pairs.json"
    manifest.write_text(json.dumps([{"image": "imagesTr/a_0000.nii.gz", "label": "labelsTr/a.nii.gz"}]))
    assert find_training_pairs(manifest) == [(tmp_path / "imagesTr/a_0000.nii.gz", tmp_path / "labelsTr/a.nii.gz")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedgenError, match="no image / label pairs"):
        find_training_pairs(empty)


def test_label_values_outside_schema_are_refused(flat_dataset, tmp_path):
    labels = read_volume(flat_dataset / "a_label.nii.gz")
    write_volume(labels.with_array(np.where(labels.array == 2, 5, labels.array).astype(np.uint8)), tmp_path / "c_label.nii.gz")
    (tmp_path / "c_image.nii.gz").write_bytes((flat_dataset / "a_image.nii.gz").read_bytes())
    with pytest.raises(MedgenError, match="5"):
        _drive(train(tiny_card(), find_training_pairs(tmp_path), tmp_path / "m", _config(1)))


def test_pasted_tissue_keeps_image_and_labels_paired():
    """Copy-paste augmentation moves image and labels together and touches nothing outside the disc."""
    from napari_medgen.engine.training.data import paste_tissue

    rng = np.random.default_rng(0)
    source_label = rng.integers(1, 4, (40, 40))
    source_image = source_label * 10.0 + 0.5  # an image that is a function of its labels
    label = np.zeros((32, 32), np.int64)
    label[4:28, 4:28] = 3
    image = np.where(label > 0, 99.0, -1.0)
    pasted_image, pasted_label = paste_tissue(image, label, source_image, source_label, 10.0, rng)
    changed = pasted_label != label
    assert changed.any() and np.array_equal(pasted_image[changed], pasted_label[changed] * 10.0 + 0.5)
    moved = pasted_image != image
    assert np.array_equal(pasted_image[moved], pasted_label[moved] * 10.0 + 0.5)
    assert moved.sum() <= np.pi * 5.5**2 and label.max() == 3 and image.max() == 99.0  # inputs untouched
