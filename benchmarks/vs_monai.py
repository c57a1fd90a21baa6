"""Our `generate` against MONAI's reference loop on the same work (issue 6, item 1).

    python benchmarks/vs_monai.py [--slices 4] [--size 128] [--steps 10] [--repeats 3] [--threads N] [--smoke]

Same network (the demo model's: trained weights when present, else its architecture with random
weights), same conditioning (label one-hot, known-image/mask and slice-position channels, passed to
MONAI the way it expects: concatenated channels, `mode="concat"`), same initial noise, same number of
DDIM steps:

- ours: `napari_medgen.engine.synthesis.generate(..., sampler="ddim")`, end to end (resampling,
  conditioning, noise, sampling, intensity mapping, output geometry, provenance);
- MONAI: `DiffusionInferer.sample` with `DDIMScheduler` (+ building the conditioning tensor).

Wall time: the two alternate in one process (A B A B ...), median of `--repeats`; the ratio is of the
medians. Peak memory: each in a fresh process, the high-water mark of resident memory during the run
minus the resident memory before it (model loaded).

Equal output: both take the same timesteps (MONAI's `set_timesteps` and ours space them alike), but
MONAI's DDIM steps from t to t - T // n (n: its `num_inference_steps`) whatever timestep its list holds
next, and keeps the unclipped noise estimate, while ours steps to the next timestep and re-derives the
noise from the clipped x0 (see engine/diffusion/samplers.py): the two DDIMs differ by design (reported as
`default_settings`). To check that both do the same work with the same result, a second pair of runs
puts each on the other's terms through public interfaces only:
- MONAI with `clip_sample=False` and `num_inference_steps = steps - 1`, so that T // n is our spacing and
  each step lands on the next timestep of the list (exact when steps - 1 divides T - 1: 4, 10, 28 ... for
  T = 1000; other step counts are refused);
- ours: the engine's own sampling loop (`diffusion.samplers.sample`) with the engine's `Denoiser` and
  `generate`'s noise, given a schedule that does not clip x0 (`UnclippedSchedule`, a subclass passed to
  the loop as its `schedule` argument; nothing in the engine is patched). A third run, the same loop on the
  engine's own schedule (and the card's background label set to its background intensity, as `generate`
  finishes an image), must reproduce `generate`'s output: the directly driven loop is `generate`'s.
These outputs must match to float rounding.

Our default against MONAI's default: `generate` at the engine's default precision (`auto`: bf16 where the
processor runs it natively, else fp32) against MONAI's loop as it runs by default (fp32); the equal-output
checks above are at equal precision (fp32 both).

Where the time goes: one network call on the same batch, MONAI's network as built (under no_grad)
against the same network under inference_mode, with fused attention, and channels-last.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_medgen.engine.diffusion.schedule import NoiseSchedule

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from plain_network import plain_network  # noqa: E402

# Equal output: max |ours - MONAI| over max(|MONAI|, 1), in the network's units; float32 rounding
# through `steps` network calls and 1/sqrt(alpha_bar) amplification at the noisiest step stays far below.
TOLERANCE = 1e-4
SMOKE = {"slices": 1, "size": 64, "steps": 4, "repeats": 1}


def reference_network(model) -> torch.nn.Module:
    """A fresh MONAI network of the card's class with the model's weights, as a MONAI user builds it."""
    from monai.networks import nets

    spec = model.card.network
    network = getattr(nets, spec.class_name)(**spec.kwargs)
    network.load_state_dict({k: v.contiguous() for k, v in model.networks["network"].state_dict().items()})
    # a network trained on three planes takes the plane as its class label: axial slices here, as `generate` runs them
    return plain_network(network.eval().requires_grad_(False), model.card)


def monai_scheduler(card, clip: bool = True):
    from monai.networks.schedulers import DDIMScheduler

    spec = card.scheduler
    args = {} if spec.schedule == "cosine" else {"beta_start": spec.beta_start, "beta_end": spec.beta_end}
    return DDIMScheduler(
        num_train_timesteps=spec.num_train_timesteps, schedule=spec.schedule, prediction_type=spec.prediction_type,
        clip_sample=clip, **args,
    )


def engine_conditioning(card, labels: np.ndarray) -> np.ndarray:
    """The conditioning channels `generate` feeds for a whole-volume label map (plain generation)."""
    from napari_medgen.engine.diffusion.denoiser import conditioning_stack

    n = labels.shape[0]
    positions = np.arange(n) / max(n - 1, 1)
    return conditioning_stack(card, labels.astype(np.int64), None, None, positions if card.conditioning.slice_position else None)


def engine_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:  # shape: (slices, y, x)
    """The initial noise `generate` draws: one generator per slice, keyed by seed and slice index."""
    generators = [torch.Generator().manual_seed(seed * 100003 + k) for k in range(shape[0])]
    return torch.stack([torch.randn((1,) + tuple(shape[1:]), generator=g) for g in generators])


class UnclippedSchedule(NoiseSchedule):
    """The model's noise schedule with x0 left unclipped, as MONAI's `DDIMScheduler(clip_sample=False)`
    leaves it: handed to the engine's sampling loop, which takes any schedule (no engine code changes)."""

    def split(self, output: torch.Tensor, x_t: torch.Tensor, t: int, clip: bool = True):
        return super().split(output, x_t, t, clip=False)


