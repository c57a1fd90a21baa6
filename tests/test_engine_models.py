"""Model weights, the registry and the cache: unsafe or mismatched weights refused, state dicts imported,
models found and shadowed by name or folder, the cache and its release, devices and precisions.

No Qt, no napari. Models are tiny random-weight MONAI UNets built in the test (`tiny_models`).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from engine_fixtures import clean_model_cache  # noqa: F401 (fixture)
from tiny_models import make_tiny_model, tiny_card

from napari_medgen.engine.errors import DeviceError, ModelCardError, ModelNotFoundError, ModelWeightsError
from napari_medgen.engine.model import registry as models_module
from napari_medgen.engine.model.card import CARD_FILE, parse_card
from napari_medgen.engine.model.device import resolve_device
from napari_medgen.engine.model.loading import load_model, loaded_models, release_model
from napari_medgen.engine.model.networks import build_networks
from napari_medgen.engine.model.registry import find_model, list_models
from napari_medgen.engine.model.weights import import_state_dict


@pytest.fixture
def isolated_registry(tmp_path, monkeypatch) -> dict[str, Path]:
    """An empty user folder, no environment folders and no shipped models, so that neither the host's own
    models nor the shipped demo model (once trained into resources/models) show up."""
    import napari_medgen._paths as paths

    user = tmp_path / "user-models"
    user.mkdir()
    shipped = tmp_path / "shipped-models"
    shipped.mkdir()
    monkeypatch.setattr(models_module, "user_models_dir", lambda: user)
    monkeypatch.setattr(paths, "shipped_models_dir", lambda: shipped)
    monkeypatch.delenv(models_module.ENV_VAR, raising=False)
    return {"user": user}


class _Marker:
    """Unpickling this would create a file: proof that code in a weights file ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).touch, ())


# -- weights ---------------------------------------------------------------------------------------
def test_tiny_model_loads(tmp_path):
    folder = make_tiny_model(tmp_path / "model")
    model = load_model(folder, device="cpu")
    assert model.name == "tiny-2d"
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert len(model.weights_sha256) == 64
    network = model.networks["network"]
    assert not network.training
    assert not any(p.requires_grad for p in network.parameters())


def test_missing_weights(tmp_path):
    folder = make_tiny_model(tmp_path / "model")
    (folder / "weights.safetensors").unlink()
    with pytest.raises(ModelWeightsError, match="missing"):
        load_model(folder)


def test_weights_of_another_architecture_name_the_mismatching_keys(tmp_path):
    folder = make_tiny_model(tmp_path / "model")
    other = make_tiny_model(tmp_path / "other", known_image=False)  # fewer input channels
    shutil.copy(other / "weights.safetensors", folder / "weights.safetensors")
    with pytest.raises(ModelWeightsError, match=r"wrong shape .*network\.conv_in"):
        load_model(folder)
    wider = tmp_path / "wider"
    card = tiny_card()
    raw = card.model_dump(mode="json")
    raw["network"]["kwargs"]["channels"] = [8, 16, 16]
    raw["network"]["kwargs"]["attention_levels"] = [False, False, True]
    from napari_medgen.engine.model.weights import save_model

    wide_card = parse_card(raw)
    save_model(wide_card, build_networks(wide_card), wider)
    shutil.copy(wider / "weights.safetensors", folder / "weights.safetensors")
    with pytest.raises(ModelWeightsError, match=r"unexpected network\.") as info:
        load_model(folder)
    assert "different models" in str(info.value)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_weights_are_refused_without_running_them(tmp_path, writer):
    folder = make_tiny_model(tmp_path / "model")
    marker = tmp_path / "code-ran"
    payload = {"network.conv_in.conv.weight": torch.zeros(1), "evil": _Marker(marker)}
    weights = folder / "weights.safetensors"
    if writer == "torch.save":
        torch.save(payload, weights)
    else:
        with open(weights, "wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(ModelWeightsError, match="safetensors"):
        load_model(folder)
    assert not marker.exists()


def test_truncated_and_empty_weights(tmp_path):
    folder = make_tiny_model(tmp_path / "model")
    weights = folder / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelWeightsError):
        load_model(folder)
    weights.write_bytes(b"")
    with pytest.raises(ModelWeightsError):
        load_model(folder)


def test_symlinked_weights_load(tmp_path):
    """Model hubs keep weights in a blob store and link them into the model folder; that is fine."""
    folder = make_tiny_model(tmp_path / "model")
    store = tmp_path / "blobs"
    store.mkdir()
    blob = store / "abc123"
    (folder / "weights.safetensors").rename(blob)
    try:
        (folder / "weights.safetensors").symlink_to(blob)
    except OSError:
        pytest.skip("no symlinks on this file system")
    model = load_model(folder)
    assert model.networks["network"] is not None


def test_import_state_dict_refuses_code(tmp_path):
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"conv_in.conv.weight": torch.zeros(1), "evil": _Marker(marker)}, checkpoint)
    with pytest.raises(ModelWeightsError, match="refusing"):
        import_state_dict(checkpoint, tiny_card(), tmp_path / "imported")
    assert not marker.exists()
    assert not (tmp_path / "imported" / CARD_FILE).exists()


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "lightning-style"])
def test_import_state_dict_of_a_plain_state_dict(tmp_path, wrap):
    card = tiny_card(name="imported")
    torch.manual_seed(3)
    network = build_networks(card)["network"]
    state = network.state_dict()
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "epoch": 4} if wrap else state, checkpoint)
    folder = import_state_dict(checkpoint, card, tmp_path / "imported")
    model = load_model(folder)
    for key, value in state.items():
        assert torch.equal(model.networks["network"].state_dict()[key], value), key


