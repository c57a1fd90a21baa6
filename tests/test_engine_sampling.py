"""The sampling loops on analytic denoisers: exactness, order, determinism, RePaint's walk, closing.

No networks here: the denoisers are closed-form (a point mass or a Gaussian data distribution), so
the right answer is known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medgen.engine.diffusion.samplers import SAMPLERS, repaint_schedule, sample, sample_repaint, sampler_steps
from napari_medgen.engine.diffusion.schedule import NoiseSchedule
from napari_medgen.engine.model.card_sections import SchedulerSpec


def drive(gen):
    """Run a step generator to its end: (events, returned value)."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def _schedule(prediction_type="epsilon", num_train_timesteps=100, schedule="scaled_linear_beta") -> NoiseSchedule:
    return NoiseSchedule(
        SchedulerSpec(num_train_timesteps=num_train_timesteps, prediction_type=prediction_type, schedule=schedule)
    )


def _seeded_noise(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype)


def _no_noise(x):
    raise AssertionError("a deterministic sampler drew noise")


def _point_mass_denoiser(schedule: NoiseSchedule, x0: torch.Tensor, calls: list | None = None):
    """The exact network output for data that is the single image `x0`, for the schedule's prediction type."""

    def denoise(x_t, t):
        if calls is not None:
            calls.append((t, x_t.clone()))
        a = schedule.alpha_bar(t)
        eps = (x_t - a**0.5 * x0) / (1 - a) ** 0.5
        if schedule.prediction_type == "epsilon":
            return eps
        if schedule.prediction_type == "v_prediction":
            return a**0.5 * eps - (1 - a) ** 0.5 * x0
        return x0.clone()

    return denoise


def _gaussian_denoiser(schedule: NoiseSchedule, mu: float, s: float):
    """The exact epsilon prediction for data x0 ~ N(mu, s^2) per voxel."""

    def denoise(x_t, t):
        a = schedule.alpha_bar(t)
        x0 = mu + s * s * a**0.5 / (a * s * s + 1 - a) * (x_t - a**0.5 * mu)
        return (x_t - a**0.5 * x0) / (1 - a) ** 0.5

    return denoise


# -- the schedule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 3, 7, 20, 100, 500])
def test_timesteps_descend_from_the_last_training_step_to_zero(steps):
    schedule = _schedule()
    timesteps = schedule.timesteps(steps)
    assert len(timesteps) == min(steps, 100)
    assert timesteps == sorted(set(timesteps), reverse=True)
    assert timesteps[0] == 99
    # One step goes from pure noise straight to the clean estimate; more end at t = 0.
    assert timesteps[-1] == (0 if steps > 1 else 99)


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_log_snr_timesteps_are_evenly_spaced_in_log_snr(steps):
    """DPM-Solver++'s timesteps: from T-1 to 0, equal log-SNR steps (to the rounding of integer t)."""
    schedule = _schedule(num_train_timesteps=1000, schedule="linear_beta")
    timesteps = schedule.timesteps(steps, "log_snr")
    # Near t = 0 one integer step spans much log-SNR, so two targets may share a timestep.
    assert timesteps[0] == 999 and timesteps[-1] == 0 and steps - 2 <= len(timesteps) <= steps
    a = np.array([schedule.alpha_bar(t) for t in timesteps])
    gaps = np.diff(0.5 * np.log(a / (1 - a)))
    even = np.array([schedule.alpha_bar(t) for t in schedule.timesteps(steps)])
    even_gaps = np.diff(0.5 * np.log(even / (1 - even)))
    assert np.all(gaps > 0) and np.median(np.abs(gaps / gaps.mean() - 1)) < 0.1
    assert np.std(even_gaps) / even_gaps.mean() > 3 * np.std(gaps) / gaps.mean()
    # More steps at low noise than even spacing in t gives: the median timestep is lower.
    assert np.median(timesteps) < np.median(schedule.timesteps(steps))
    assert sampler_steps("dpm++2m", steps, schedule) == len(timesteps)


def test_alpha_bar_decreases_and_clean_image_is_one():
    schedule = _schedule()
    values = [schedule.alpha_bar(t) for t in range(100)]
    assert all(0 < b < a <= 1 for a, b in zip(values, values[1:], strict=False))
    assert schedule.alpha_bar(-1) == 1.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_split_recovers_x0_and_noise(prediction_type):
    schedule = _schedule(prediction_type)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 1, 8, 8, generator=generator, dtype=torch.float64) * 1.6 - 0.8
    noise = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    for t in (0, 10, 50, 99):
        x_t = schedule.add_noise(x0, noise, t)
        est_x0, est_eps = schedule.split(_point_mass_denoiser(schedule, x0)(x_t, t), x_t, t)
        torch.testing.assert_close(est_x0, x0, rtol=0, atol=1e-9)
        torch.testing.assert_close(est_eps, noise, rtol=0, atol=1e-6)