def check_matchable(steps: int, num_train_timesteps: int) -> str | None:
    """Why MONAI's DDIM cannot follow our timesteps exactly at `steps` (None when it can)."""
    if steps < 3 or (num_train_timesteps - 1) % (steps - 1):
        return (f"--steps {steps}: MONAI's DDIM follows our timesteps only when steps - 1 divides "
                f"{num_train_timesteps - 1} (steps >= 3), e.g. 4, 10, 28")
    return None


class Pair:
    """The two implementations on one input."""

    def __init__(self, model, slices: int, size: int, steps: int, seed: int) -> None:
        from monai.inferers import DiffusionInferer

        from napari_medgen.engine.intensity import intensity_map_for

        # Equal work: where the card names a background label, `generate` runs the network only on the anatomy's box
        # (the rest is the background); MONAI's loop has nothing like it and runs the whole frame. Here both run the
        # whole frame: the model with a copy of its card that names no background label (and neither side sets one).
        card = model.card.model_copy(deep=True)
        card.normalization.background_label = None
        model = dataclasses.replace(model, card=card)
        self.model = model
        self.card = model.card
        self.label_map = common.brain_label_slices(slices, size)
        self.labels = self.label_map.array
        self.steps, self.seed = steps, seed
        self.network = reference_network(model)
        self.inferer = DiffusionInferer(monai_scheduler(self.card))
        self.intensity = intensity_map_for(self.card.normalization, None)

    def ours(self, previews: int = 0, steps: int | None = None) -> np.ndarray:
        from napari_medgen.engine.synthesis import generate

        # guidance 1 (none): MONAI's inferer has no classifier-free guidance, and the same work is the point;
        # each slice its own noise (correlation 0), as MONAI draws it and as `engine_noise` reproduces it.
        run = generate(self.model, self.label_map, sampler="ddim", steps=steps or self.steps, seed=self.seed, guidance=1.0,
                       batch_size=self.labels.shape[0], preview_every=previews, slice_noise_correlation=0.0)
        result = common.drive(run)[0]
        self.ran = common.ran(result)  # what the last run of ours did (its provenance)
        return result.array

    def ours_loop(self, schedule: NoiseSchedule) -> np.ndarray:
        """The engine's DDIM loop driven directly on `schedule`, with generate's denoiser, conditioning and noise."""
        from napari_medgen.engine.diffusion.denoiser import Denoiser
        from napari_medgen.engine.diffusion.samplers import sample

        def no_noise(x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("deterministic DDIM (eta 0) draws no noise")

        conditioning = torch.from_numpy(engine_conditioning(self.card, self.labels))
        denoise = Denoiser(self.model, conditioning, guidance=1.0)
        with torch.inference_mode():
            x0 = common.drive(sample("ddim", denoise, engine_noise(self.labels.shape, self.seed), schedule, self.steps, no_noise))
        return self.intensity.inverse(x0[:, 0].float().numpy())

    def monai(self, clip: bool = True, follow_ours: bool = False, steps: int | None = None) -> np.ndarray:
        """MONAI's loop; `follow_ours`: each step lands on the next timestep of the list (see the docstring)."""
        scheduler = monai_scheduler(self.card, clip)
        scheduler.set_timesteps(steps or self.steps)
        if follow_ours:
            ours = NoiseSchedule(self.card.scheduler).timesteps(self.steps)
            if scheduler.timesteps.tolist() != ours:
                raise RuntimeError(f"MONAI's timesteps {scheduler.timesteps.tolist()} are not ours {ours}")
            scheduler.num_inference_steps = self.steps - 1  # T // (steps - 1) is our spacing
        conditioning = torch.from_numpy(engine_conditioning(self.card, self.labels))
        noise = engine_noise(self.labels.shape, self.seed)
        out = self.inferer.sample(input_noise=noise, diffusion_model=self.network, scheduler=scheduler,
                                  conditioning=conditioning, mode="concat", verbose=False)
        return self.intensity.inverse(out[:, 0].numpy())  # same intensity mapping as ours

    def finished(self, intensities: np.ndarray) -> np.ndarray:
        """What `generate` makes of a sampled image: the card's background label exactly at its background
        intensity (card.normalization.background_label), so a raw loop output compares with `generate`'s."""
        norm = self.card.normalization
        if norm.background_label is None:
            return intensities
        return np.where(self.labels == norm.background_label, np.float32(norm.background), intensities)

    def normalised(self, intensities: np.ndarray) -> np.ndarray:
        return self.intensity.forward(intensities)


def difference(a: np.ndarray, b: np.ndarray, pair: Pair) -> dict:
    """How far apart two results are, in the network's units (the image range is [-1, 1])."""
    na, nb = pair.normalised(a), pair.normalised(b)
    diff = np.abs(na - nb)
    scale = max(float(np.abs(nb).max()), 1.0)
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "max_relative": float(diff.max() / scale),
            "reference_max_abs_value": float(np.abs(nb).max()),
            "psnr_db": float(10 * np.log10(4.0 / max(float((diff**2).mean()), 1e-20))), "units": "network range [-1, 1]"}


