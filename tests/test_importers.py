"""Importers of MAISI folders and MONAI generative bundles: tiny random-weight networks of MONAI's real classes,
saved in NV-Generate-CTMR's / a bundle's file layout, imported into model folders; refusals of code."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medgen.engine.errors import ModelCardError, ModelWeightsError

LABEL_DICT = {"liver": 1, "spleen": 3, "pancreas": 4, "right kidney": 5, "left kidney": 14, "lung tumor": 23, "body": 200}

# NV-Generate-CTMR's config_network_rflow.json, at tiny sizes (same keys, same @ references, the same
# mask-generation sections the importer must skip).
TINY_NETWORK_CONFIG = {
    "spatial_dims": 3,
    "image_channels": 1,
    "latent_channels": 4,
    "include_body_region": False,
    "mask_generation_latent_shape": [4, 64, 64, 64],
    "autoencoder_def": {
        "_target_": "monai.apps.generation.maisi.networks.autoencoderkl_maisi.AutoencoderKlMaisi",
        "spatial_dims": "@spatial_dims",
        "in_channels": "@image_channels",
        "out_channels": "@image_channels",
        "latent_channels": "@latent_channels",
        "num_channels": [8, 8, 8],
        "num_res_blocks": [1, 1, 1],
        "norm_num_groups": 4,
        "norm_eps": 1e-06,
        "attention_levels": [False, False, False],
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
        "use_checkpointing": False,
        "use_convtranspose": False,
        "norm_float16": True,
        "num_splits": 4,
        "dim_split": 1,
    },
    "diffusion_unet_def": {
        "_target_": "monai.apps.generation.maisi.networks.diffusion_model_unet_maisi.DiffusionModelUNetMaisi",
        "spatial_dims": "@spatial_dims",
        "in_channels": "@latent_channels",
        "out_channels": "@latent_channels",
        "num_channels": [8, 16],
        "attention_levels": [False, True],
        "num_head_channels": [0, 8],
        "num_res_blocks": 1,
        "norm_num_groups": 4,
        "use_flash_attention": True,
        "include_top_region_index_input": "@include_body_region",
        "include_bottom_region_index_input": "@include_body_region",
        "include_spacing_input": True,
        "num_class_embeds": 128,
        "resblock_updown": True,
        "include_fc": True,
    },
    "controlnet_def": {
        "_target_": "monai.apps.generation.maisi.networks.controlnet_maisi.ControlNetMaisi",
        "spatial_dims": "@spatial_dims",
        "in_channels": "@latent_channels",
        "num_channels": [8, 16],
        "attention_levels": [False, True],
        "num_head_channels": [0, 8],
        "num_res_blocks": 1,
        "norm_num_groups": 4,
        "use_flash_attention": True,
        "conditioning_embedding_in_channels": 8,
        "conditioning_embedding_num_channels": [8, 8, 8],
        "num_class_embeds": 128,
        "resblock_updown": True,
        "include_fc": True,
    },
    "mask_generation_autoencoder_def": {
        "_target_": "scripts.mask_generation.MaskAutoencoder",  # a script of that repository: never read
        "in_channels": 8,
    },
    "mask_generation_diffusion_def": {"_target_": "monai.networks.nets.diffusion_model_unet.DiffusionModelUNet", "channels": "$[64]"},
    "mask_generation_scale_factor": 1.0055984258651733,
    "noise_scheduler": {
        "_target_": "monai.networks.schedulers.rectified_flow.RFlowScheduler",
        "num_train_timesteps": 1000,
        "use_discrete_timesteps": False,
        "use_timestep_transform": True,
        "sample_method": "uniform",
        "scale": 1.4,
    },
}

ENVIRONMENT = {
    "output_dir": "output",
    "trained_autoencoder_path": "models/autoencoder_v1.pt",
    "trained_diffusion_path": "models/diff_unet_3d_rflow-ct.pt",
    "trained_controlnet_path": "models/controlnet_3d_rflow-ct.pt",
    "trained_mask_generation_autoencoder_path": "models/mask_generation_autoencoder.pt",
    "label_dict_json": "./configs/label_dict.json",
}

CONFIG_INFER = {
    "num_inference_steps": 30,
    "controlnet": "$@controlnet_def",  # code in a section the importer does not need: ignored
    "modality": 1,
}


def _build(definition: dict, config: dict):
    """A network from a config definition, the way the test knows it (not through the importer)."""
    from napari_medgen.engine.model.importers.safe_config import ALLOWED_TARGETS
    from napari_medgen.engine.model.networks import network_class

    kwargs = {k: (config[v[1:]] if isinstance(v, str) and v.startswith("@") else v) for k, v in definition.items() if k != "_target_"}
    for key, value in {"norm_float16": False, "use_flash_attention": False, "num_splits": 1}.items():
        if key in kwargs:
            kwargs[key] = value
    return network_class(ALLOWED_TARGETS[definition["_target_"]])(**kwargs)


def make_maisi_folder(root: Path, seed: int = 0) -> tuple[Path, dict[str, torch.nn.Module], float]:
    """A NV-Generate-CTMR-like folder with tiny random-weight MAISI networks; returns (folder, networks, scale)."""
    torch.manual_seed(seed)
    config = TINY_NETWORK_CONFIG
    autoencoder = _build(config["autoencoder_def"], config).eval()
    unet = _build(config["diffusion_unet_def"], config).eval()
    controlnet = _build(config["controlnet_def"], config).eval()
    for module in (unet, controlnet):  # MONAI zero-initialises some output convolutions: make every weight count
        with torch.no_grad():
            for parameter in module.parameters():
                if parameter.abs().sum() == 0:
                    parameter.normal_(0, 0.05)
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs/config_network_rflow.json").write_text(json.dumps(config, indent=1))
    (root / "configs/environment_rflow-ct.json").write_text(json.dumps(ENVIRONMENT))
    (root / "configs/config_infer.json").write_text(json.dumps(CONFIG_INFER))
    (root / "configs/label_dict.json").write_text(json.dumps(LABEL_DICT))
    scale = 0.87
    torch.save(autoencoder.state_dict(), root / "models/autoencoder_v1.pt")
    torch.save(
        {"unet_state_dict": unet.state_dict(), "scale_factor": torch.tensor(scale), "num_train_timesteps": 1000, "epoch": 7, "loss": 0.1},
        root / "models/diff_unet_3d_rflow-ct.pt",
    )
    # MAISI's ControlNet checkpoint: its own weights; those it shares with the UNet come from the UNet on load.
    unet_keys = unet.state_dict()
    own = {k: v for k, v in controlnet.state_dict().items() if k not in unet_keys or not torch.equal(unet_keys[k], v)}
    torch.save({"controlnet_state_dict": own, "epoch": 3}, root / "models/controlnet_3d_rflow-ct.pt")
    return root, {"autoencoder": autoencoder, "network": unet, "controlnet": controlnet}, scale


@pytest.fixture
def maisi_folder(tmp_path):
    return make_maisi_folder(tmp_path / "NV-Generate-CTMR")


def test_import_maisi_round_trip_same_outputs(maisi_folder, tmp_path):
    from napari_medgen.engine.model.importers import import_maisi
    from napari_medgen.engine.model.loading import load_model

    folder, originals, scale = maisi_folder
    out = import_maisi(folder, tmp_path / "model")
    assert (out / "model.json").is_file() and (out / "weights.safetensors").is_file()
    model = load_model(out, device="cpu")
    card = model.card
    assert card.latent.scale_factor == pytest.approx(scale)
    assert card.latent.label_encoding == "bits" and card.latent.label_bits == 8
    assert card.latent.body_label == 200 and card.latent.modality_code == 1 and card.latent.spacing_input
    assert card.scheduler.class_name == "RFlowScheduler" and card.scheduler.use_timestep_transform
    assert card.autoencoder.kwargs["norm_float16"] is False and card.autoencoder.kwargs["num_splits"] == 1
    assert "autoencoder.norm_float16: True -> False" in card.provenance["cpu_safe_changes"]
    names = {c.index: c.name for c in card.label_schema.classes}
    assert names[0] == "background" and names[14] == "left kidney" and names[200] == "body"
    assert len({c.color for c in card.label_schema.classes}) == len(names)
    assert card.normalization.kind == "ct_window" and card.normalization.window_min == -1000

    torch.manual_seed(1)
    latent = torch.randn(1, 4, 4, 4, 4)
    condition = torch.randint(0, 2, (1, 8, 16, 16, 16)).float()
    t = torch.tensor([500.0])
    spacing = torch.tensor([[150.0, 150.0, 200.0]])
    code = torch.tensor([1])
    with torch.no_grad():
        for role in ("network", "controlnet", "autoencoder"):
            for key, value in originals[role].state_dict().items():
                assert torch.equal(model.networks[role].state_dict()[key], value), (role, key)
        down, mid = originals["controlnet"](latent, t, controlnet_cond=condition, class_labels=code)
        expected = originals["network"](latent, t, class_labels=code, down_block_additional_residuals=down,
                                        mid_block_additional_residual=mid, spacing_tensor=spacing)
        down2, mid2 = model.networks["controlnet"](latent, t, controlnet_cond=condition, class_labels=code)
        got = model.networks["network"](latent, t, class_labels=code, down_block_additional_residuals=down2,
                                        mid_block_additional_residual=mid2, spacing_tensor=spacing)
        assert torch.equal(got, expected)
        assert torch.equal(model.networks["autoencoder"].decode(latent), originals["autoencoder"].decode(latent))


def test_imported_model_is_listed(maisi_folder, tmp_path, monkeypatch):
    from napari_medgen.engine.model.importers import import_maisi
    from napari_medgen.engine.model.registry import ENV_VAR, list_models

    folder, _, _ = maisi_folder
    import_maisi(folder, tmp_path / "models" / "maisi", name="maisi-tiny")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "models"))
    entries, problems = list_models()
    assert "maisi-tiny" in [e.card.name for e in entries], problems


class _Payload:
    """Unpickling this would create a marker file (a stand-in for any code a pickle can run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_payload_never_runs(maisi_folder, tmp_path):
    from napari_medgen.engine.model.importers import import_maisi

    folder, originals, _ = maisi_folder
    marker = tmp_path / "pwned"
    torch.save({"unet_state_dict": originals["network"].state_dict(), "scale_factor": torch.tensor(1.0),
                "payload": _Payload(marker)}, folder / "models/diff_unet_3d_rflow-ct.pt")
    with pytest.raises(ModelWeightsError, match="Python objects besides tensors"):
        import_maisi(folder, tmp_path / "model")
    assert not marker.exists()
    assert not (tmp_path / "model").exists()
    # The same file unpickled without the restriction would have run it: the test's payload is real.
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


def test_unknown_target_refused(maisi_folder, tmp_path):
    from napari_medgen.engine.model.importers import import_maisi

    folder, _, _ = maisi_folder
    config = json.loads((folder / "configs/config_network_rflow.json").read_text())
    config["autoencoder_def"]["_target_"] = "scripts.evil.Autoencoder"
    (folder / "configs/config_network_rflow.json").write_text(json.dumps(config))
    with pytest.raises(ModelCardError, match="autoencoder_def.*allow-list"):
        import_maisi(folder, tmp_path / "model")


def test_dollar_expression_in_needed_section_refused(maisi_folder, tmp_path):
    from napari_medgen.engine.model.importers import import_maisi

    folder, _, _ = maisi_folder
    config = json.loads((folder / "configs/config_network_rflow.json").read_text())
    config["latent_channels"] = "$2 + 2"  # reached through @latent_channels from the needed sections
    (folder / "configs/config_network_rflow.json").write_text(json.dumps(config))
    with pytest.raises(ModelCardError, match=r"autoencoder_def.latent_channels -> @latent_channels' is a Python expression"):
        import_maisi(folder, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_safe_config_references_and_ignored_code(tmp_path):
    from napari_medgen.engine.model.importers.safe_config import SafeConfig

    path = tmp_path / "inference.json"
    path.write_text(json.dumps({
        "imports": ["$import os"], "device": "$torch.device('cuda')", "run": ["$@x.go()"],
        "a": 3, "nested": {"b": [1, "@a"]}, "net": {"_target_": "monai.networks.nets.AutoencoderKL",
                                                   "_requires_": "@device", "channels": "@nested::b", "x": "@nested#b#1"},
        "loop": "@loop",
    }))
    config = SafeConfig(path)
    assert config.section("net") == {"_target_": "monai.networks.nets.AutoencoderKL", "channels": [1, 3], "x": 3}
    with pytest.raises(ModelCardError, match="refers to itself"):
        config.section("loop")
    with pytest.raises(ModelCardError, match="Python expression"):
        config.section("device")
    assert config.literal("device", "cpu") == "cpu"


def test_cli_import_maisi(maisi_folder, tmp_path, capsys):
    from napari_medgen.cli import main

    folder, _, _ = maisi_folder
    assert main(["import-maisi", str(folder), "--out", str(tmp_path / "m"), "--name", "maisi-cli", "--progress", "none"]) == 0
    assert str(tmp_path / "m") in capsys.readouterr().out
    assert json.loads((tmp_path / "m/model.json").read_text())["name"] == "maisi-cli"


# -- MONAI generative bundles ---------------------------------------------------------------------------
def make_bundle(root: Path) -> tuple[Path, dict[str, torch.nn.Module]]:
    """A bundle laid out like the model zoo's latent diffusion bundles: code in imports/device/paths/run."""
    torch.manual_seed(3)
    autoencoder_def = {"_target_": "monai.networks.nets.AutoencoderKL", "spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                       "latent_channels": "@latent_channels", "channels": [8, 8], "num_res_blocks": 1, "norm_num_groups": 4,
                       "attention_levels": [False, False], "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}
    diffusion_def = {"_target_": "monai.networks.nets.DiffusionModelUNet", "spatial_dims": 3, "in_channels": "@latent_channels",
                     "out_channels": "@latent_channels", "channels": [8, 16], "attention_levels": [False, True],
                     "num_head_channels": [0, 8], "num_res_blocks": 1, "norm_num_groups": 4, "use_flash_attention": False}
    config = {
        "imports": ["$import torch", "$from datetime import datetime"],
        "bundle_root": ".",
        "model_dir": "$@bundle_root + '/models'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "latent_channels": 3,
        "autoencoder_def": autoencoder_def,
        "network_def": "@autoencoder_def",
        "load_autoencoder_path": "$@model_dir + '/autoencoder.pt'",
        "load_autoencoder": "$@autoencoder_def.load_state_dict(torch.load(@load_autoencoder_path))",
        "diffusion_def": diffusion_def,
        "load_diffusion_path": "$@model_dir + '/model.pt'",
        "scheduler": {"_target_": "monai.networks.schedulers.DDIMScheduler", "_requires_": ["@load_autoencoder"],
                      "beta_start": 0.0015, "beta_end": 0.0205, "num_train_timesteps": 1000, "schedule": "scaled_linear_beta",
                      "clip_sample": False},
        "scale_factor": 0.9,
        "run": "$@saver(@sample[0][0])",
    }
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs/inference.json").write_text(json.dumps(config, indent=1))
    from napari_medgen.engine.model.networks import network_class

    resolve = lambda d: {k: (3 if v == "@latent_channels" else v) for k, v in d.items() if k != "_target_"}
    autoencoder = network_class("AutoencoderKL")(**resolve(autoencoder_def)).eval()
    unet = network_class("DiffusionModelUNet")(**resolve(diffusion_def)).eval()
    torch.save(autoencoder.state_dict(), root / "models/autoencoder.pt")
    torch.save(unet.state_dict(), root / "models/model.pt")
    return root, {"autoencoder": autoencoder, "network": unet}


def test_import_bundle_round_trip(tmp_path):
    from napari_medgen.engine.model.importers import import_bundle
    from napari_medgen.engine.model.loading import load_model

    folder, originals = make_bundle(tmp_path / "brain_ldm")
    out = import_bundle(folder, tmp_path / "model", name="brain-ldm")
    model = load_model(out, device="cpu")
    assert model.card.latent.scale_factor == pytest.approx(0.9)
    assert model.card.scheduler.class_name == "DDIMScheduler" and model.card.conditioning.label_map == "none"
    x = torch.randn(1, 3, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(model.networks["network"](x, torch.tensor([10])), originals["network"](x, torch.tensor([10])))
        assert torch.equal(model.networks["autoencoder"].decode(x), originals["autoencoder"].decode(x))


def test_bundle_dollar_in_needed_section_refused(tmp_path):
    from napari_medgen.engine.model.importers import import_bundle

    folder, _ = make_bundle(tmp_path / "b")
    config = json.loads((folder / "configs/inference.json").read_text())
    config["diffusion_def"]["num_res_blocks"] = "$int(1)"
    (folder / "configs/inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelCardError, match=r"diffusion_def.num_res_blocks' is a Python expression"):
        import_bundle(folder, tmp_path / "model")


def test_bundle_with_undescribed_context_refused(tmp_path):
    """A context vector the bundle does not describe (no 'conditioning' @ names, no metadata channel_def) is refused."""
    from napari_medgen.engine.model.importers import import_bundle

    folder, _ = make_bundle(tmp_path / "b")
    config = json.loads((folder / "configs/inference.json").read_text())
    config["diffusion_def"].update({"with_conditioning": True, "cross_attention_dim": 4})
    (folder / "configs/inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelCardError, match="context of 4 values .* cannot be offered"):
        import_bundle(folder, tmp_path / "model")


def test_label_colours_deterministic():
    from napari_medgen.engine.model.importers.common import schema_from_label_dict

    a = schema_from_label_dict(LABEL_DICT, "x")
    b = schema_from_label_dict(dict(reversed(list(LABEL_DICT.items()))), "x")
    assert a == b
    assert np.all([c.color.startswith("#") for c in a.classes])


def test_bundle_old_generative_key_names_mapped(tmp_path):
    """Weights saved by MONAI GenerativeModels (older bundles) import through MONAI's load_old_state_dict."""
    from napari_medgen.engine.model.importers import import_bundle
    from napari_medgen.engine.model.loading import load_model

    folder, originals = make_bundle(tmp_path / "old")
    old = {}
    for key, value in originals["network"].state_dict().items():
        name = key.replace(".attn.to_q", ".to_q").replace(".attn.to_k", ".to_k").replace(".attn.to_v", ".to_v")
        old[name.replace(".attn.out_proj", ".proj_attn").replace("postconv", "conv")] = value
    assert set(old) != set(originals["network"].state_dict())  # the test really renames something
    torch.save(old, folder / "models/model.pt")
    model = load_model(import_bundle(folder, tmp_path / "model"), device="cpu")
    x = torch.randn(1, 3, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(model.networks["network"](x, torch.tensor([10])), originals["network"](x, torch.tensor([10])))


def test_bundle_model_generates_with_ddim(tmp_path):
    """A DDIM-scheduled latent bundle (no ControlNet) generates on the CPU in the label map's geometry."""
    from napari_medgen.engine.model.importers import import_bundle
    from napari_medgen.engine.model.loading import load_model
    from napari_medgen.engine.synthesis import generate
    from napari_medgen.engine.volume import Volume

    folder, _ = make_bundle(tmp_path / "b")
    model = load_model(import_bundle(folder, tmp_path / "model"), device="cpu")
    labels = Volume(np.ones((6, 9, 7), np.uint8), (1.2, 1.0, 1.5), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    run = generate(model, labels, steps=3, sampler="ddim", preview_every=0)
    events = []
    while True:
        try:
            events.append(next(run))
        except StopIteration as stop:
            (image,) = stop.value
            break
    assert len(events) == 4 and image.same_grid(labels) and np.isfinite(image.array).all()
    assert image.metadata["provenance"]["sampler"] == "ddim"


def test_import_bundle_of_maisi(tmp_path):
    """The model zoo's MAISI bundle layout (configs/inference.json with $-expression paths, models/*.pt with
    MAISI's checkpoint keys) imports with MAISI's conventions."""
    from napari_medgen.engine.model.importers import import_bundle
    from napari_medgen.engine.model.loading import load_model

    source, originals, scale = make_maisi_folder(tmp_path / "src")
    network = json.loads((source / "configs/config_network_rflow.json").read_text())
    bundle = tmp_path / "maisi_ct_generative"
    (bundle / "configs").mkdir(parents=True)
    (source / "models").rename(bundle / "models")
    (bundle / "models/autoencoder_v1.pt").rename(bundle / "models/autoencoder_epoch273.pt")
    (bundle / "configs/label_dict.json").write_text(json.dumps(LABEL_DICT))
    inference = {
        "imports": ["$import torch", "$import scripts"], "bundle_root": ".", "model_dir": "$@bundle_root + '/models'",
        "device": "$torch.device('cpu')",
        "trained_autoencoder_path": "$@model_dir + '/autoencoder_epoch273.pt'",
        "trained_diffusion_path": "$@model_dir + '/diff_unet_3d_rflow-ct.pt'",
        "trained_controlnet_path": "$@model_dir + '/controlnet_3d_rflow-ct.pt'",
        "trained_mask_generation_autoencoder_path": "$@model_dir + '/mask_generation_autoencoder.pt'",
        "spatial_dims": 3, "image_channels": 1, "latent_channels": 4, "include_body_region": False,
        **{k: network[k] for k in ("autoencoder_def", "diffusion_unet_def", "controlnet_def", "noise_scheduler")},
        "scale_factor": "$@checkpoint_diffusion_unet['scale_factor'].to(@device)",
        "ldm_sampler": {"_target_": "scripts.sample.LDMSampler", "_requires_": ["@load_diffusion"]},
        "run": ["$@ldm_sampler.sample_multiple_images(@num_output_samples)"],
    }
    (bundle / "configs/inference.json").write_text(json.dumps(inference))
    model = load_model(import_bundle(bundle, tmp_path / "model", name="maisi-bundle"), device="cpu")
    latent = model.card.latent
    assert latent.scale_factor == pytest.approx(scale) and latent.array_layout == "ras_xyz" and latent.body_label == 200
    assert model.card.scheduler.class_name == "RFlowScheduler" and model.card.normalization.window_min == -1000
    for role in ("network", "controlnet", "autoencoder"):
        for key, value in originals[role].state_dict().items():
            assert torch.equal(model.networks[role].state_dict()[key], value), (role, key)
