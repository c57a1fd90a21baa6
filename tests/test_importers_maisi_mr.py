"""NV-Generate-MR and -MR-Brain as NVIDIA-Medtech/NV-Generate-CTMR lays them out beside the CT files: tiny
random-weight MAISI networks under the real file names and config keys (environment_rflow-mr.json with
trained_controlnet_path null; environment_maisi_diff_model_rflow-mr-brain.json with model_dir + model_filename and no
ControlNet; config_maisi_diff_model_<variant>.json with modality and cfg_guidance_scale; modality_mapping.json).
The import must take each variant's own weights, never the CT ones, and generate without a label map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_importers import TINY_NETWORK_CONFIG, _build, make_maisi_folder

from napari_medgen.engine.errors import ModelWeightsError, OptionNotSupportedError

MAPPING = {"unknown": 0, "ct": 1, "ct_wo_contrast": 2, "mri": 8, "mri_t1": 9, "mri_t2": 10, "mri_flair": 11, "mri_swi": 20,
           "mri_t1_skull_stripped": 29}


def _diff_config(dim, spacing, modality, cfg):
    return {"diffusion_unet_train": {"batch_size": 1, "lr": 1e-5}, "diffusion_unet_inference": {
        "dim": dim, "spacing": spacing, "top_region_index": [0, 1, 0, 0], "bottom_region_index": [0, 0, 1, 0],
        "random_seed": 0, "num_inference_steps": 30, "modality": modality, "cfg_guidance_scale": cfg}}


def _unet_file(path, seed, scale):
    torch.manual_seed(seed)
    unet = _build(TINY_NETWORK_CONFIG["diffusion_unet_def"], TINY_NETWORK_CONFIG).eval()
    with torch.no_grad():  # MONAI zero-initialises the output convolution: make every weight count
        for parameter in unet.parameters():
            if parameter.abs().sum() == 0:
                parameter.normal_(0, 0.05)
    torch.save({"unet_state_dict": unet.state_dict(), "scale_factor": torch.tensor(scale), "num_train_timesteps": 1000}, path)
    return unet


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """The CT files (make_maisi_folder) plus the MR and MR-brain variants' configs and checkpoints."""
    root, ct, _ = make_maisi_folder(tmp_path_factory.mktemp("ctmr") / "NV-Generate-CTMR")
    configs = root / "configs"
    (configs / "environment_rflow-mr.json").write_text(json.dumps({
        "output_dir": "output", "trained_autoencoder_path": "models/autoencoder_v2.pt",
        "trained_diffusion_path": "models/diff_unet_3d_rflow-mr.pt", "trained_controlnet_path": None,
        "label_dict_json": "./configs/label_dict.json"}))
    (configs / "environment_maisi_diff_model_rflow-mr-brain.json").write_text(json.dumps({
        "model_dir": "./models", "model_filename": "diff_unet_3d_rflow-mr-brain_v1.pt",
        "trained_autoencoder_path": "models/autoencoder_v1.pt", "modality_mapping_path": "./configs/modality_mapping.json"}))
    (configs / "config_maisi_diff_model_rflow-mr.json").write_text(json.dumps(_diff_config([128, 256, 256], [1.25, 1.0, 1.0], 9, 15)))
    (configs / "config_maisi_diff_model_rflow-mr-brain.json").write_text(json.dumps(_diff_config([256, 256, 128], [0.94, 0.94, 1.36], 9, 2)))
    (configs / "modality_mapping.json").write_text(json.dumps(MAPPING))
    torch.manual_seed(11)
    autoencoder_v2 = _build(TINY_NETWORK_CONFIG["autoencoder_def"], TINY_NETWORK_CONFIG).eval()
    with torch.no_grad():  # the decoder's output into MR's 0..1 (random weights sit around 0, which MR's range clips)
        for name, parameter in autoencoder_v2.named_parameters():
            if name.startswith("decoder") and name.endswith("bias") and parameter.shape == (1,):
                parameter.fill_(0.5)
    torch.save(autoencoder_v2.state_dict(), root / "models/autoencoder_v2.pt")
    mr = _unet_file(root / "models/diff_unet_3d_rflow-mr.pt", 12, 0.7)
    brain = _unet_file(root / "models/diff_unet_3d_rflow-mr-brain_v1.pt", 13, 0.8)
    return root, {"ct": ct["network"], "mr": mr, "brain": brain, "ae_v1": ct["autoencoder"], "ae_v2": autoencoder_v2}


def _first_weight(module):
    return next(v for k, v in module.state_dict().items() if k.endswith("weight") and v.numel() > 8)


