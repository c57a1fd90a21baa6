"""The MONAI model zoo's generative bundles as their publishers lay them out (configs/inference.json or
common.yaml + infer.yaml, metadata.json, training configs, models/*.pt|.pth), with tiny random-weight networks of
MONAI's real classes: the brain LDM's context vector, brats' training geometry, the axial-slice 2-D latent model,
mednist_ddpm's pixel DDPM with MONAI's scheduler defaults, and a bundle-local RFlowScheduler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_medgen.engine.errors import ModelCardError, OptionNotSupportedError
from napari_medgen.engine.volume import Volume

AE = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "latent_channels": 3, "num_channels": [8, 8], "num_res_blocks": 1,
      "norm_num_groups": 4, "norm_eps": 1e-6, "attention_levels": [False, False], "with_encoder_nonlocal_attn": False,
      "with_decoder_nonlocal_attn": False}


def _save(module, path):
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.abs().sum() == 0:
                parameter.normal_(0, 0.05)
    torch.save(module.state_dict(), path)


def _build(class_name, kwargs):
    from napari_medgen.engine.model.networks import network_class

    kwargs = {("channels" if k == "num_channels" else k): v for k, v in kwargs.items()}
    return network_class(class_name)(**kwargs).eval()


def _run(events):
    while True:
        try:
            next(events)
        except StopIteration as stop:
            return stop.value[0]


@pytest.fixture
def brain_ldm(tmp_path):
    """brain_image_synthesis_latent_diffusion_model: generative.* targets, .pth weights, the context in a $ expression."""
    torch.manual_seed(5)
    root = tmp_path / "brain_image_synthesis_latent_diffusion_model"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "scripts").mkdir()
    unet = {"spatial_dims": 3, "in_channels": 7, "out_channels": 3, "num_channels": [8, 16], "num_res_blocks": 1,
            "attention_levels": [False, True], "norm_num_groups": 4, "norm_eps": 1e-6, "resblock_updown": True,
            "num_head_channels": [0, 16], "with_conditioning": True, "transformer_num_layers": 1, "cross_attention_dim": 4,
            "upcast_attention": True, "use_flash_attention": False}
    config = {
        "imports": ["$import torch"], "bundle_root": ".", "model_dir": "$@bundle_root + '/models'",
        "gender": 0.0, "age": 0.1, "ventricular_vol": 0.2, "brain_vol": 0.4,
        "device": "$torch.device('cpu')",
        "conditioning": "$torch.tensor([[@gender, @age, @ventricular_vol, @brain_vol]]).to(@device).unsqueeze(1)",
        "autoencoder_def": {"_target_": "generative.networks.nets.AutoencoderKL", **AE},
        "load_autoencoder_path": "$@model_dir + '/autoencoder.pth'",
        "diffusion_def": {"_target_": "generative.networks.nets.DiffusionModelUNet", **unet},
        "load_diffusion_path": "$@model_dir + '/diffusion_model.pth'",
        "scheduler": {"_target_": "generative.networks.schedulers.DDIMScheduler", "_requires_": ["@load_diffusion"],
                      "beta_start": 0.0015, "beta_end": 0.0205, "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                      "clip_sample": False},
        "noise": "$torch.randn((1, 3, 20, 28, 20)).to(@device)",
    }
    metadata = {"version": "1.0.0", "image_classes": "T1w head MRI with 1x1x1 mm voxel size",
                "network_data_format": {
                    "inputs": {"image": {"type": "tabular", "value_range": [0, 1], "channel_def": {
                        "0": "Gender", "1": "Age", "2": "Ventricular volume", "3": "Brain volume"}}},
                    "outputs": {"pred": {"type": "image", "spatial_shape": ["32", "32", "16"]}}}}
    (root / "configs/inference.json").write_text(json.dumps(config, indent=1))
    (root / "configs/metadata.json").write_text(json.dumps(metadata))
    (root / "scripts/saver.py").write_text(
        "import numpy as np\nclass NiftiSaver:\n    def __init__(self):\n        self.affine = np.array(\n"
        "            [[-1.0, 0.0, 0.0, 96.5], [0.0, 1.0, 0.0, -141.5], [0.0, 0.0, 1.0, -156.6], [0.0, 0.0, 0.0, 1.0]])\n")
    autoencoder, network = _build("AutoencoderKL", AE), _build("DiffusionModelUNet", unet)
    _save(autoencoder, root / "models/autoencoder.pth")
    _save(network, root / "models/diffusion_model.pth")
    return root, network


def test_brain_ldm_imports_with_its_context_and_generates(brain_ldm, tmp_path):
    from napari_medgen.engine.model.importers import import_bundle
    from napari_medgen.engine.model.loading import load_model
    from napari_medgen.engine.synthesis import generate

    root, network = brain_ldm
    model = load_model(import_bundle(root, tmp_path / "ldm", scale_factor=1.0), device="cpu")
    card = model.card
    assert [(a.name, a.default, a.label) for a in card.conditioning.context] == [
        ("gender", 0.0, "Gender"), ("age", 0.1, "Age"), ("ventricular_vol", 0.2, "Ventricular volume"), ("brain_vol", 0.4, "Brain volume")]
    assert card.conditioning.context_channels and card.conditioning.label_map == "none"
    assert card.latent.array_layout == "las_xyz" and card.spacing_mm == [1.0, 1.0, 1.0] and card.tile_size == [32, 32, 16]
    assert card.scheduler.class_name == "DDIMScheduler" and card.scheduler.schedule == "scaled_linear_beta"
    key = next(k for k in network.state_dict() if "attn" in k and k.endswith("weight"))
    assert torch.equal(model.networks["network"].state_dict()[key], network.state_dict()[key])

    def run(**attributes):
        return _run(generate(model, None, steps=2, seed=3, preview_every=0, attributes=attributes or None))

    first = run(age=0.7)
    assert first.shape == (16, 32, 32) and first.spacing == (1.0, 1.0, 1.0)
    assert first.metadata["provenance"]["attributes"] == {"gender": 0.0, "age": 0.7, "ventricular_vol": 0.2, "brain_vol": 0.4}
    assert np.array_equal(run(age=0.7).array, first.array)  # same seed and attributes, same image
    assert not np.array_equal(run(age=0.2).array, first.array)  # the attribute reaches the network
    with pytest.raises(OptionNotSupportedError, match="outside the range"):
        run(age=3.0)
    with pytest.raises(OptionNotSupportedError, match="no attribute height"):
        run(height=1.0)


def test_cli_generate_with_attributes(brain_ldm, tmp_path):
    from napari_medgen.cli import main
    from napari_medgen.engine.io import read_volume

    root, _ = brain_ldm
    out = tmp_path / "ldm"
    assert main(["import-bundle", str(root), "--out", str(out), "--scale-factor", "1.0"]) == 0
    image = tmp_path / "brain.nii.gz"
    assert main(["generate", "--model", str(out), "--attribute", "age=0.5", "--attribute", "gender=1", "--steps", "2",
                 "--out", str(image)]) == 0
    assert read_volume(image).shape == (16, 32, 32)
    assert main(["generate", "--model", str(out), "--attribute", "age", "--out", str(image)]) != 0


def _brats(tmp_path, dims):
    """brats_mri_generative_diffusion (3-D) or its axial-slice 2-D sibling: MONAI 1.4 targets, latent_shape, a
    training config with Orientationd RAS and its spacing, model_autoencoder.pt + model.pt."""
    torch.manual_seed(7)
    root = tmp_path / f"brats_{dims}d"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    ae = dict(AE, spatial_dims=dims, latent_channels=1 if dims == 2 else 3)
    unet = {"spatial_dims": dims, "in_channels": "@latent_channels", "out_channels": "@latent_channels", "channels": [8, 16],
            "attention_levels": [False, True], "num_head_channels": [0, 8], "num_res_blocks": 1, "norm_num_groups": 4}
    shape = [8, 8] if dims == 2 else [4, 6, 4]
    config = {"imports": ["$import torch"], "bundle_root": ".", "model_dir": "$@bundle_root + '/models'",
              "spatial_dims": dims, "latent_channels": ae["latent_channels"], "latent_shape": ["@latent_channels", *shape],
              "autoencoder_def": {"_target_": "monai.networks.nets.autoencoderkl.AutoencoderKL", **ae},
              "network_def": {"_target_": "monai.networks.nets.diffusion_model_unet.DiffusionModelUNet", **unet},
              "load_autoencoder_path": "$@bundle_root + '/models/model_autoencoder.pt'",
              "load_diffusion_path": "$@model_dir + '/model.pt'",
              "noise_scheduler": {"_target_": "monai.networks.schedulers.ddim.DDIMScheduler", "num_train_timesteps": 1000,
                                  "beta_start": 0.0015, "beta_end": 0.0195, "schedule": "scaled_linear_beta", "clip_sample": False}}
    train = {"spacing": [1.1] * dims, "preprocessing": [{"_target_": "LoadImaged", "keys": "image"},
                                                        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}]}
    (root / "configs/inference.json").write_text(json.dumps(config))
    (root / "configs/train_autoencoder.json").write_text(json.dumps(train))
    resolved = {k: (ae["latent_channels"] if v == "@latent_channels" else v) for k, v in unet.items()}
    _save(_build("AutoencoderKL", ae), root / "models/model_autoencoder.pt")
    network = _build("DiffusionModelUNet", resolved)
    _save(network, root / "models/model.pt")
    return root, network


def test_brats_3d_trained_geometry(tmp_path):
    from napari_medgen.engine.model.importers import import_bundle
    from napari_medgen.engine.model.loading import load_model
    from napari_medgen.engine.synthesis import generate

    root, _ = _brats(tmp_path, 3)
    model = load_model(import_bundle(root, tmp_path / "brats", scale_factor=1.0), device="cpu")
    assert model.card.latent.array_layout == "ras_xyz" and model.card.spacing_mm == [1.1, 1.1, 1.1]
    assert model.card.tile_size == [8, 12, 8]  # latent_shape x the autoencoder's compression
    image = _run(generate(model, None, steps=2, preview_every=0))
    assert image.shape == (8, 12, 8) and np.allclose(image.spacing, 1.1)
    overridden = load_model(import_bundle(root, tmp_path / "b2", scale_factor=1.0, layout="las_xyz", spacing=[1, 1, 1]), device="cpu")
    assert overridden.card.latent.array_layout == "las_xyz" and overridden.card.spacing_mm == [1.0, 1.0, 1.0]


def test_brats_axial_2d_latent_generates_slices(tmp_path):
    from napari_medgen.engine.model.importers import import_bundle
    from napari_medgen.engine.model.loading import load_model
    from napari_medgen.engine.synthesis import generate, generation_grid

    root, _ = _brats(tmp_path, 2)
    model = load_model(import_bundle(root, tmp_path / "axial", scale_factor=1.0), device="cpu")
    assert model.card.spatial_dims == 2 and model.card.tasks == ["generate"] and model.card.tile_size == [16, 16]
    single = _run(generate(model, None, steps=2, preview_every=0))
    assert single.shape == (16, 16) and np.allclose(single.spacing, 1.1)
    like = Volume(np.zeros((3, 16, 16), np.uint8), (1.1, 1.1, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    assert generation_grid(model.card, like).shape == (3, 16, 16)
    stack = _run(generate(model, like, steps=2, preview_every=0))
    assert stack.shape == (3, 16, 16) and not np.array_equal(stack.array[0], stack.array[1])


def test_mednist_ddpm_yaml_pixel_model_with_monai_defaults(tmp_path):
    from napari_medgen.engine.model.importers import import_bundle
    from napari_medgen.engine.model.loading import load_model
    from napari_medgen.engine.synthesis import generate

    torch.manual_seed(9)
    root = tmp_path / "mednist_ddpm"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs/common.yaml").write_text(
        "imports:\n- $import torch\ndevice: '$torch.device(\"cpu\")'\nnetwork_def:\n  _target_: generative.networks.nets.DiffusionModelUNet\n"
        "  spatial_dims: 2\n  in_channels: 1\n  out_channels: 1\n  num_channels: [8, 16]\n  attention_levels: [false, true]\n"
        "  num_res_blocks: 1\n  num_head_channels: 16\n  norm_num_groups: 4\nbundle_root: .\n"
        "ckpt_path: $@bundle_root + '/models/model.pt'\nimage_dim: 16\nimage_size: [1, '@image_dim', '@image_dim']\n"
        "num_train_timesteps: 1000\nbase_transforms:\n- _target_: ScaleIntensityRanged\n  keys: '@image'\n  a_min: 0.0\n"
        "  a_max: 255.0\n  b_min: 0.0\n  b_max: 1.0\n  clip: true\nscheduler:\n  _target_: generative.networks.schedulers.DDPMScheduler\n"
        "  num_train_timesteps: '@num_train_timesteps'\n")
    (root / "configs/infer.yaml").write_text("noise: $torch.rand(1,1,@image_dim,@image_dim)\nload_state: '$@network.load_state_dict(torch.load(@ckpt_path))'\n")
    network = _build("DiffusionModelUNet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "num_channels": [8, 16],
                                            "attention_levels": [False, True], "num_res_blocks": 1, "num_head_channels": 16,
                                            "norm_num_groups": 4})
    _save(network, root / "models/model.pt")
    model = load_model(import_bundle(root, tmp_path / "mednist"), device="cpu")
    card = model.card
    assert card.latent is None and card.spatial_dims == 2 and card.tile_size == [16, 16]
    assert (card.scheduler.schedule, card.scheduler.beta_start, card.scheduler.beta_end) == ("linear_beta", 1e-4, 2e-2)
    assert (card.normalization.output_min, card.normalization.output_max) == (-255.0, 255.0)  # the network's 0..1 is 0..255
    key = next(iter(network.state_dict()))
    assert torch.equal(model.networks["network"].state_dict()[key], network.state_dict()[key])
    image = _run(generate(model, None, steps=2, preview_every=0))
    assert image.shape == (16, 16) and np.isfinite(image.array).all()


def test_bundle_local_rflow_scheduler_mapped_when_arguments_match():
    from napari_medgen.engine.model.importers.safe_config import target_of
    from napari_medgen.engine.model.importers.scheduler_spec import scheduler_spec

    section = {"_target_": "scripts.rectified_flow.RFlowScheduler", "num_train_timesteps": 1000, "use_discrete_timesteps": False,
               "use_timestep_transform": True, "sample_method": "uniform", "scale": 1.4}
    class_name, kwargs = target_of(section, "noise_scheduler")
    spec = scheduler_spec(class_name, kwargs)
    assert spec["class_name"] == "RFlowScheduler" and spec["use_timestep_transform"] is True
    assert spec["base_img_size_numel"] == 32768  # MONAI's default, stated
    with pytest.raises(ModelCardError, match="does not take \\(shift\\)"):
        target_of(dict(section, shift=3.0), "noise_scheduler")
