"""Training: a few steps of the real loop on a tiny model, resume, the card and files it writes;
the diffusion maths it shares with the samplers, its learning-rate schedule, its checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from reliability_helpers import drive
from tiny_models import tiny_card

from napari_medgen._paths import sample_dir
from napari_medgen.engine.diffusion.schedule import NoiseSchedule
from napari_medgen.engine.errors import MedgenError
from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.model.presets import preset_card
from napari_medgen.engine.synthesis import generate
from napari_medgen.engine.training import TrainingConfig, find_training_pairs, train
from napari_medgen.engine.volume import Volume


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


def test_train_writes_loadable_model_card_and_curve(flat_dataset, tmp_path, tiny_model):
    out = tmp_path / "model"
    card = tiny_card(name="tiny-trained")
    folder, events = drive(train(card, find_training_pairs(flat_dataset), out, _config(3), data_description="two slabs"))
    assert folder == out
    assert [e.step for e in events] == [1, 2, 3] and all(np.isfinite(e.loss) for e in events)
    assert (out / "loss_curve.png").stat().st_size > 0
    saved = json.loads((out / "model.json").read_text())
    assert saved["provenance"]["training_data"] == "two slabs"
    assert saved["provenance"]["training"]["steps"] == 3
    assert saved["provenance"]["training_slices"]["slices"] == 6
    levels = saved["normalization"]["label_levels"]  # the learned tissue levels inpainting harmonises to
    assert -1.0 < levels["1"] < levels["2"] < levels["3"] <= 1.0  # T1: CSF darker than grey, grey than white
    model = load_model(out, device="cpu")
    label_map = read_volume(flat_dataset / "a_label.nii.gz")
    result, _ = drive(generate(model, label_map, steps=2))
    assert result[0].same_grid(label_map)
    # The trained folder is a model folder like one built directly from the same architecture.
    built = json.loads((tiny_model / "model.json").read_text())
    assert saved["network"] == built["network"] and saved["scheduler"] == built["scheduler"]
    trained_weights, built_weights = load_file(out / "weights.safetensors"), load_file(tiny_model / "weights.safetensors")
    assert {k: v.shape for k, v in trained_weights.items()} == {k: v.shape for k, v in built_weights.items()}


def _checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    folder = out / "checkpoint"
    return load_file(folder / "training_state.safetensors"), json.loads((folder / "training_state.json").read_text())


def _same(a, b) -> bool:
    """Deep equality of state dicts: same types, same values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("planes", [False, True], ids=["axial", "three planes"])
def test_resumed_run_is_the_same_run(flat_dataset, tmp_path, planes):
    """Stopped after 2 of 4 steps and resumed, a run ends with the weights, EMA, optimiser moments and
    step counts, learning-rate schedule, random generators and losses of the run made in one go (also for a
    network trained on three planes, whose batches carry each slice's plane)."""
    pairs = find_training_pairs(flat_dataset)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    card = tiny_card(orientations=planes)
    drive(train(card, pairs, straight, _config(4)))
    run = train(card, pairs, resumed, _config(4))
    next(run), next(run)
    run.close()  # stopped (as by cancelling) just after the checkpoint of step 2
    tensors, state = _checkpoint(resumed)
    assert state["step"] == 2 and state["lr_schedule"]["last_epoch"] == 2
    steps = [v for k, v in tensors.items() if k.startswith("optimizer.state.") and k.endswith(".step")]
    assert steps and all(float(v) == 2 for v in steps)
    assert not (resumed / "model.json").exists()

    _, events = drive(train(card, pairs, resumed, _config(4), resume=True))
    assert [e.step for e in events] == [3, 4]
    (straight_tensors, straight_state), (resumed_tensors, resumed_state) = _checkpoint(straight), _checkpoint(resumed)
    assert {k.split(".")[0] for k in straight_tensors} == {"network", "ema", "optimizer", "rng"}
    assert straight_tensors.keys() == resumed_tensors.keys()
    different = [k for k in straight_tensors if not torch.equal(straight_tensors[k], resumed_tensors[k])]
    assert not different  # raw and EMA weights, Adam's moments and step counts, the torch generator
    for key in ("step", "losses", "optimizer", "lr_schedule", "rng"):
        assert resumed_state[key] == straight_state[key], key
    assert _same(load_file(straight / "weights.safetensors"), load_file(resumed / "weights.safetensors"))
    assert ("network.class_embedding.weight" in load_file(straight / "weights.safetensors")) == planes


