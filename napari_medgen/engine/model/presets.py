"""Presets: the cards of models this project trains (architecture, spacing, schema, conditioning)."""

from __future__ import annotations

from ..errors import MedgenError
from .card import ModelCard
from .labels import TISSUE_SCHEMA

# Why the demo model is sampled as it is (shown to users with the card; benchmarks/realism.py measured it).
SAMPLING_REASON = (
    "DPM-Solver++ 2M, 20 steps, guidance 1, slice-noise correlation 0.7 (grey matter 0.5, white matter 0.9): on 30 "
    "axial slices of the sample map the closest to the real T1 of the settings measured (grey-matter texture inside "
    "the tissue 0.83x in-plane; neighbouring-slice difference 1.16x; histogram distance 0.007; mask Dice 0.86), "
    "with white matter rougher than the scan in-plane (1.43x); DDIM 20 smoothed grey matter (0.61x, histogram "
    "distance 0.0125) and guidance above 1 flattened it (1.15: 0.77x, 0.012); one correlation of 0.7 for all "
    "tissues left grey matter too alike through-plane (0.57x) and white matter too unlike (1.41x), 0.5 / 0.9 gave "
    "0.71x and 0.91x"
)


# -- presets --------------------------------------------------------------------------------------
def brain_t1_demo_card() -> ModelCard:
    """The shipped demo model: 2-D, 2 mm, T1 brain with CSF / grey / white matter labels."""
    n_labels = TISSUE_SCHEMA.max_index + 1
    return ModelCard.model_validate(
        {
            "name": "brain-t1-demo",
            "version": "2.2.0",
            "description": "Slice-wise T1 brain MRI generator and inpainter conditioned on CSF / grey / white "
            "matter labels and slice position; trained on the ICBM152 2009 template at 2 mm.",
            "license": "BSD-3-Clause (weights); training data: ICBM152 2009 licence, see resources/sample",
            "network": {
                "class_name": "DiffusionModelUNet",
                "kwargs": {
                    "spatial_dims": 2,
                    "in_channels": 1 + n_labels + 2 + 8,
                    "out_channels": 1,
                    # Four levels (a 16 px receptive grid at the bottom: the whole 2 mm slice in view) and 4.6 M
                    # parameters, trained on a GPU; attention only at the coarsest level (12 x 15 tokens), so a
                    # 2-core CPU runs it as fast as the first demo model (16/32/64, attention at 24 x 30 tokens,
                    # 1.0 M): about 90 ms per whole slice per call.
                    "channels": [32, 64, 64, 128],
                    "attention_levels": [False, False, False, True],
                    "num_res_blocks": 2,
                    "norm_num_groups": 8,
                    "num_head_channels": 32,
                },
            },
            "spatial_dims": 2,
            "tile_size": [104, 120],  # the training frame (set from the data when training: whole slices)
            "spacing_mm": [2.0, 2.0],
            "modality": "MR",
            # The template is skull-stripped: exactly 0 outside the brain, which label 0 marks.
            "normalization": {
                "kind": "mri_percentile",
                "high_percentile": 99.5,
                "output_min": 0.0,
                "output_max": 1000.0,
                "background_label": 0,
            },
            "label_schema": {"classes": TISSUE_SCHEMA.to_json()},
            "conditioning": {
                "label_map": "channels",
                "known_image": True,
                "slice_position": True,
                "position_frequencies": 4,
                "condition_dropout": 0.15,
                # Measured with benchmarks/realism.py (30 axial slices of the sample map, ratios to the real T1;
                # docs/quality.md's Realism table has every setting). Card 2.0.0 at guidance 1 with DPM-Solver++ 2M:
                # inside-tissue gradient 0.99x, histogram distance 0.007, mask Dice 0.86; guidance 1.15 already
                # flattens the tissues (0.86x, 0.012), 2 more so (card 1.x: spreads 0.83 / 0.74 / 0.74x), and
                # guidance 1 needs half the network calls.
                "default_guidance": 1.0,
                # Most of each slice's noise shared with every other slice: with each slice's own noise the
                # through-plane / in-plane gradient energy was 1.20x the real T1's (stripes in sagittal views);
                # with DPM-Solver++ 2M at 0.5 the neighbouring-slice difference was 1.25x, at 0.7 1.13x (inside
                # tissues 0.99x), at 0.85 1.02x but tissues smoother (0.93x).
                "default_slice_noise_correlation": 0.7,
                # Per tissue (card 2.2.0), since one correlation made grey matter's texture too alike from slice to
                # slice (inside grey matter, through-plane gradient 0.57x) and white matter's too unlike (1.41x):
                # grey matter 0.5 and white matter 0.9 gave 0.71x and 0.91x with the neighbouring-slice
                # difference at 1.16x (0.4 / 0.9: 0.77x, 0.92x, 1.20x).
                "slice_noise_correlation_by_label": {"2": 0.5, "3": 0.9},
            },
            "scheduler": {
                "class_name": "DDPMScheduler",
                "num_train_timesteps": 1000,
                "schedule": "linear_beta",
                "beta_start": 0.0001,
                "beta_end": 0.02,
                # v-prediction: an epsilon model's image estimate at high noise is its noise error
                # divided by sqrt(alpha_bar) (x60 at t=900); brain-t1-demo 1.0 trained for epsilon had an
                # RMS error of 0.86 there, and its 20-step samples kept that as speckle (Dice 0.55).
                "prediction_type": "v_prediction",
            },
            "tasks": ["generate", "inpaint"],
            # DDIM's few steps pull each image towards the mean: at guidance 1 its tissues were smooth inside
            # (0.83x the real T1's gradient, histogram distance 0.0125); DPM-Solver++ 2M reaches the model's own
            # distribution in 20 steps (0.99x, 0.007; 50 steps change nothing) at the same cost per step.
            "sampling": {"steps": 20, "sampler": "dpm++2m", "reason": SAMPLING_REASON},
            # Labels from a user's scan (napari-medgen segment) register this atlas to it.
            "atlas": {
                "image": "sample:mni152_t1_2mm.nii.gz",
                "labels": "sample:mni152_tissue_labels_2mm.nii.gz",
                "description": "ICBM152 2009a symmetric T1 and its CSF / grey / white matter labels at 2 mm "
                "(the shipped sample)",
            },
        }
    )


PRESETS = {"brain-t1-demo": brain_t1_demo_card}


def preset_card(name: str) -> ModelCard:
    if name not in PRESETS:
        raise MedgenError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
