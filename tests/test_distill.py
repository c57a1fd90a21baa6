"""Step distillation (issue 16): the student's targets land where the teacher's path lands, a few updates on
a tiny teacher write a loadable student whose card names its steps and sampler, resume continues the same
run, runs follow the card's sampling defaults, and the shipped fast model follows painted anatomy."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.ndimage import binary_erosion
from test_demo_model import painted_slice  # noqa: F401 (the fixture: a grey-matter disc painted into white matter)
from reliability_helpers import drive
from tiny_models import make_tiny_model, tiny_card

from napari_medgen._paths import sample_dir
from napari_medgen.cli import main
from napari_medgen.engine.diffusion.methods import DEFAULT_SAMPLER
from napari_medgen.engine.diffusion.samplers import ddim_update, sample
from napari_medgen.engine.diffusion.schedule import NoiseSchedule
from napari_medgen.engine.errors import MedgenError, ModelCardError
from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.model.card import parse_card
from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.synthesis import generate
from napari_medgen.engine.synthesis.options import DEFAULT_STEPS, SamplingOptions, resolve_options
from napari_medgen.engine.training import find_training_pairs
from napari_medgen.engine.training.distill import (
    DistillationConfig,
    _ScheduleTensors,
    distill,
    student_intervals,
    teacher_path,
)
from napari_medgen.engine.volume import Volume


@pytest.fixture(scope="module")
def slabs(tmp_path_factory) -> Path:
    """One case named <case>_image / <case>_label: a 3-slice slab of the sample brain."""
    folder = tmp_path_factory.mktemp("data")
    t1 = read_volume(sample_dir() / "mni152_t1_2mm.nii.gz")
    labels = read_volume(sample_dir() / "mni152_tissue_labels_2mm.nii.gz")
    origin = t1.index_to_physical(np.array([0.0, 0.0, 45.0]))
    for volume, suffix in ((t1, "image"), (labels, "label")):
        slab = Volume(volume.array[45:48].copy(), volume.spacing, tuple(origin), volume.direction)
        write_volume(slab, folder / f"a_{suffix}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("teacher") / "tiny-teacher", name="tiny-teacher")


def _config(updates: int, **kw) -> DistillationConfig:
    return DistillationConfig(student_steps=3, teacher_steps=5, teacher_sampler="dpm++2m", steps=updates, batch_size=2, crop_size=16, warmup_steps=1,
                              checkpoint_every=2, device="cpu", **kw)


# -- the maths ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_student_target_lands_on_the_teacher_path_through_the_ddim_sampler(prediction_type):
    card = tiny_card()
    card.scheduler.prediction_type = prediction_type
    schedule = NoiseSchedule(card.scheduler)
    maths = _ScheduleTensors(schedule, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for t, s in ((99, 66), (66, 33), (33, 0)):
        x_t = torch.randn((2, 1, 8, 8), generator=generator)
        x_s = 0.5 * torch.randn((2, 1, 8, 8), generator=generator)
        target = maths.target(x_t, x_s, torch.tensor([t, t]), torch.tensor([s, s]))
        # The sampling loop's own step from the student's prediction (no clipping: a random x_s may need x0 > 1).
        x0, eps = schedule.split(target, x_t, t, clip=False)
        landed = ddim_update(schedule, x0, eps, t, s, 0.0, torch.randn_like, x_t)
        torch.testing.assert_close(landed, x_s, rtol=1e-4, atol=1e-4)


def test_teacher_path_is_the_teachers_grid_cut_at_the_students_timesteps():
    schedule = NoiseSchedule(tiny_card().scheduler)  # 100 training steps
    ddim = student_intervals(schedule, 3, 5, "ddim")
    assert ddim == [[99, 74, 50], [50, 25, 0]]  # the 3-step DDIM grid 99, 50, 0 (the last call only cleans up)
    dpm = student_intervals(schedule, 3, 8, "dpm++2m")
    teacher_grid = schedule.timesteps(8, "log_snr")
    assert [dpm[0][0], dpm[0][-1], dpm[1][0], dpm[1][-1]] == [99, 50, 50, 0]
    assert sorted({u for path in dpm for u in path}, reverse=True) == sorted(set(teacher_grid) | {50}, reverse=True)
    assert all(a > b for path in dpm for a, b in itertools.pairwise(path))
    with pytest.raises(MedgenError, match="no longer than"):
        student_intervals(schedule, 4, 4, "dpm++2m")
    with pytest.raises(MedgenError, match="no step between"):  # 5 log-SNR steps on 100: none between 99 and 66
        student_intervals(schedule, 4, 5, "dpm++2m")


# dpm++2m at 12 steps: the first path is 99, 81, 63, 50, so the path without its end holds a second-order step.
@pytest.mark.parametrize(("sampler", "steps"), [("ddim", 5), ("dpm++2m", 12), ("dpm++2m-sde", 12)])
def test_teacher_path_is_where_the_teachers_own_sampling_loop_goes(sampler, steps):
    """From the top of the schedule, `teacher_path` lands where the sampling loop of the teacher's sampler (a
    stochastic one's deterministic form) is at the student's next timestep."""
    card = tiny_card()
    schedule = NoiseSchedule(card.scheduler)
    torch.manual_seed(1)
    teacher = torch.nn.Conv2d(1 + 4, 1, 3, padding=1)
    net = lambda stack, t: teacher(stack) * (1 + t.view(-1, 1, 1, 1).float() / 100)
    x_t, cond = torch.randn(2, 1, 8, 8), torch.randn(2, 4, 8, 8)
    first = student_intervals(schedule, 3, steps, sampler)[0]
    got = teacher_path(net, schedule, x_t, cond, first, sampler)
    seen = {}

    def denoise(x, t):
        seen[t] = x.clone()
        with torch.no_grad():
            return net(torch.cat([x, cond], 1), torch.full((2,), t))

    loop = sample("dpm++2m" if sampler.startswith("dpm") else "ddim", denoise, x_t, schedule, steps, torch.randn_like)
    for _ in loop:
        pass
    if sampler == "ddim":  # DDIM's even grid: the path's end is on it
        torch.testing.assert_close(got, seen[first[-1]], rtol=1e-5, atol=1e-5)
    else:  # the student's timestep is added to the log-SNR grid: the loop passes it between two of its steps
        assert first[-1] not in seen
        assert (got - seen[first[-2]]).abs().mean() < (x_t - seen[first[-2]]).abs().mean()
        inner = teacher_path(net, schedule, x_t, cond, first[:-1], sampler)
        torch.testing.assert_close(inner, seen[first[-2]], rtol=1e-5, atol=1e-5)


# -- the loop -------------------------------------------------------------------------------------
def test_distillation_writes_a_loadable_student_whose_runs_follow_its_card(slabs, teacher_folder, tmp_path):
    teacher = load_model(teacher_folder, device="cpu")
    out = tmp_path / "student"
    folder, events = drive(distill(teacher, find_training_pairs(slabs), out, _config(3), data_description="one slab"))
    assert folder == out and [e.step for e in events] == [1, 2, 3] and all(np.isfinite(e.loss) for e in events)
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "checkpoint" / "loss_curve.png").is_file()
    saved = json.loads((out / "model.json").read_text())
    assert saved["name"] == "tiny-teacher-fast" and {k: saved["sampling"][k] for k in ("steps", "sampler")} == {"steps": 3, "sampler": "ddim"}
    record = saved["provenance"]["distillation"]
    assert record["student_steps"] == 3 and record["teacher_path"]["sampler"] == "dpm++2m" and record["steps"] == 3
    assert record["teacher_path"]["steps"] == 5 and [p[-1] for p in record["teacher_path"]["intervals"]] == [50, 0]
    assert record["student_timesteps"] == [99, 50, 0] and len(record["final_loss_per_student_step"]) == 2
    assert saved["provenance"]["teacher"]["name"] == "tiny-teacher"
    assert saved["provenance"]["teacher"]["weights_sha256"] == teacher.weights_sha256
    # The student is the teacher's architecture and conditioning with new weights.
    assert saved["network"] == json.loads((teacher_folder / "model.json").read_text())["network"]
    student = load_model(out, device="cpu")
    changed = [k for k, v in load_file(str(out / "weights.safetensors")).items()
               if not torch.equal(v, load_file(str(teacher_folder / "weights.safetensors"))[k])]
    assert changed
    label_map = read_volume(slabs / "a_label.nii.gz")
    results, progress = drive(generate(student, label_map, seed=1, preview_every=0))
    # Asked for nothing, a run takes the card's 3 DDIM steps: 3 calls per batch of slices.
    assert progress[-1].step == progress[-1].total and progress[-1].total % 3 == 0
    run_record = results[0].metadata["provenance"]
    assert run_record["steps"] == 3 and run_record["sampler"] == "ddim"
    # Asked for more, the user's steps win.
    _, asked = drive(generate(student, label_map, seed=1, steps=5, preview_every=0))
    assert asked[-1].total == progress[-1].total // 3 * 5


def test_resumed_distillation_continues_the_same_run(slabs, teacher_folder, tmp_path):
    teacher = load_model(teacher_folder, device="cpu")
    pairs = find_training_pairs(slabs)
    straight, _ = drive(distill(teacher, pairs, tmp_path / "straight", _config(4)))
    first = distill(teacher, pairs, tmp_path / "resumed", _config(4))
    for _ in range(2):  # stop after the checkpoint at update 2
        next(first)
    first.close()
    resumed, events = drive(distill(teacher, pairs, tmp_path / "resumed", _config(4), resume=True))
    assert [e.step for e in events] == [3, 4]
    a = load_file(str(straight / "weights.safetensors"))
    b = load_file(str(resumed / "weights.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    with pytest.raises(MedgenError, match="no checkpoint"):
        drive(distill(teacher, pairs, tmp_path / "nothing", _config(2), resume=True))


def test_the_path_defaults_to_the_teacher_cards_sampling_and_a_resume_keeps_it(slabs, tmp_path):
    folder = make_tiny_model(tmp_path / "dpm-teacher", name="dpm-teacher")
    card = json.loads((folder / "model.json").read_text())
    card["sampling"] = {"steps": 8, "sampler": "dpm++2m"}
    (folder / "model.json").write_text(json.dumps(card))
    teacher = load_model(folder, device="cpu")
    pairs = find_training_pairs(slabs)
    config = DistillationConfig(student_steps=3, steps=2, batch_size=2, crop_size=16, warmup_steps=1, checkpoint_every=1,
                                device="cpu")
    out, _ = drive(distill(teacher, pairs, tmp_path / "student", config))
    record = json.loads((out / "model.json").read_text())["provenance"]["distillation"]
    schedule = NoiseSchedule(teacher.card.scheduler)
    assert record["teacher_path"] == {"sampler": "dpm++2m", "steps": 8,
                                      "intervals": student_intervals(schedule, 3, 8, "dpm++2m")}
    assert record["teacher_calls_per_update"] == 4.0  # 2 and 6 calls on the paths 99-70-50 and 50-...-0
    # The same weights sampled another way make another path: its checkpoint is not resumed by mistake.
    other = DistillationConfig(**{**config.__dict__, "steps": 3, "teacher_sampler": "ddim", "teacher_steps": 5})
    with pytest.raises(MedgenError, match="another teacher path"):
        drive(distill(teacher, pairs, tmp_path / "student", other, resume=True))
    with pytest.raises(MedgenError, match="unknown teacher sampler"):
        drive(distill(teacher, pairs, tmp_path / "x", DistillationConfig(**{**config.__dict__, "teacher_sampler": "euler"})))


def test_distill_command_line(slabs, teacher_folder, tmp_path, capsys):
    out = tmp_path / "cli-student"
    code = main(["distill", "--teacher", str(teacher_folder), "--out", str(out), "--data", str(slabs), "--steps", "3",
                 "--teacher-steps", "5", "--updates", "2", "--batch-size", "2", "--name", "tiny-quick", "--progress", "none",
                 "--device", "cpu"])
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    card = json.loads((out / "model.json").read_text())
    assert card["name"] == "tiny-quick" and card["sampling"]["steps"] == 3
    # A teacher other than the demo needs its data named.
    assert main(["distill", "--teacher", str(teacher_folder), "--out", str(tmp_path / "x"), "--progress", "none"]) != 0
    assert "--data" in capsys.readouterr().err


# -- sampling defaults from the card --------------------------------------------------------------
def test_options_take_the_cards_sampling_defaults_when_none_are_asked_for():
    raw = tiny_card().model_dump(mode="json")
    plain = parse_card(raw)
    fast = parse_card({**raw, "sampling": {"steps": 4, "sampler": "ddim"}})
    assert (resolve_options(None, {}, fast).steps, resolve_options(None, {}, fast).sampler) == (4, "ddim")
    assert (resolve_options(None, {}, plain).steps, resolve_options(None, {}, plain).sampler) == (DEFAULT_STEPS, DEFAULT_SAMPLER)
    asked = resolve_options(SamplingOptions(steps=12, sampler="dpm++2m"), {}, fast)
    assert (asked.steps, asked.sampler) == (12, "dpm++2m")
    with pytest.raises(ModelCardError, match="sampling"):
        parse_card({**raw, "sampling": {"steps": 4, "sampler": "euler"}})
    with pytest.raises(ModelCardError, match="sampling"):
        parse_card({**raw, "sampling": {"steps": 0, "sampler": "ddim"}})


def test_sampling_controls_take_the_models_steps_and_sampler(qtbot, tmp_path):
    from napari_medgen.widgets.sampling_controls import SamplingControls
    from napari_medgen.widgets.session import ModelSession

    plain = make_tiny_model(tmp_path / "plain", name="plain")
    fast = make_tiny_model(tmp_path / "fast", name="fast")
    card = json.loads((fast / "model.json").read_text())
    card["sampling"] = {"steps": 3, "sampler": "dpm++2m"}
    (fast / "model.json").write_text(json.dumps(card))
    session = ModelSession()
    controls = SamplingControls(session)
    assert (controls.steps.value, controls.sampler.value) == (DEFAULT_STEPS, DEFAULT_SAMPLER)
    session.set_model(load_model(fast, device="cpu"))
    assert (controls.steps.value, controls.sampler.value) == (3, "dpm++2m")
    assert (controls.options().steps, controls.options().sampler) == (3, "dpm++2m")
    session.set_model(load_model(plain, device="cpu"))
    assert (controls.steps.value, controls.sampler.value) == (DEFAULT_STEPS, DEFAULT_SAMPLER)


# -- the shipped fast model -----------------------------------------------------------------------
def test_shipped_fast_model_follows_painted_tissue(painted_slice):  # noqa: F811
    label_map, z, disc = painted_slice
    model = load_model("brain-t1-demo-fast", device="cpu")
    assert model.source == "shipped" and model.card.sampling is not None and model.card.sampling.steps <= 4
    assert (model.folder / "weights.safetensors").stat().st_size < 20 * 2**20
    (result,), progress = drive(generate(model, label_map, seed=3, preview_every=0, slice_range=(z, z + 1)))
    assert progress[-1].total == model.card.sampling.steps  # its own few steps when asked for nothing
    image, labels = result.array[0], label_map.array[z]
    mean = {k: float(image[binary_erosion(labels == k)].mean()) for k in (1, 2, 3)}
    assert mean[1] < mean[2] < mean[3], mean
    assert mean[3] - mean[2] > 0.1 * (mean[3] - mean[1]), mean
    ring = binary_erosion(labels == 3) & ~disc
    near = np.zeros_like(ring)
    cy, cx = np.argwhere(disc).mean(0).round().astype(int)
    near[max(cy - 8, 0) : cy + 9, max(cx - 8, 0) : cx + 9] = True
    assert image[disc].mean() < image[ring & near].mean() - 0.5 * (mean[3] - mean[2]), (image[disc].mean(), image[ring & near].mean())
    assert np.abs(image[labels == 0]).mean() < 0.1 * mean[3]
