"""Tissue fractions as the condition: each voxel's share of every class (partial volume) in place of the one-hot
of its hard label, in training batches and in generation, for a model whose card says it was trained on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import drive
from tiny_models import make_tiny_model, tiny_card

from napari_medgen._paths import sample_dir
from napari_medgen.engine.diffusion.denoiser import conditioning_stack, one_hot
from napari_medgen.engine.errors import GeometryMismatchError, InvalidVolumeError, LabelSchemaError, MedgenError, TaskNotSupportedError
from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.orientation import to_canonical
from napari_medgen.engine.synthesis import generate
from napari_medgen.engine.training import TrainingConfig, find_training_pairs, train
from napari_medgen.engine.training.batches import TrainingBatches
from napari_medgen.engine.training.data import (
    find_training_fractions,
    fraction_paths,
    load_slices,
    load_training_slices,
    save_slices,
)
from napari_medgen.engine.volume import Volume


def _drive(run):
    return drive(run)[0]


def _shares_of(labels: Volume, rng: np.random.Generator | None = None) -> list[Volume]:
    """Fraction maps of classes 1..3 for a label map: its one-hot, or (with `rng`) a random partial volume
    whose largest share is still the voxel's label."""
    maps = []
    for k in (1, 2, 3):
        share = (labels.array == k).astype(np.float32)
        if rng is not None:
            share = np.where(labels.array > 0, 0.15 * rng.random(labels.shape) + 0.7 * share, 0.0)
        maps.append(labels.with_array(share.astype(np.float32)))
    return maps


@pytest.fixture(scope="module")
def slab_case(tmp_path_factory) -> tuple[Path, list[Volume]]:
    """A case of the sample brain (five axial slices, image and labels) with partial-volume fraction maps."""
    folder = tmp_path_factory.mktemp("fractions")
    t1 = read_volume(sample_dir() / "mni152_t1_2mm.nii.gz")
    labels = read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz")
    origin = t1.index_to_physical(np.array([0.0, 0.0, 45.0]))
    slab = lambda v: Volume(v.array[45:50].copy(), v.spacing, tuple(origin), v.direction)  # noqa: E731
    write_volume(slab(t1), folder / "a_image.nii.gz")
    write_volume(slab(labels), folder / "a_label.nii.gz")
    maps = _shares_of(slab(labels), np.random.default_rng(0))
    for share, path in zip(maps, fraction_paths(folder / "a_label.nii.gz", 4), strict=True):
        write_volume(share, path)
    return folder, maps


def test_one_hot_fractions_are_the_hard_labels_condition():
    card = tiny_card()
    labels = np.random.default_rng(0).integers(0, 4, (3, 8, 8))
    hard = conditioning_stack(card, labels, None, None, np.linspace(0, 1, 3))
    soft = conditioning_stack(card, one_hot(labels, 4), None, None, np.linspace(0, 1, 3))
    assert np.array_equal(hard, soft)
    with pytest.raises(ValueError, match="tissue fractions need shape"):
        conditioning_stack(card, one_hot(labels, 4)[:, :3], None, None, np.linspace(0, 1, 3))


def test_training_slices_carry_fractions_that_sum_to_one_and_round_trip(slab_case, tmp_path):
    folder, maps = slab_case
    card = tiny_card(spacing_mm=2.0)  # the data's own grid: labels and fractions keep every voxel
    data = load_training_slices(card, find_training_pairs(folder), [maps])
    assert data.fractions.shape == (len(data.images), 4) + data.images.shape[1:]
    assert np.allclose(data.fractions.sum(axis=1), 1.0, atol=1e-5)
    brain = data.labels > 0
    assert np.array_equal(np.argmax(data.fractions, axis=1)[brain], data.labels[brain])  # the labels are their argmax
    assert np.all(data.fractions[:, 0][~brain] == 1.0)
    again = load_slices(save_slices(data, tmp_path / "slices.npz"))
    assert np.allclose(again.fractions, data.fractions, atol=1e-3)
    with pytest.raises(MedgenError, match="fractions for 2 cases"):
        load_training_slices(card, find_training_pairs(folder), [maps, maps])
    with pytest.raises(LabelSchemaError, match="2 tissue fraction maps"):
        load_training_slices(card, find_training_pairs(folder), [maps[:2]])


