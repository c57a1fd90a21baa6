"""Model cards: schema errors named by field, checks across fields (channels, tiles, SPADE, ControlNet),
every allowed scheduler, unreadable cards, arguments MONAI refuses, atlas files kept inside the model folder.

No Qt, no napari. Models are tiny random-weight MONAI UNets built in the test (`tiny_models`).
"""

from __future__ import annotations

import copy
import json

import pytest
from engine_fixtures import clean_model_cache  # noqa: F401 (fixture)
from tiny_models import make_tiny_model, tiny_card, tiny_controlnet_card_dict

from napari_medgen.engine.errors import ModelCardError
from napari_medgen.engine.model.card import CARD_FILE, load_card, parse_card
from napari_medgen.engine.model.loading import load_model
from napari_medgen.engine.model.registry import find_model


def _card_dict(**card_args) -> dict:
    return tiny_card(**card_args).model_dump(mode="json")


# -- the card --------------------------------------------------------------------------------------
def test_valid_card_parses_and_round_trips(tmp_path):
    raw = _card_dict()
    card = parse_card(raw)
    assert card.name == "tiny-2d"
    assert card.input_channels == card.network.kwargs["in_channels"]
    assert card.supports_guidance
    (tmp_path / CARD_FILE).write_text(json.dumps(raw))
    assert load_card(tmp_path) == card


def _drop(key):
    def change(raw):
        del raw[key]

    return change


def _set(*path, value):
    def change(raw):
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


INVALID_CARDS = {
    "missing name": (_drop("name"), "name"),
    "missing network": (_drop("network"), "network"),
    "missing label schema": (_drop("label_schema"), "label_schema"),
    "torch module class": (_set("network", "class_name", value="torch.nn.Module"), "torch.nn.Module"),
    "os.system class": (_set("network", "class_name", value="os.system"), "os.system"),
    "unknown MONAI class": (_set("network", "class_name", value="UNet"), "network"),
    "unknown scheduler": (_set("scheduler", "class_name", value="EvilScheduler"), "scheduler.class_name"),
    "in_channels off": (_set("network", "kwargs", "in_channels", value=3), "in_channels"),
    "weights parent dir": (_set("weights", value="../evil.safetensors"), "weights"),
    "weights nested parent dir": (_set("weights", value="sub/../../evil.safetensors"), "weights"),
    "weights absolute": (_set("weights", value="/tmp/evil.safetensors"), "weights"),
    "weights pickle": (_set("weights", value="weights.pt"), "weights"),
    "forbidden kwarg": (_set("network", "kwargs", "__class__", value="os.system"), "network.kwargs"),
    "unknown field": (_set("exec", value="import os"), "exec"),
    "tile of wrong length": (_set("tile_size", value=[16, 16, 16]), "tile_size"),
    "spatial dims 4": (_set("spatial_dims", value=4), "spatial_dims"),
    "no background class": (
        _set("label_schema", "classes", value=[{"index": 1, "name": "a", "color": "#ffffff"}]),
        "label_schema",
    ),
    "bad task": (_set("tasks", value=["segment"]), "tasks"),
}