def test_resume_with_more_steps_follows_the_longer_schedule(flat_dataset, tmp_path):
    out = tmp_path / "model"
    pairs = find_training_pairs(flat_dataset)
    drive(train(tiny_card(), pairs, out, _config(2)))
    state = json.loads((out / "checkpoint" / "training_state.json").read_text())
    assert state["step"] == 2
    _, events = drive(train(tiny_card(), pairs, out, _config(4), resume=True))
    assert [e.step for e in events] == [3, 4]
    tensors, state = _checkpoint(out)
    assert state["step"] == 4 and len(state["losses"]) == 4
    assert all(float(v) == 4 for k, v in tensors.items() if k.startswith("optimizer.state.") and k.endswith(".step"))
    # The 4-step schedule's cosine (2 steps after a 2-step warm-up), not the finished 2-step one's.
    assert state["lr_schedule"]["last_epoch"] == 4 and state["lr_schedule"]["_schedulers"][1]["T_max"] == 2


def test_checkpoint_restores_optimiser_schedule_and_generators_exactly(tmp_path):
    from dataclasses import asdict

    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from napari_medgen.engine.training.checkpoint import load_checkpoint, save_checkpoint
    from napari_medgen.engine.training.optimizer import build_lr_schedule, build_optimizer, resume_lr_schedule

    config = _config(6)

    def fresh(seed: int):
        torch.manual_seed(seed)
        network = torch.nn.Linear(3, 2)
        optimizer = build_optimizer(network, config)
        ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(0.9))
        return network, ema, optimizer, build_lr_schedule(optimizer, config)

    def step(network, ema, optimizer, schedule):
        network(torch.ones(4, 3)).square().mean().backward()
        optimizer.step()
        schedule.step()
        ema.update_parameters(network)
        optimizer.zero_grad()

    network, ema, optimizer, schedule = fresh(0)
    for _ in range(3):
        step(network, ema, optimizer, schedule)
    generator, rng = torch.Generator().manual_seed(5), np.random.default_rng(7)
    torch.rand(3, generator=generator), rng.random()
    states = {"optimizer": optimizer.state_dict(), "lr_schedule": schedule.state_dict(), "rng": {"numpy": rng.bit_generator.state, "torch": generator.get_state()}}
    save_checkpoint(tmp_path, network, ema, states, {"step": 3, "losses": [1.0, 0.5, 0.25], "config": asdict(config)})

    network2, ema2, optimizer2, schedule2 = fresh(1)
    record = load_checkpoint(tmp_path, network2, ema2, optimizer2, ("lr_schedule", "rng"))
    schedule2 = resume_lr_schedule(schedule2, optimizer2, config, record, 3)
    assert _same(network2.state_dict(), network.state_dict()) and _same(ema2.state_dict(), ema.state_dict())
    assert _same(optimizer2.state_dict(), optimizer.state_dict())  # moments, step counts, rates, betas (a tuple)
    assert _same(schedule2.state_dict(), schedule.state_dict())
    assert _same(record["rng"], states["rng"])
    step(network, ema, optimizer, schedule)
    step(network2, ema2, optimizer2, schedule2)
    assert _same(network2.state_dict(), network.state_dict()) and _same(optimizer2.state_dict(), optimizer.state_dict())


@pytest.mark.parametrize(("warmup", "steps"), [(3, 10), (0, 5), (1, 4), (6, 4)])
def test_learning_rate_warms_up_linearly_then_decays_along_a_cosine(warmup, steps):
    from napari_medgen.engine.training.optimizer import build_lr_schedule, build_optimizer

    config = TrainingConfig(steps=steps, warmup_steps=warmup, learning_rate=1e-3, final_lr_fraction=0.1)
    optimizer = build_optimizer(torch.nn.Linear(2, 1), config)
    schedule = build_lr_schedule(optimizer, config)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    cosine = lambda s: 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    expected = [1e-3 * (s + 1) / warmup if s < warmup else cosine(s) for s in range(steps)]
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
    for start in range(steps):  # a schedule set to a later step (a resumed run whose settings changed)
        later = build_optimizer(torch.nn.Linear(2, 1), config)
        build_lr_schedule(later, config, start_step=start)
        assert later.param_groups[0]["lr"] == pytest.approx(rates[start], rel=1e-12)