# -- the samplers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_run_and_return_finite_values(sampler):
    schedule = _schedule()
    x_t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    weight = torch.linspace(-0.5, 0.5, 64).reshape(1, 1, 8, 8)

    def denoise(x, t):  # an arbitrary smooth "network"
        return torch.tanh(x * (1 + t / 100) + weight)

    events, result = drive(sample(sampler, denoise, x_t, schedule, 5, _seeded_noise()))
    assert [e[0] for e in events] == [1, 2, 3, 4, 5]
    assert all(e[1] == 5 for e in events)
    assert result.shape == x_t.shape
    assert torch.isfinite(result).all()
    assert result.abs().max() <= 1.0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_perfect_denoiser_gives_the_image_back(sampler, prediction_type):
    schedule = _schedule(prediction_type)
    generator = torch.Generator().manual_seed(2)
    x0 = (torch.rand(2, 1, 8, 8, generator=generator, dtype=torch.float64) * 1.8 - 0.9)
    x_t = torch.randn(2, 1, 8, 8, generator=generator, dtype=torch.float64)
    noise = lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype)  # noqa: E731
    _, result = drive(sample(sampler, _point_mass_denoiser(schedule, x0), x_t, schedule, 4, noise))
    torch.testing.assert_close(result, x0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("schedule_kind", ["scaled_linear_beta", "linear_beta", "cosine"])
def test_dpm_solver_follows_the_exact_trajectory_of_a_point_mass(schedule_kind):
    """With a perfect denoiser, every state the solver visits lies on the exact ODE path
    sqrt(a_t) x0 + sqrt(1 - a_t) eps0: this checks the solver's coefficients, not just its last step."""
    schedule = _schedule(schedule=schedule_kind, num_train_timesteps=1000)
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand(1, 1, 16, 16, generator=generator, dtype=torch.float64) * 1.8 - 0.9
    eps0 = torch.randn(1, 1, 16, 16, generator=generator, dtype=torch.float64)
    first = schedule.timesteps(6)[0]
    x_t = schedule.add_noise(x0, eps0, first)
    calls: list = []
    _, result = drive(sample("dpm++2m", _point_mass_denoiser(schedule, x0, calls), x_t, schedule, 6, _no_noise))
    assert [t for t, _ in calls] == schedule.timesteps(6, "log_snr")
    for t, seen in calls:
        torch.testing.assert_close(seen, schedule.add_noise(x0, eps0, t), rtol=0, atol=1e-9)
    torch.testing.assert_close(result, x0, rtol=0, atol=1e-12)


def test_dpm_solver_is_more_accurate_than_ddim_on_gaussian_data():
    """For Gaussian data the probability-flow ODE is solved in closed form; DPM-Solver++(2M), a
    second-order method, must land much closer to it than first-order DDIM with the same steps."""
    schedule = _schedule(num_train_timesteps=1000)
    mu, s = 0.1, 0.2
    x_T = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    first = schedule.timesteps(10)[0]
    a_T = schedule.alpha_bar(first)
    z = (x_T - a_T**0.5 * mu) / (a_T * s * s + 1 - a_T) ** 0.5

    def exact(t):  # the ODE's solution at timestep t, from x_T
        a = schedule.alpha_bar(t)
        return a**0.5 * mu + (a * s * s + 1 - a) ** 0.5 * z

    denoise = _gaussian_denoiser(schedule, mu, s)
    errors = {}
    for sampler in ("ddim", "dpm++2m"):
        calls: list = []

        def recording(x, t, calls=calls):
            calls.append((t, x.clone()))
            return denoise(x, t)

        drive(sample(sampler, recording, x_T.clone(), schedule, 10, _no_noise))
        # The state at the last timestep (t = 0), before the final estimate.
        t, state = calls[-1]
        errors[sampler] = float((state - exact(t)).abs().max())
    assert errors["dpm++2m"] < 0.5 * errors["ddim"], errors


@pytest.mark.parametrize(
    "sampler, steps, tolerance",
    # The ODE solver is accurate at few steps; a stochastic solver's noise injection is right only
    # if it converges to the data's spread as the steps grow (on evenly spaced timesteps the 2M SDE
    # over-disperses by up to 25 % at 20-50 steps on this toy, which the exact denoiser exposes).
    [("dpm++2m", 20, 0.05), ("dpm++2m-sde", 999, 0.02)],
)
def test_samplers_draw_from_the_data_distribution_of_gaussian_data(sampler, steps, tolerance):
    """With the exact denoiser of N(mu, s^2) data the samples must have that mean and spread."""
    schedule = _schedule(num_train_timesteps=1000)
    mu, s = 0.1, 0.2
    generator = torch.Generator().manual_seed(5)
    x_T = torch.randn(20000, generator=generator, dtype=torch.float64)
    noise = lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype)  # noqa: E731
    _, result = drive(sample(sampler, _gaussian_denoiser(schedule, mu, s), x_T, schedule, steps, noise))
    assert abs(float(result.mean()) - mu) < 0.01
    assert abs(float(result.std()) / s - 1) < tolerance, float(result.std())


