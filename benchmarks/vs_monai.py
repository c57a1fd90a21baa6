"""Our `generate` against MONAI's reference loop on the same work (issue 6, item 1).

    python benchmarks/vs_monai.py [--slices 4] [--steps 10] [--repeats 3] [--threads N]

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

Equal output: MONAI's DDIM steps from t to t - T // steps whatever the timestep actually scheduled
next, and it does not re-derive the noise from the clipped x0, so the two DDIMs differ by design
(see sampling.py). To check that both do the same work with the same result, a second pair of runs
uses one schedule both can follow exactly (evenly spaced by T // steps) and no x0 clipping; those
outputs must match to float rounding. The default-settings difference is reported too.

Where the time goes: one network call on the same batch, MONAI's network as built (under no_grad)
against the same network under inference_mode, with fused attention, and channels-last.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# Equal output: max |ours - MONAI| over max(|MONAI|, 1), in the network's units; float32 rounding
# through `steps` network calls and 1/sqrt(alpha_bar) amplification at the noisiest step stays far below.
TOLERANCE = 1e-4


def reference_network(model) -> torch.nn.Module:
    """A fresh MONAI network of the card's class with the model's weights, as a MONAI user builds it."""
    from monai.networks import nets

    spec = model.card.network
    network = getattr(nets, spec.class_name)(**spec.kwargs)
    network.load_state_dict({k: v.contiguous() for k, v in model.networks["network"].state_dict().items()})
    return network.eval().requires_grad_(False)


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


@contextlib.contextmanager
def even_schedule_no_clip(step_ratio: int):
    """Our sampler on MONAI-compatible terms: timesteps (k * step_ratio) and no x0 clipping."""
    from napari_medgen.engine import sampling

    original_timesteps, original_split = sampling.NoiseSchedule.timesteps, sampling.NoiseSchedule.split

    def timesteps(self, steps):
        return list(range((steps - 1) * step_ratio, -1, -step_ratio))

    def split(self, output, x_t, t, clip=True):
        return original_split(self, output, x_t, t, clip=False)

    sampling.NoiseSchedule.timesteps, sampling.NoiseSchedule.split = timesteps, split
    try:
        yield
    finally:
        sampling.NoiseSchedule.timesteps, sampling.NoiseSchedule.split = original_timesteps, original_split


class Pair:
    """The two implementations on one input."""

    def __init__(self, model, slices: int, steps: int, seed: int) -> None:
        from monai.inferers import DiffusionInferer

        self.model = model
        self.card = model.card
        self.label_map = common.brain_label_slices(slices, 128)
        self.labels = self.label_map.array
        self.steps, self.seed = steps, seed
        self.network = reference_network(model)
        self.inferer = DiffusionInferer(monai_scheduler(self.card))
        from napari_medgen.engine.intensity import intensity_map_for

        self.intensity = intensity_map_for(self.card.normalization, None)

    def ours(self, previews: int = 0) -> np.ndarray:
        from napari_medgen.engine.synthesis import generate

        # guidance 1 (none): MONAI's inferer has no classifier-free guidance, and the same work is the point
        run = generate(self.model, self.label_map, sampler="ddim", steps=self.steps, seed=self.seed, guidance=1.0,
                       batch_size=self.labels.shape[0], preview_every=previews)
        return common.drive(run)[0].array

    def monai(self, clip: bool = True, even: bool = False) -> np.ndarray:
        scheduler = monai_scheduler(self.card, clip)
        scheduler.set_timesteps(self.steps)
        if even:
            ratio = scheduler.num_train_timesteps // self.steps
            scheduler.timesteps = torch.arange(self.steps - 1, -1, -1) * ratio
        conditioning = torch.from_numpy(engine_conditioning(self.card, self.labels))
        noise = engine_noise(self.labels.shape, self.seed)
        out = self.inferer.sample(input_noise=noise, diffusion_model=self.network, scheduler=scheduler,
                                  conditioning=conditioning, mode="concat", verbose=False)
        return self.intensity.inverse(out[:, 0].numpy())  # same intensity mapping as ours

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
    common.set_threads(args.threads)
    model, kind = common.demo_model()
    pair = Pair(model, args.slices, args.steps, args.seed)
    common.reset_peak_rss()
    before = common.rss_bytes()
    pair.ours() if which == "ours" else pair.monai()
    return {"which": which, "peak_over_baseline_bytes": common.peak_rss_bytes() - before, "baseline_bytes": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--memory-probe", choices=("ours", "monai"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args)))
        return
    common.set_threads(args.threads)
    model, kind = common.demo_model()
    pair = Pair(model, args.slices, args.steps, args.seed)

    steps, pair.steps = pair.steps, 2
    pair.ours(), pair.monai()  # warm-up: the first call at a shape builds oneDNN's kernels
    pair.steps = steps
    outputs: dict[str, np.ndarray] = {}

    def keep(name, fn):
        def run():
            outputs[name] = fn()
        return run

    times = common.side_by_side(
        {"ours": keep("ours", pair.ours), "monai": keep("monai", pair.monai),
         "ours_with_previews": lambda: pair.ours(previews=5)}, args.repeats, warmup=0,
    )
    medians = {k: common.median(v) for k, v in times.items()}
    ours_default, monai_default = outputs["ours"], outputs["monai"]
    ratio = pair.card.scheduler.num_train_timesteps // args.steps
    with even_schedule_no_clip(ratio):
        ours_even = pair.ours()
    monai_even = pair.monai(clip=False, even=True)
    matched = difference(ours_even, monai_even, pair)

    extra = ["--slices", str(args.slices), "--steps", str(args.steps), "--seed", str(args.seed)]
    if args.threads:
        extra += ["--threads", str(args.threads)]
    memory = {w: common.run_in_subprocess("vs_monai", extra + ["--memory-probe", w]) for w in ("ours", "monai")}
    peak = {w: m["peak_over_baseline_bytes"] for w, m in memory.items()}

    ablation = network_ablation(pair, args.repeats)
    report = {
        "what": "generate (ours, DDIM) vs monai.inferers.DiffusionInferer.sample with DDIMScheduler, same network, "
        "conditioning (concatenated channels), noise and steps",
        "machine": common.machine(),
        "model": f"{pair.card.name} ({kind})",
        "work": {"slices": args.slices, "size": [128, 128], "steps": args.steps, "sampler": "ddim", "batch": args.slices},
        "seconds": {k: round(v, 3) for k, v in medians.items()},
        "runs": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "speedup_wall": round(medians["monai"] / medians["ours"], 2),
        "speedup_wall_with_previews": round(medians["monai"] / medians["ours_with_previews"], 2),
        "peak_memory_over_baseline_mb": {k: round(v / 2**20, 1) for k, v in peak.items()},
        "peak_memory_ratio_monai_over_ours": round(peak["monai"] / max(peak["ours"], 1), 2),
        "equal_output": {
            "matched_schedule_no_clip": {**matched, "tolerance_relative": TOLERANCE, "ok": matched["max_relative"] < TOLERANCE},
            "default_settings": {**difference(ours_default, monai_default, pair),
                                 "why": "MONAI's DDIM steps to t - T//steps and keeps the unclipped noise estimate"},
        },
        "network_call": ablation,
        "target": "at least 1.3x faster at equal steps and equal output",
        "met": bool(medians["monai"] / medians["ours"] >= 1.3 and matched["max_relative"] < TOLERANCE),
    }
    path = common.write_result("vs_monai", report)
    print(f"ours {medians['ours']:.2f} s, MONAI {medians['monai']:.2f} s: {report['speedup_wall']}x faster; "
          f"peak memory {report['peak_memory_over_baseline_mb']} (MONAI/ours {report['peak_memory_ratio_monai_over_ours']}x); "
          f"matched-output max |diff| {matched['max_abs']:.2e}; wrote {path}")


if __name__ == "__main__":
    main()