def test_batches_give_fractions_to_their_share_and_are_unchanged_without(slab_case):
    folder, maps = slab_case
    card = tiny_card(condition_dropout=0.0)
    with_fractions = load_training_slices(card, find_training_pairs(folder), [maps])
    hard_only = load_training_slices(card, find_training_pairs(folder))
    config = TrainingConfig(batch_size=4, crop_size=16, condition_dropout=0.0)
    # A share of 0 draws exactly the batches of data without fractions: old runs resume and repeat as they were.
    for step in range(3):
        a, b = TrainingBatches(card, with_fractions, config, 0).batch(step), TrainingBatches(card, hard_only, config, 0).batch(step)
        assert all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b, strict=True))
    soft = TrainingConfig(batch_size=4, crop_size=16, condition_dropout=0.0, fraction_share=1.0)
    images, conditioning, _ = TrainingBatches(card, with_fractions, soft, 0).batch(0)
    label_channels = conditioning[:, :4].numpy()
    assert np.allclose(label_channels.sum(axis=1), 1.0, atol=1e-4)  # warped, padded, pasted: still fractions
    partial = (label_channels > 0.01) & (label_channels < 0.99)
    assert partial.mean() > 0.1  # the random partial volume reaches the network


def test_training_on_fractions_marks_the_card_and_needs_fraction_data(slab_case, tmp_path):
    folder, maps = slab_case
    card = tiny_card()
    config = TrainingConfig(steps=2, batch_size=2, crop_size=16, warmup_steps=1, device="cpu", fraction_share=0.5)
    with pytest.raises(MedgenError, match="prepared slices that hold tissue fractions"):
        _drive(train(card, load_training_slices(card, find_training_pairs(folder)), tmp_path / "refused", config))
    assert not (tmp_path / "refused").exists()
    # Given image / label pairs, training finds each label map's fraction maps beside it.
    assert load_model(str(_drive(train(card, find_training_pairs(folder), tmp_path / "from_pairs", config))),
                      device="cpu").card.conditioning.tissue_fractions
    data = load_training_slices(card, find_training_pairs(folder), [maps])
    folder_out = _drive(train(card, data, tmp_path / "trained", config))
    assert load_model(str(folder_out), device="cpu").card.conditioning.tissue_fractions


@pytest.fixture
def fraction_model(tmp_path) -> Path:
    """The tiny 2-D model (4 mm in-plane), its card marked as trained on tissue fractions."""
    folder = make_tiny_model(tmp_path / "tiny-fractions")
    card_path = folder / "model.json"
    import json

    card = json.loads(card_path.read_text())
    card["conditioning"]["tissue_fractions"] = True
    card_path.write_text(json.dumps(card))
    return folder