def test_ddim_with_eta_zero_is_deterministic_and_draws_no_noise():
    schedule = _schedule()
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))

    def denoise(x, t):
        return torch.sin(x + t)

    _, first = drive(sample("ddim", denoise, x_t.clone(), schedule, 6, _no_noise, eta=0.0))
    _, second = drive(sample("ddim", denoise, x_t.clone(), schedule, 6, _no_noise, eta=0.0))
    assert torch.equal(first, second)
    _, dpm = drive(sample("dpm++2m", denoise, x_t.clone(), schedule, 6, _no_noise))
    assert torch.isfinite(dpm).all()


@pytest.mark.parametrize("sampler, eta", [("ddim", 1.0), ("ddpm", 0.0), ("dpm++2m-sde", 0.0), ("dpm++2m", 0.5)])
def test_stochastic_samplers_depend_on_the_noise_seed(sampler, eta):
    schedule = _schedule()
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))

    def denoise(x, t):
        return torch.sin(x + t)

    _, a = drive(sample(sampler, denoise, x_t.clone(), schedule, 6, _seeded_noise(1), eta=eta))
    _, b = drive(sample(sampler, denoise, x_t.clone(), schedule, 6, _seeded_noise(1), eta=eta))
    _, c = drive(sample(sampler, denoise, x_t.clone(), schedule, 6, _seeded_noise(2), eta=eta))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_closing_a_sampler_stops_before_the_next_network_call(sampler):
    schedule = _schedule()
    calls = []

    def denoise(x, t):
        calls.append(t)
        return torch.zeros_like(x)

    steps = sample(sampler, denoise, torch.zeros(1, 1, 8, 8), schedule, 10, _seeded_noise())
    next(steps)
    next(steps)
    steps.close()
    assert len(calls) == 2


# -- RePaint ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n_steps, jump_length, jump_count",
    [(10, 3, 4), (20, 5, 3), (7, 10, 10), (12, 1, 2), (5, 2, 1), (1, 3, 3), (9, 0, 5)],
)
def test_repaint_schedule_terminates_and_goes_down_overall(n_steps, jump_length, jump_count):
    timesteps = _schedule().timesteps(n_steps)
    walk = repaint_schedule(timesteps, jump_length, jump_count)
    chain = timesteps + [-1]
    # A connected walk from the first timestep to the clean image.
    assert walk[0][0] == timesteps[0]
    assert walk[-1] == (timesteps[-1], -1)
    for (_, s), (t_next, _) in zip(walk, walk[1:], strict=False):
        assert s == t_next
    # Each move is one step along the chain, up or down.
    for t, s in walk:
        assert t != s and abs(chain.index(t) - chain.index(s)) == 1
    down = sum(1 for t, s in walk if s < t)
    up = sum(1 for t, s in walk if s > t)
    assert down - up == len(timesteps)
    if jump_count > 1 and 0 < jump_length < len(timesteps):
        jump_points = sum(1 for i in range(1, len(timesteps)) if i % jump_length == 0)
        assert up == (jump_count - 1) * jump_length * jump_points
    else:
        assert up == 0
    # Down overall: a jump never goes back more than jump_length above the furthest point reached.
    positions = [chain.index(t) for t, _ in walk] + [len(chain) - 1]
    furthest = 0
    for p in positions:
        furthest = max(furthest, p)
        assert p >= furthest - max(jump_length, 0)
    assert positions[-1] == len(chain) - 1


def test_repaint_keeps_the_known_part_exactly_and_fills_the_rest():
    schedule = _schedule()
    generator = torch.Generator().manual_seed(5)
    known = torch.rand(2, 1, 8, 8, generator=generator) * 2 - 1
    keep = torch.zeros(2, 1, 8, 8)
    keep[..., :4] = 1.0
    target = torch.full_like(known, 0.25)  # what the "model" would paint everywhere
    x_t = torch.randn(2, 1, 8, 8, generator=generator)
    calls = []

    def denoise(x, t):
        calls.append(t)
        return _point_mass_denoiser(schedule, target)(x, t)

    events, result = drive(
        sample_repaint(denoise, x_t, schedule, 6, _seeded_noise(), known, keep, jump_length=2, jump_count=3)
    )
    walk = repaint_schedule(schedule.timesteps(6), 2, 3)
    assert len(calls) == sum(1 for t, s in walk if s < t) == len(events)
    assert events[-1][0] == events[-1][1] == len(calls)
    assert torch.equal(result[..., :4], known[..., :4])
    torch.testing.assert_close(result[..., 4:], target[..., 4:], rtol=0, atol=1e-5)