def test_mr_variants_import_their_own_weights_without_controlnet(checkout, tmp_path):
    from napari_medgen.engine.model.importers import import_maisi
    from napari_medgen.engine.model.loading import load_model

    root, nets = checkout
    for variant, unet, autoencoder, guidance, spacing in (
        ("rflow-mr", nets["mr"], nets["ae_v2"], 15.0, [1.25, 1.0, 1.0]),
        ("rflow-mr-brain", nets["brain"], nets["ae_v1"], 2.0, [0.94, 0.94, 1.36]),
    ):
        model = load_model(import_maisi(root, tmp_path / variant, variant=variant), device="cpu")
        card = model.card
        assert card.controlnet is None and "controlnet" not in model.networks
        assert card.conditioning.label_map == "none" and card.modality == "MR"
        assert card.latent.modality_code == 9 and card.latent.modality_guidance
        assert card.conditioning.default_guidance == guidance and card.spacing_mm == spacing
        assert "mri_flair" in card.latent.modalities and "ct" not in card.latent.modalities
        assert card.normalization.window_min == 0.0 and card.normalization.window_max == 1000.0
        assert torch.equal(_first_weight(model.networks["network"]), _first_weight(unet))  # its own UNet ...
        assert not torch.equal(_first_weight(model.networks["network"]), _first_weight(nets["ct"]))  # ... never CT's
        assert torch.equal(_first_weight(model.networks["autoencoder"]), _first_weight(autoencoder))
        assert card.provenance["checkpoints"]["controlnet"] is None


def test_mr_generates_without_labels_guided_on_modality(checkout, tmp_path):
    from napari_medgen.engine.model.importers import import_maisi
    from napari_medgen.engine.model.loading import load_model
    from napari_medgen.engine.synthesis import generate, generation_grid

    root, _ = checkout
    model = load_model(import_maisi(root, tmp_path / "mr", variant="rflow-mr"), device="cpu")
    grid = generation_grid(model.card, size=(16, 16, 8), spacing=(1.25, 1.0, 1.5))

    def run(**options):
        events = generate(model, grid, steps=2, seed=4, preview_every=0, **options)
        while True:
            try:
                next(events)
            except StopIteration as stop:
                return stop.value[0]

    first, again = run(), run()
    assert first.shape == (8, 16, 16) and first.spacing == (1.25, 1.0, 1.5)
    assert np.array_equal(first.array, again.array)  # same seed, same image
    record = first.metadata["provenance"]
    assert record["guidance"] == 15.0 and record["modality"] == "mri_t1" and record["network_calls"] == 4  # cond + uncond
    assert not np.array_equal(run(modality="mri_flair").array, first.array)  # the modality reaches the network
    assert not np.array_equal(run(guidance=1.0).array, first.array)  # and the guidance
    with pytest.raises(OptionNotSupportedError, match="no modality 'ct'"):
        run(modality="ct")


def test_missing_mr_brain_unet_refused_never_replaced_by_ct(checkout, tmp_path):
    """MR-brain's UNet absent in a checkout that holds CT's: one line naming the file and the option, no import."""
    import shutil

    from napari_medgen.engine.model.importers import import_maisi

    root, _ = checkout
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "models/diff_unet_3d_rflow-mr-brain_v1.pt").unlink()
    with pytest.raises(ModelWeightsError) as error:
        import_maisi(copy, tmp_path / "out", variant="rflow-mr-brain")
    message = str(error.value)
    assert "diff_unet_3d_rflow-mr-brain_v1.pt" in message and "--unet-weights" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    env = copy / "configs/environment_rflow-mr.json"
    data = json.loads(env.read_text())
    data["trained_diffusion_path"] = None
    env.write_text(json.dumps(data))
    with pytest.raises(ModelWeightsError, match="names no network checkpoint .*--unet-weights"):
        import_maisi(copy, tmp_path / "out", variant="rflow-mr")


def test_cli_import_mr_and_generate_on_own_grid(checkout, tmp_path):
    """import-maisi --variant rflow-mr --modality mri_t2, then generate with no label map at a size asked for."""
    from napari_medgen.cli import main
    from napari_medgen.engine.io import read_volume

    root, _ = checkout
    out = tmp_path / "mr"
    assert main(["import-maisi", str(root), "--out", str(out), "--variant", "rflow-mr", "--modality", "mri_t2"]) == 0
    assert json.loads((out / "model.json").read_text())["latent"]["modality_code"] == 10
    image = tmp_path / "mr.nii.gz"
    assert main(["generate", "--model", str(out), "--size", "16", "16", "8", "--spacing", "1", "1", "2",
                 "--steps", "2", "--out", str(image)]) == 0
    result = read_volume(image)
    assert result.shape == (8, 16, 16) and np.allclose(result.spacing, (1, 1, 2))
    assert main(["generate", "--model", str(out), "--labels", str(image), "--size", "8", "8", "8", "--out", str(image)]) != 0