def test_import_state_dict_of_another_architecture_leaves_no_model(tmp_path, isolated_registry):
    network = build_networks(tiny_card(known_image=False))["network"]
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save(network.state_dict(), checkpoint)
    out = isolated_registry["user"] / "imported"
    with pytest.raises(ModelWeightsError, match="conv_in"):
        import_state_dict(checkpoint, tiny_card(name="imported"), out)
    # A half-made model folder would show up in the registry and fail later.
    entries, problems = list_models()
    assert [e.card.name for e in entries] == []
    assert not (out / CARD_FILE).exists()


def test_import_state_dict_of_a_missing_file(tmp_path):
    with pytest.raises(ModelWeightsError):
        import_state_dict(tmp_path / "nope.pt", tiny_card(), tmp_path / "imported")


# -- the registry ----------------------------------------------------------------------------------
def test_environment_model_shadows_user_model(tmp_path, isolated_registry, monkeypatch):
    env_root = tmp_path / "env-models"
    env_model = make_tiny_model(env_root / "tiny", seed=1)
    user_model = make_tiny_model(isolated_registry["user"] / "tiny", seed=2)
    make_tiny_model(isolated_registry["user"] / "other", name="other-model")
    monkeypatch.setenv(models_module.ENV_VAR, os.pathsep.join([str(tmp_path / "does-not-exist"), str(env_root)]))

    entries, problems = list_models()
    assert problems == []
    by_name = {e.card.name: e for e in entries}
    assert set(by_name) == {"tiny-2d", "other-model"}
    winner = by_name["tiny-2d"]
    assert winner.source == "environment"
    assert Path(winner.folder).resolve() == env_model.resolve()
    assert len(winner.shadows) == 1 and "user" in winner.shadows[0] and str(user_model) in winner.shadows[0]
    assert by_name["other-model"].source == "user" and by_name["other-model"].shadows == ()

    entry = find_model("tiny-2d")
    assert Path(entry.folder).resolve() == env_model.resolve()
    loaded = load_model("tiny-2d")
    assert Path(loaded.folder).resolve() == env_model.resolve()
    assert loaded.source == "environment"


def test_same_folder_listed_twice_does_not_shadow_itself(tmp_path, isolated_registry, monkeypatch):
    make_tiny_model(isolated_registry["user"] / "tiny")
    monkeypatch.setenv(models_module.ENV_VAR, str(isolated_registry["user"]))
    entries, _ = list_models()
    assert len(entries) == 1 and entries[0].shadows == ()


def test_a_model_folder_named_directly_in_the_environment(tmp_path, isolated_registry, monkeypatch):
    folder = make_tiny_model(tmp_path / "just-one")
    monkeypatch.setenv(models_module.ENV_VAR, str(folder))
    entries, _ = list_models()
    assert [(e.card.name, e.source) for e in entries] == [("tiny-2d", "environment")]


def test_broken_card_is_listed_as_a_problem(isolated_registry):
    make_tiny_model(isolated_registry["user"] / "good")
    broken = isolated_registry["user"] / "broken"
    broken.mkdir()
    (broken / CARD_FILE).write_text("{")
    entries, problems = list_models()
    assert [e.card.name for e in entries] == ["tiny-2d"]
    assert len(problems) == 1 and "broken" in problems[0]


def test_unknown_model_name(isolated_registry):
    make_tiny_model(isolated_registry["user"] / "tiny")
    with pytest.raises(ModelNotFoundError, match="tiny-2d"):
        find_model("no-such-model")


def test_name_beats_a_stray_folder_of_the_same_name(tmp_path, isolated_registry, monkeypatch):
    """A folder named like a model in the working directory (without a card) must not hide the model."""
    make_tiny_model(isolated_registry["user"] / "tiny")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-2d").mkdir()
    assert find_model("tiny-2d").source == "user"


def test_folder_path_without_card_says_so(tmp_path, isolated_registry):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelCardError, match=CARD_FILE):
        find_model(tmp_path / "empty")


# -- the cache and devices -------------------------------------------------------------------------
def test_cache_returns_the_same_model_and_release_frees_it(tmp_path):
    folder = make_tiny_model(tmp_path / "model")
    first = load_model(folder)
    assert load_model(str(folder)) is first
    assert loaded_models() == [first]
    assert release_model(first) == 1
    assert loaded_models() == []
    assert release_model(first) == 0
    second = load_model(folder)
    assert second is not first


def test_cache_notices_new_weights(tmp_path):
    """Re-training into the same folder must not leave the old network in use."""
    folder = make_tiny_model(tmp_path / "model", seed=0)
    first = load_model(folder)
    make_tiny_model(folder, seed=1)
    second = load_model(folder)
    assert second is not first
    assert second.weights_sha256 != first.weights_sha256


def test_auto_device_is_cpu_without_accelerators(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    model = load_model(make_tiny_model(tmp_path / "model"), device="auto")
    assert model.device.type == "cpu"


def test_fp16_on_cpu_is_a_device_error(tmp_path):
    with pytest.raises(DeviceError, match="fp16"):
        load_model(make_tiny_model(tmp_path / "model"), device="cpu", precision="fp16")
    with pytest.raises(DeviceError, match="precision"):
        load_model(tmp_path / "model", device="cpu", precision="fp8")


def test_bad_device_names(monkeypatch):
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA"):
        resolve_device("cuda:0")


def test_missing_gpu_index_and_garbled_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="no GPU 3"):
        resolve_device("cuda:3")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("cuda:zero")


def test_bf16_on_cpu_loads(tmp_path):
    model = load_model(make_tiny_model(tmp_path / "model"), device="cpu", precision="bf16")
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.networks["network"].parameters())