def _label_map_at_4mm(oblique_volume: Volume) -> Volume:
    """An oblique label map at the tiny model's in-plane spacing: the model grid is the volume's own grid, so
    linear and nearest resampling both keep every voxel."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, (6, 12, 10)).astype(np.uint8)
    return Volume(labels, (4.0, 4.0, 3.0), oblique_volume.origin, oblique_volume.direction, metadata={"label_map": True})


def test_one_hot_fractions_generate_what_the_labels_do_in_place(fraction_model, oblique_volume):
    model = load_model(str(fraction_model), device="cpu")
    labels = _label_map_at_4mm(oblique_volume)
    hard = _drive(generate(model, labels, steps=3, seed=5))[0]
    soft = _drive(generate(model, labels, steps=3, seed=5, tissue_fractions=_shares_of(labels)))[0]
    assert soft.same_grid(hard)
    np.testing.assert_allclose(soft.array, hard.array, atol=1e-3)
    partial = _drive(generate(model, labels, steps=3, seed=5, tissue_fractions=_shares_of(labels, np.random.default_rng(2))))[0]
    assert np.abs(partial.array - hard.array)[labels.array > 0].mean() > 1e-3  # the network sees the fractions
    # A slice range (canonical axial slices) takes the same slices of the fraction maps as of the label map.
    part = _drive(generate(model, labels, steps=3, seed=5, slice_range=(2, 5), tissue_fractions=_shares_of(labels)))[0]
    np.testing.assert_allclose(part.array, to_canonical(hard).array[2:5], atol=1e-3)


def test_fractions_a_model_cannot_take_are_refused_before_any_work(fraction_model, tiny_model, oblique_volume):
    labels = _label_map_at_4mm(oblique_volume)
    shares = _shares_of(labels)
    with pytest.raises(TaskNotSupportedError, match="trained on hard labels only"):
        generate(load_model(str(tiny_model), device="cpu"), labels, tissue_fractions=shares)
    model = load_model(str(fraction_model), device="cpu")
    with pytest.raises(LabelSchemaError, match="needs 3 tissue fraction maps"):
        generate(model, labels, tissue_fractions=shares[:2])
    with pytest.raises(InvalidVolumeError, match="0..1"):
        generate(model, labels, tissue_fractions=[s.with_array(s.array * 255) for s in shares])
    moved = Volume(shares[0].array, shares[0].spacing, tuple(np.add(shares[0].origin, 4.0)), shares[0].direction)
    with pytest.raises(GeometryMismatchError):
        generate(model, labels, tissue_fractions=[moved] + shares[1:])


def test_command_line_generates_from_fraction_files_and_refuses_a_hard_label_model(fraction_model, tiny_model,
                                                                                 oblique_volume, tmp_path, capsys):
    from napari_medgen.cli import main

    labels = _label_map_at_4mm(oblique_volume)
    write_volume(labels, tmp_path / "labels.nii.gz")
    fraction_files = [write_volume(share, tmp_path / f"fraction_{k}.nii.gz") for k, share in enumerate(_shares_of(labels), 1)]
    arguments = ["generate", "--labels", str(tmp_path / "labels.nii.gz"), "--fractions", *map(str, fraction_files),
                 "--steps", "3", "--seed", "5", "--progress", "none"]
    assert main(arguments + ["--out", str(tmp_path / "soft.nii.gz"), "--model", str(fraction_model)]) == 0
    hard = _drive(generate(load_model(str(fraction_model), device="cpu"), labels, steps=3, seed=5))[0]
    np.testing.assert_allclose(read_volume(tmp_path / "soft.nii.gz").array, hard.array, atol=1e-2)
    assert main(arguments + ["--out", str(tmp_path / "refused.nii.gz"), "--model", str(tiny_model)]) == 1
    assert "trained on hard labels only" in capsys.readouterr().err
    assert not (tmp_path / "refused.nii.gz").exists()


def test_fraction_maps_are_found_beside_each_label_map_and_checked(slab_case, tmp_path):
    folder, maps = slab_case
    pairs = find_training_pairs(folder)
    assert [p.name for p in find_training_fractions(pairs, 4)[0]] == [f"a_label_fraction_{k}.nii.gz" for k in (1, 2, 3)]
    # The shipped sample brain has its own, so the demo can train on fractions with no data of the user's.
    sample_labels = sample_dir() / "mni152_tissue_labels_2mm.nii.gz"
    assert all(path.exists() for path in fraction_paths(sample_labels, 4))
    with pytest.raises(MedgenError, match="missing b_label_fraction_1.nii.gz"):
        find_training_fractions([(folder / "a_image.nii.gz", tmp_path / "b_label.nii.gz")], 4)
    # Maps stored as 0-255 would all read as 1 after clipping: refused, naming the file.
    with pytest.raises(InvalidVolumeError, match="0..1"):
        load_training_slices(tiny_card(), pairs, [[m.with_array(m.array * 255) for m in maps]])


def test_one_hot_fractions_reach_the_network_exactly_as_the_labels_do(slab_case):
    """Flipped, cropped, padded and pasted with the image and labels: fractions that are the labels' one-hot give
    the very label channels the labels give."""
    folder, _ = slab_case
    card = tiny_card(condition_dropout=0.0)
    hard_only = load_training_slices(card, find_training_pairs(folder))
    with_one_hot = load_training_slices(card, find_training_pairs(folder))
    with_one_hot.fractions = one_hot(hard_only.labels, 4)
    unwarped = dict(batch_size=4, crop_size=16, condition_dropout=0.0, warp_fraction=0.0)
    for step in range(3):
        _, hard, _ = TrainingBatches(card, hard_only, TrainingConfig(**unwarped), 0).batch(step)
        _, soft, _ = TrainingBatches(card, with_one_hot, TrainingConfig(**unwarped, fraction_share=1.0), 0).batch(step)
        np.testing.assert_allclose(soft[:, :4].numpy(), hard[:, :4].numpy(), atol=1e-6)


def test_command_line_trains_on_fractions_and_says_what_is_missing(slab_case, tmp_path, capsys):
    from napari_medgen.cli import main

    folder, _ = slab_case
    arguments = ["train", "--steps", "1", "--batch-size", "1", "--crop", "16", "--device", "cpu", "--progress", "none",
                 "--fraction-share", "0.5"]
    assert main(arguments + ["--data", str(folder), "--out", str(tmp_path / "model")]) == 0
    assert load_model(str(tmp_path / "model"), device="cpu").card.conditioning.tissue_fractions
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("a_image.nii.gz", "a_label.nii.gz"):
        (bare / name).write_bytes((folder / name).read_bytes())
    assert main(arguments + ["--data", str(bare), "--out", str(tmp_path / "refused")]) == 1
    assert "a_label_fraction_1.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main(arguments[:-1] + ["1.5", "--data", str(folder), "--out", str(tmp_path / "share")]) == 1
    assert "0..1" in capsys.readouterr().err and not (tmp_path / "share").exists()