def network_ablation(pair: Pair, repeats: int) -> dict:
    """One network call on the same batch: where the engine's speed-up comes from."""
    from napari_medgen.engine.diffusion.denoiser import Denoiser

    n = pair.labels.shape[0]
    conditioning = torch.from_numpy(engine_conditioning(pair.card, pair.labels))
    x = torch.randn(n, 1, *pair.labels.shape[1:])
    stack = torch.cat([x, conditioning], 1)
    t_float = torch.Tensor((500,))
    reference = pair.network
    prepared = reference_network(pair.model)
    for module in prepared.modules():
        if hasattr(module, "use_flash_attention"):
            module.use_flash_attention = True
    prepared_cl = reference_network(pair.model)
    for module in prepared_cl.modules():
        if hasattr(module, "use_flash_attention"):
            module.use_flash_attention = True
    prepared_cl.to(memory_format=torch.channels_last)
    stack_cl = stack.contiguous(memory_format=torch.channels_last)
    denoiser = Denoiser(pair.model, conditioning)
    bf16 = copy.deepcopy(prepared_cl).to(torch.bfloat16)  # not the default: it changes the output
    stack_bf16 = stack_cl.to(torch.bfloat16)

    def under(mode, fn):
        def call():
            with mode():
                return fn()
        return call

    calls = {
        "monai_network_no_grad": under(torch.no_grad, lambda: reference(stack, t_float)),
        "inference_mode": under(torch.inference_mode, lambda: reference(stack, t_float)),
        "plus_fused_attention": under(torch.inference_mode, lambda: prepared(stack, t_float)),
        "plus_channels_last": under(torch.inference_mode, lambda: prepared_cl(stack_cl, t_float)),
        "engine_denoiser_call": under(torch.inference_mode, lambda: denoiser(x, 500)),
        "bf16_not_default": under(torch.inference_mode, lambda: bf16(stack_bf16, t_float)),
    }
    times = common.side_by_side(calls, repeats=max(5, repeats * 2))
    with torch.inference_mode():
        base = reference(stack, t_float)
        deviation = float((denoiser(x, 500) - base).abs().max())
        bf16_deviation = float((bf16(stack_bf16, t_float).float() - base).abs().max())
        scale = float(base.abs().max())
    medians = {k: common.median(v) for k, v in times.items()}
    return {
        "batch": [n, *pair.labels.shape[1:]],
        "seconds_per_call": {k: round(v, 4) for k, v in medians.items()},
        "speedup_over_monai_network": {k: round(medians["monai_network_no_grad"] / v, 2) for k, v in medians.items()},
        "engine_vs_monai_network_max_abs_diff": deviation,
        "bf16_vs_fp32_max_abs_diff": bf16_deviation,
        "network_output_max_abs": scale,
    }