def test_training_target_is_monais_for_a_v_prediction_card():
    """The noisy input and the velocity target are MONAI's `add_noise` / `get_velocity` of the card's schedule."""
    from monai.networks.schedulers import DDPMScheduler

    card = preset_card("brain-t1-demo")
    assert card.scheduler.prediction_type == "v_prediction"
    monai = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", beta_start=1e-4, beta_end=0.02, prediction_type="v_prediction")
    schedule = NoiseSchedule(card.scheduler)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand((4, 1, 8, 8), generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 17, 500, 999])
    torch.testing.assert_close(schedule.training_input(x0, noise, t), monai.add_noise(x0, noise, t), rtol=0, atol=0)
    torch.testing.assert_close(schedule.training_target(x0, noise, t), monai.get_velocity(x0, noise, t), rtol=0, atol=0)
    a = torch.tensor(schedule.alphas_cumprod, dtype=torch.float32)[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(schedule.training_target(x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_samplers_read_the_training_target_back(prediction_type):
    """`NoiseSchedule.split` (the samplers' reading of a network output) inverts the training target."""
    spec = tiny_card().scheduler.model_copy(update={"prediction_type": prediction_type})
    schedule = NoiseSchedule(spec)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand((2, 1, 6, 6), generator=generator) * 1.8 - 0.9
    noise = torch.randn(x0.shape, generator=generator)
    for t in (5, 50, schedule.num_train_timesteps - 1):
        timesteps = torch.full((2,), t)
        x_t = schedule.training_input(x0, noise, timesteps)
        x0_read, noise_read = schedule.split(schedule.training_target(x0, noise, timesteps), x_t, t, clip=False)
        torch.testing.assert_close(x0_read, x0, rtol=0, atol=1e-4)
        torch.testing.assert_close(noise_read, noise, rtol=0, atol=1e-4)


def test_checkpoints_outside_the_model_folder_leave_it_unwritten_until_the_end(flat_dataset, tmp_path):
    out, checkpoint = tmp_path / "model", tmp_path / "runs" / "checkpoint"
    run = train(tiny_card(), find_training_pairs(flat_dataset), out, _config(3), checkpoint_dir=checkpoint)
    next(run), next(run)  # two steps: one checkpoint written
    assert (checkpoint / "training_state.json").is_file() and (checkpoint / "loss_curve.png").is_file()
    assert not out.exists()
    drive(run)
    assert (out / "model.json").is_file() and (out / "loss_curve.png").is_file()
    assert not (out / "checkpoint").exists()


def test_resume_without_checkpoint_is_a_clear_error(flat_dataset, tmp_path):
    with pytest.raises(MedgenError, match="no checkpoint"):
        drive(train(tiny_card(), find_training_pairs(flat_dataset), tmp_path / "m", _config(2), resume=True))


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
        drive(train(tiny_card(), find_training_pairs(tmp_path), tmp_path / "m", _config(1)))


def test_pasted_tissue_keeps_image_and_labels_paired():
    """Copy-paste augmentation moves image and labels together and touches nothing outside the disc."""
    from napari_medgen.engine.training.augmentation import paste_tissue

    rng = np.random.default_rng(0)
    source_label = rng.integers(1, 4, (40, 40))
    source_image = source_label * 10.0 + 0.5  # an image that is a function of its labels
    label = np.zeros((32, 32), np.int64)
    label[4:28, 4:28] = 3
    image = np.where(label > 0, 99.0, -1.0)
    pasted_image, pasted_label, _ = paste_tissue(image, label, source_image, source_label, 10.0, rng)
    changed = pasted_label != label
    assert changed.any() and np.array_equal(pasted_image[changed], pasted_label[changed] * 10.0 + 0.5)
    moved = pasted_image != image
    assert np.array_equal(pasted_image[moved], pasted_label[moved] * 10.0 + 0.5)
    assert moved.sum() <= np.pi * 5.5**2 and label.max() == 3 and image.max() == 99.0  # inputs untouched


def test_a_checkpoint_of_the_earlier_format_resumes(flat_dataset, tmp_path):
    """Checkpoints written before the optimiser's settings, the schedule and the generators were kept
    (only ``optimizer.<index>.<name>`` tensors) resume with their weights and Adam's moments."""
    from safetensors.torch import save_file

    out, pairs = tmp_path / "model", find_training_pairs(flat_dataset)
    drive(train(tiny_card(), pairs, out, _config(2)))
    tensors, state = _checkpoint(out)
    earlier = {k: v for k, v in tensors.items() if k.startswith(("network.", "ema."))}
    earlier.update({k.replace("optimizer.state.", "optimizer."): v for k, v in tensors.items() if k.startswith("optimizer.state.")})
    save_file(earlier, str(out / "checkpoint" / "training_state.safetensors"))
    state = {k: state[k] for k in ("step", "losses", "seconds", "config")}
    (out / "checkpoint" / "training_state.json").write_text(json.dumps(state))
    _, events = drive(train(tiny_card(), pairs, out, _config(3), resume=True))
    assert [e.step for e in events] == [3]
    tensors, state = _checkpoint(out)
    assert all(float(v) == 3 for k, v in tensors.items() if k.startswith("optimizer.state.") and k.endswith(".step"))
    assert state["lr_schedule"]["last_epoch"] == 3


# -- batches made anywhere, prepared slices, further stages, time limits ----------------------------
def test_batches_are_the_same_made_in_worker_processes(flat_dataset):
    """Batch k depends on (seed, k) alone: made twice, out of order, or by worker processes (as on a GPU
    machine), it is the same batch, so runs are repeatable however their batches are made."""
    from napari_medgen.engine.training.batches import TrainingBatches, batch_stream
    from napari_medgen.engine.training.data import load_training_slices

    card = tiny_card()
    data = load_training_slices(card, find_training_pairs(flat_dataset))
    config = TrainingConfig(batch_size=3, crop_size=16, field_of_view_fraction=0.5, field_of_view_px=(8, 16))
    batches = TrainingBatches(card, data, config, seed=4)
    here = list(batch_stream(batches, 0, 4, workers=0))
    in_workers = list(batch_stream(batches, 0, 4, workers=2))
    for (image_a, stack_a, planes_a), (image_b, stack_b, planes_b) in zip(here, in_workers, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(stack_a, stack_b) and torch.equal(planes_a, planes_b)
    again = batches.batch(2)
    assert torch.equal(again[0], here[2][0]) and not torch.equal(here[1][0], here[2][0])


def test_field_of_view_batches_are_smaller_squares_the_network_divides(flat_dataset):
    from napari_medgen.engine.training.batches import TrainingBatches
    from napari_medgen.engine.training.data import load_training_slices

    card = tiny_card()
    data = load_training_slices(card, find_training_pairs(flat_dataset))
    whole = TrainingBatches(card, data, TrainingConfig(batch_size=2, crop_size=None), seed=0).batch(0)[0]
    config = TrainingConfig(batch_size=2, crop_size=None, field_of_view_fraction=1.0, field_of_view_px=(16, 40))
    shapes = {tuple(TrainingBatches(card, data, config, seed=0).batch(k)[0].shape[2:]) for k in range(6)}
    divisor = card.downsampling_factor
    assert all(h == w and 16 <= h <= 40 and h % divisor == 0 and h < whole.shape[2] for h, w in shapes)


def test_prepared_slices_round_trip_and_train_the_same(flat_dataset, tmp_path):
    from napari_medgen.engine.errors import VolumeReadError
    from napari_medgen.engine.training.data import load_slices, load_training_slices, save_slices

    card = tiny_card()
    data = load_training_slices(card, find_training_pairs(flat_dataset))
    again = load_slices(save_slices(data, tmp_path / "slices.npz"))
    assert np.array_equal(again.images, data.images) and np.array_equal(again.labels, data.labels)
    assert np.array_equal(again.positions, data.positions) and again.description == data.description
    from_pairs, from_file = tmp_path / "a", tmp_path / "b"
    drive(train(card, find_training_pairs(flat_dataset), from_pairs, _config(2)))
    drive(train(card, again, from_file, _config(2)))
    assert _same(load_file(from_pairs / "weights.safetensors"), load_file(from_file / "weights.safetensors"))
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(VolumeReadError, match="prepared training slices"):
        load_slices(tmp_path / "broken.npz")


def test_a_further_stage_starts_from_the_earlier_weights_and_records_them(flat_dataset, tmp_path):
    from napari_medgen.engine.model.weights import weights_sha256

    pairs = find_training_pairs(flat_dataset)
    first = drive(train(tiny_card(), pairs, tmp_path / "first", _config(2)))[0]
    config = TrainingConfig(steps=1, batch_size=2, crop_size=16, learning_rate=1e-12, warmup_steps=1, ema_decay=0.0,
                            device="cpu")
    second = drive(train(tiny_card(), pairs, tmp_path / "second", config, initial=first))[0]
    start, end = load_file(first / "weights.safetensors"), load_file(second / "weights.safetensors")
    assert all(torch.allclose(start[k].float(), end[k].float(), atol=1e-6) for k in start)  # a step of ~0
    record = json.loads((second / "model.json").read_text())["provenance"]["training"]["started_from"]
    assert record["weights_sha256"] == weights_sha256(first / "weights.safetensors")
    assert record["training"]["steps"] == 2
    other = tiny_card()
    other.network.kwargs["channels"] = [16, 16]
    with pytest.raises(MedgenError):
        drive(train(other, pairs, tmp_path / "third", config, initial=first))


def test_time_limit_stops_early_and_still_writes_the_model(flat_dataset, tmp_path):
    config = TrainingConfig(steps=50, batch_size=2, crop_size=16, warmup_steps=1, device="cpu", time_limit_s=0.0)
    folder, events = drive(train(tiny_card(), find_training_pairs(flat_dataset), tmp_path / "m", config))
    assert [e.step for e in events] == [1]
    training = json.loads((folder / "model.json").read_text())["provenance"]["training"]
    assert training["steps_done"] == 1 and training["steps"] == 50
    assert json.loads((tmp_path / "m" / "checkpoint" / "training_state.json").read_text())["step"] == 1


def _inside_tissue_gradient(image: np.ndarray, label: np.ndarray) -> float:
    from scipy import ndimage

    edges = np.zeros(label.shape, bool)
    for k in np.unique(label[label > 0]):
        tissue = label == k
        edges |= tissue & ~ndimage.binary_erosion(tissue)
    inside = (label > 0) & ~ndimage.binary_dilation(edges)
    return float(np.hypot(*np.gradient(image))[inside].mean())


def test_warped_training_slices_keep_the_scans_texture():
    """The geometric augmentation resamples the image bicubically by default: warped slices keep the gradient
    inside tissues the scan has (bilinear resampling smooths it, and a network trained on it renders flat tissues)."""
    from napari_medgen.engine.training.augmentation import augmentation

    t1 = read_volume(sample_dir() / "mni152_t1_2mm.nii.gz").array.astype(np.float32)
    labels = read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz").array
    slices = [(t1[z] / t1.max(), labels[z]) for z in range(30, 60, 3)]
    original = np.mean([_inside_tissue_gradient(image, label) for image, label in slices])
    ratios = {}
    for interpolation in ("bicubic", "bilinear"):
        augment = augmentation(warp_fraction=1.0, warp_interpolation=interpolation)
        augment.set_random_state(seed=3)
        warped = [augment({"image": image[None], "label": label[None].astype(np.float32)}) for image, label in slices]
        ratios[interpolation] = np.mean([
            _inside_tissue_gradient(np.asarray(w["image"])[0], np.rint(np.asarray(w["label"])[0]).astype(int)) for w in warped
        ]) / original
    assert 0.95 <= ratios["bicubic"] <= 1.08 and ratios["bilinear"] < ratios["bicubic"] - 0.04, ratios


def test_unknown_warp_interpolation_is_refused_before_training(flat_dataset, tmp_path):
    config = _config(2)
    config.warp_interpolation = "lanczos"
    with pytest.raises(MedgenError, match="warp_interpolation"):
        drive(train(tiny_card(), find_training_pairs(flat_dataset), tmp_path / "model", config))
    assert not (tmp_path / "model").exists()
