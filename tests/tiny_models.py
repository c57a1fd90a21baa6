"""Tiny models of the real MONAI architectures, random weights, built in the test (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from napari_medgen.engine.model.card import ModelCard
from napari_medgen.engine.model.labels import TISSUE_SCHEMA
from napari_medgen.engine.model.networks import build_networks
from napari_medgen.engine.model.weights import save_model


def tiny_card(
    name: str = "tiny-2d",
    spatial_dims: int = 2,
    label_map: str = "channels",
    known_image: bool = True,
    slice_position: bool = True,
    condition_dropout: float = 0.1,
    tasks: tuple[str, ...] = ("generate", "inpaint"),
    spacing_mm: float = 4.0,
    orientations: bool = False,
    background_label: int | None = None,
) -> ModelCard:
    """`orientations`: one network for axial, coronal and sagittal slices (the plane as its class embedding).
    `background_label`: generated images are exactly the background there (a skull-stripped brain's card)."""
    n_labels = TISSUE_SCHEMA.max_index + 1
    in_channels = 1 + (n_labels if label_map == "channels" else 0) + (2 if known_image else 0) + (8 if slice_position and spatial_dims == 2 else 0)
    kwargs = {
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "out_channels": 1,
        "channels": [8, 16],
        "attention_levels": [False, True],
        "num_res_blocks": 1,
        "norm_num_groups": 8,
        "num_head_channels": 8,
        **({"num_class_embeds": 3} if orientations else {}),
    }
    network = {"class_name": "DiffusionModelUNet", "kwargs": kwargs}
    if label_map == "spade":
        network = {"class_name": "SPADEDiffusionModelUNet", "kwargs": {**kwargs, "label_nc": n_labels}}
    return ModelCard.model_validate(
        {
            "name": name,
            "version": "0.0.1",
            "description": "random weights, for tests",
            "license": "BSD-3-Clause",
            "network": network,
            "spatial_dims": spatial_dims,
            "tile_size": [16] * spatial_dims,
            "spacing_mm": [spacing_mm] * spatial_dims,
            "normalization": {"kind": "mri_percentile", "output_min": 0, "output_max": 1000,
                              **({"background_label": background_label} if background_label is not None else {})},
            "label_schema": {"classes": TISSUE_SCHEMA.to_json()},
            "conditioning": {
                "label_map": label_map,
                "known_image": known_image,
                "slice_position": slice_position and spatial_dims == 2,
                "condition_dropout": condition_dropout,
                "orientations": ["axial", "coronal", "sagittal"] if orientations else [],
            },
            "scheduler": {"num_train_timesteps": 100},
            "tasks": list(tasks),
        }
    )


def tiny_controlnet_card_dict(name: str = "tiny-controlnet") -> dict:
    """A tiny card (as JSON data) of a ControlNet model: the label map reaches the UNet through a MONAI ControlNet."""
    raw = tiny_card(name=name).model_dump(mode="json")
    raw["conditioning"]["label_map"] = "controlnet"
    raw["network"]["kwargs"]["in_channels"] = 1 + 2 + 8
    raw["controlnet"] = {
        "class_name": "ControlNet",
        "kwargs": {
            **{k: v for k, v in raw["network"]["kwargs"].items() if k != "out_channels"},
            "conditioning_embedding_in_channels": 4,
            "conditioning_embedding_num_channels": [8],
        },
    }
    return raw


def randomize_zero_layers(module: torch.nn.Module) -> None:
    """Give MONAI's zero-initialised layers (output conv, residual and attention projections) random
    weights: a freshly built diffusion UNet predicts exactly zero noise, which would make every test
    of conditioning, guidance or inpainting inputs pass without the inputs mattering."""
    for layer in module.modules():
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.dim() > 1 and not weight.detach().any():
            layer.reset_parameters()


def make_tiny_model(folder: Path, seed: int = 0, **card_args) -> Path:
    card = tiny_card(**card_args)
    torch.manual_seed(seed)
    networks = build_networks(card)
    for network in networks.values():
        randomize_zero_layers(network)
    return save_model(card, networks, folder)