def memory_probe(which: str, args) -> dict:
    """In a fresh process: peak resident memory of one run over the resident memory before it."""
    model, kind = common.benchmark_model()
    pair = Pair(model, args.slices, args.size, args.steps, args.seed)
    common.reset_peak_rss()
    before = common.rss_bytes()
    pair.ours() if which == "ours" else pair.monai()
    return {"which": which, "peak_over_baseline_bytes": common.peak_rss_bytes() - before, "baseline_bytes": before}


def main(argv: list[str] | None = None) -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="slices of size x size at 2 mm")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-probe", choices=("ours", "monai"), default=None, help=argparse.SUPPRESS)
    args = common.parse(parser, SMOKE, argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args)))
        return
    model, kind = common.benchmark_model()
    why_not = check_matchable(args.steps, model.card.scheduler.num_train_timesteps)
    if why_not:
        parser.error(why_not)
    pair = Pair(model, args.slices, args.size, args.steps, args.seed)
    default_model, _ = common.benchmark_model(precision="auto")
    default_pair = Pair(default_model, args.slices, args.size, args.steps, args.seed)
    pair.ours(steps=2), pair.monai(steps=2), default_pair.ours(steps=2)  # warm-up: oneDNN builds its kernels per shape
    outputs: dict[str, np.ndarray] = {}

    def keep(name, fn):
        def run():
            outputs[name] = fn()
        return run

    times = common.side_by_side(
        {"ours": keep("ours", pair.ours), "monai": keep("monai", pair.monai),
         "ours_with_previews": lambda: pair.ours(previews=5),
         "ours_default_precision": keep("ours_default_precision", default_pair.ours)}, args.repeats, warmup=0,
    )
    medians = {k: common.median(v) for k, v in times.items()}
    ours_default, monai_default = outputs["ours"], outputs["monai"]
    matched = difference(pair.ours_loop(UnclippedSchedule(pair.card.scheduler)), pair.monai(clip=False, follow_ours=True), pair)
    loop_is_generate = difference(pair.finished(pair.ours_loop(NoiseSchedule(pair.card.scheduler))), ours_default, pair)

    extra = ["--slices", str(args.slices), "--size", str(args.size), "--steps", str(args.steps), "--seed", str(args.seed)]
    memory = {w: common.run_in_subprocess("vs_monai", extra + ["--memory-probe", w]) for w in ("ours", "monai")}
    peak = {w: m["peak_over_baseline_bytes"] for w, m in memory.items()}

    ablation = network_ablation(pair, args.repeats)
    same = matched["max_relative"] < TOLERANCE and loop_is_generate["max_relative"] < TOLERANCE
    report = {
        "what": "generate (ours, DDIM) vs monai.inferers.DiffusionInferer.sample with DDIMScheduler, same network, "
        "conditioning (concatenated channels), noise and steps",
        "machine": common.machine(),
        "model": f"{pair.card.name} ({kind})",
        "work": {"slices": args.slices, "size": [args.size, args.size], "steps": args.steps, "batch": args.slices},
        "ran": pair.ran,
        "seconds": {k: round(v, 3) for k, v in medians.items()},
        "runs": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "speedup_wall": round(medians["monai"] / medians["ours"], 2),
        "speedup_wall_with_previews": round(medians["monai"] / medians["ours_with_previews"], 2),
        "default_precision": {
            "precision": default_pair.ran.get("precision"), "why": default_model.extra.get("precision", {}).get("why"),
            "speedup_over_monai_default": round(medians["monai"] / medians["ours_default_precision"], 2),
            "difference_from_fp32": difference(outputs["ours_default_precision"], ours_default, pair),
            "target": "our default at least 1.5x MONAI's default loop",
        },
        "peak_memory_over_baseline_mb": {k: round(v / 2**20, 1) for k, v in peak.items()},
        "peak_memory_ratio_monai_over_ours": round(peak["monai"] / max(peak["ours"], 1), 2),
        "equal_output": {
            "matched_schedule_no_clip": {**matched, "tolerance_relative": TOLERANCE, "ok": matched["max_relative"] < TOLERANCE,
                                         "how": "MONAI clip_sample=False stepping to our next timestep; our DDIM loop "
                                         "with x0 unclipped"},
            "engine_loop_vs_generate": {**loop_is_generate, "ok": loop_is_generate["max_relative"] < TOLERANCE},
            "default_settings": {**difference(ours_default, pair.finished(monai_default), pair),
                                 "why": "MONAI's DDIM steps to t - T//steps and keeps the unclipped noise estimate"},
        },
        "network_call": ablation,
        "target": "at least 1.3x faster at equal steps and equal output",
        "met": bool(medians["monai"] / medians["ours"] >= 1.3 and same),
    }
    path = common.write_result("vs_monai", report)
    print(f"ours {medians['ours']:.2f} s, MONAI {medians['monai']:.2f} s: {report['speedup_wall']}x faster; "
          f"peak memory {report['peak_memory_over_baseline_mb']} (MONAI/ours {report['peak_memory_ratio_monai_over_ours']}x); "
          f"matched-output max |diff| {matched['max_abs']:.2e} (loop vs generate {loop_is_generate['max_abs']:.2e}); wrote {path}")