@pytest.mark.parametrize("change, field", INVALID_CARDS.values(), ids=INVALID_CARDS.keys())
def test_invalid_card_raises_naming_the_field(change, field, tmp_path):
    raw = _card_dict()
    change(raw)
    with pytest.raises(ModelCardError, match=field.replace(".", r"\.")):
        parse_card(raw)
    (tmp_path / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelCardError, match=field.replace(".", r"\.")) as info:
        load_card(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_spade_card_checks_label_nc_and_in_channels():
    raw = _card_dict(label_map="spade", known_image=False, slice_position=False)
    assert parse_card(raw).input_channels == 1
    bad = copy.deepcopy(raw)
    bad["network"]["kwargs"]["label_nc"] = 2
    with pytest.raises(ModelCardError, match="label_nc"):
        parse_card(bad)
    bad = copy.deepcopy(raw)
    bad["network"]["kwargs"]["in_channels"] = 5
    with pytest.raises(ModelCardError, match="in_channels"):
        parse_card(bad)


def test_card_needs_single_output_channel():
    raw = _card_dict()
    raw["network"]["kwargs"]["out_channels"] = 2
    with pytest.raises(ModelCardError, match="out_channels"):
        parse_card(raw)


def test_tile_must_fit_the_unet_downsampling():
    raw = _card_dict(spatial_dims=3)
    raw["network"]["kwargs"]["channels"] = [8, 8, 16, 16]
    raw["network"]["kwargs"]["attention_levels"] = [False, False, False, True]
    raw["tile_size"] = [12, 16, 16]  # 12 is not a multiple of 2**3
    with pytest.raises(ModelCardError, match="tile_size"):
        parse_card(raw)


def test_controlnet_card_checks_its_inputs():
    raw = tiny_controlnet_card_dict()
    assert parse_card(raw).conditioning.label_map == "controlnet"
    bad = copy.deepcopy(raw)
    bad["controlnet"]["kwargs"]["conditioning_embedding_in_channels"] = 3
    with pytest.raises(ModelCardError, match="conditioning_embedding_in_channels"):
        parse_card(bad)
    bad = copy.deepcopy(raw)
    bad["controlnet"]["kwargs"]["in_channels"] = 15
    with pytest.raises(ModelCardError, match="controlnet in_channels"):
        parse_card(bad)
    bad = copy.deepcopy(raw)
    bad["controlnet"]["class_name"] = "DiffusionModelUNet"
    with pytest.raises(ModelCardError, match="controlnet"):
        parse_card(bad)
    bad = copy.deepcopy(raw)
    del bad["controlnet"]
    with pytest.raises(ModelCardError, match="controlnet"):
        parse_card(bad)


@pytest.mark.parametrize(
    "class_name, schedule, prediction",
    [
        ("DDPMScheduler", "linear_beta", "epsilon"),
        ("DDPMScheduler", "scaled_linear_beta", "v_prediction"),
        ("DDIMScheduler", "cosine", "sample"),
        ("DDIMScheduler", "sigmoid_beta", "epsilon"),
    ],
)
def test_every_allowed_schedule_builds(class_name, schedule, prediction):
    from napari_medgen.engine.diffusion.schedule import NoiseSchedule

    raw = _card_dict()
    raw["scheduler"] = {
        "class_name": class_name,
        "schedule": schedule,
        "prediction_type": prediction,
        "num_train_timesteps": 50,
    }
    card = parse_card(raw)
    noise = NoiseSchedule(card.scheduler)
    values = [noise.alpha_bar(t) for t in range(50)]
    assert all(0 < b < a < 1 for a, b in zip(values, values[1:], strict=False))
    assert noise.timesteps(5) == [49, 37, 24, 12, 0]


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe garbage"])
def test_invalid_json_raises_card_error(tmp_path, text):
    (tmp_path / CARD_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelCardError, match="JSON"):
        load_card(tmp_path)


def test_card_that_is_not_an_object(tmp_path):
    (tmp_path / CARD_FILE).write_text("[1, 2, 3]")
    with pytest.raises(ModelCardError, match="JSON object"):
        load_card(tmp_path)


def test_folder_without_card(tmp_path):
    with pytest.raises(ModelCardError, match=CARD_FILE):
        load_card(tmp_path)


def test_kwargs_that_monai_refuses_are_a_card_error(tmp_path):
    folder = make_tiny_model(tmp_path / "model")
    raw = json.loads((folder / CARD_FILE).read_text())
    raw["network"]["kwargs"]["norm_num_groups"] = 3  # does not divide the channels
    (folder / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelCardError, match="network"):
        load_model(folder)
    raw["network"]["kwargs"]["norm_num_groups"] = 8
    raw["network"]["kwargs"]["no_such_argument"] = 1
    (folder / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelCardError, match="no_such_argument"):
        load_model(folder)


@pytest.mark.parametrize("name", ["/etc/passwd", "../other/atlas.nii.gz", "sample:../../secret.nii.gz"])
def test_card_atlas_files_must_lie_inside_the_model_folder(name):
    raw = _card_dict()
    raw["atlas"] = {"image": name, "labels": "labels.nii.gz"}
    with pytest.raises(ModelCardError, match="atlas"):
        parse_card(raw)


def test_shipped_demo_card_names_its_atlas():
    entry = find_model("brain-t1-demo")
    assert entry.card.atlas is not None and entry.card.atlas.image.startswith("sample:")