def table_row(r: dict) -> tuple[str, str, str, str]:
    """The performance table's row (docs/benchmarks.md): what, figure, target, met."""
    eq, timed = r["equal_output"]["matched_schedule_no_clip"], r["equal_output"]["default_settings"]
    nc = r["network_call"]["speedup_over_monai_network"]
    ours = common.ran_words(r.get("ran"), f"{r['work']['steps']} DDIM steps")
    return (
        f"`generate` vs MONAI `DiffusionInferer.sample` + `DDIMScheduler`, {r['work']['slices']} slices "
        f"{'x'.join(map(str, r['work']['size']))}, ours: {ours}, {r['model']}",
        f"**{r['speedup_wall']}x** faster ({r['seconds']['ours']} s vs {r['seconds']['monai']} s); peak memory "
        f"{r['peak_memory_over_baseline_mb']['ours']} MB vs {r['peak_memory_over_baseline_mb']['monai']} MB "
        f"({r['peak_memory_ratio_monai_over_ours']}x less); output: the timed runs differ by design (each library's "
        f"DDIM, max rel. diff {timed['max_relative']:.2f}), on the same DDIM terms equal (max rel. diff "
        f"{eq['max_relative']:.1e}); per call: fused attention {nc['plus_fused_attention']}x, + channels-last "
        f"{nc['plus_channels_last']}x" + (
            f"; our default ({r['default_precision']['precision']}) against MONAI's default (fp32): "
            f"**{r['default_precision']['speedup_over_monai_default']}x**" if "default_precision" in r else ""),
        ">= 1.3x, equal output",
        common.met(r["met"]),
    )


if __name__ == "__main__":
    main()
