"""What the engine's synthesis and model tests share: torch on one thread, an empty model cache, tiny models of
every conditioning route (random weights, built once per test module), small volumes in awkward geometry, and
an "oracle" network that knows the answer, so that where the content of a result matters it can be checked.

Test modules import the fixtures by name (`from engine_fixtures import models, one_thread`); imported, a
module-scoped fixture is built once for each module that uses it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_model, randomize_zero_layers, tiny_controlnet_card_dict

from napari_medgen.engine.diffusion.schedule import NoiseSchedule
from napari_medgen.engine.model.card import parse_card
from napari_medgen.engine.model.loading import LoadedModel, load_model, release_model
from napari_medgen.engine.model.networks import build_networks
from napari_medgen.engine.model.weights import save_model
from napari_medgen.engine.orientation import to_canonical
from napari_medgen.engine.volume import Volume

SPACING = (0.9, 1.1, 3.0)
ORIGIN = (12.5, -40.25, 7.0)
# Array axes permuted and flipped against the patient axes (a sagittal-style acquisition).
PERMUTED_FLIPPED = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
# A truly oblique direction with a flip (det -1).
_q, _ = np.linalg.qr(np.array([[0.9, 0.3, 0.1], [-0.2, 0.8, 0.4], [0.1, -0.5, 0.95]]))
OBLIQUE_FLIPPED = _q @ np.diag([1.0, 1.0, -1.0] if np.linalg.det(_q) > 0 else [1.0, 1.0, 1.0])
assert np.linalg.det(OBLIQUE_FLIPPED) < 0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def clean_model_cache():
    """Every test starts and ends with an empty model cache (models are cached process-wide)."""
    release_model()
    yield
    release_model()


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    folders = {
        "2d": make_tiny_model(root / "tiny-2d"),
        "repaint": make_tiny_model(root / "repaint", name="tiny-repaint", known_image=False),
        "3d": make_tiny_model(root / "tiny-3d", name="tiny-3d", spatial_dims=3),
        "repaint-3d": make_tiny_model(root / "repaint-3d", name="tiny-repaint-3d", spatial_dims=3, known_image=False),
        "spade": make_tiny_model(root / "spade", name="tiny-spade", label_map="spade", known_image=False),
        "generate-only": make_tiny_model(root / "gen-only", name="gen-only", tasks=("generate",)),
        "2d-1mm": make_tiny_model(root / "tiny-2d-1mm", name="tiny-2d-1mm", spacing_mm=1.0),
        "3d-1mm": make_tiny_model(root / "tiny-3d-1mm", name="tiny-3d-1mm", spatial_dims=3, spacing_mm=1.0),
    }
    card = parse_card(tiny_controlnet_card_dict())
    torch.manual_seed(0)
    networks = build_networks(card)
    for network in networks.values():
        randomize_zero_layers(network)
    folders["controlnet"] = save_model(card, networks, root / "controlnet")
    return folders


@pytest.fixture(scope="module")
def models(model_folders) -> dict[str, LoadedModel]:
    return {key: load_model(folder, device="cpu") for key, folder in model_folders.items()}


def make_labels(shape=(6, 20, 24), direction=PERMUTED_FLIPPED, spacing=SPACING, seed=0) -> Volume:
    """A blocky label map (values 0..3) so that resampling keeps every class."""
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    coarse = rng.integers(0, 4, size=tuple(max(1, s // 3) + 1 for s in shape)).astype(np.uint8)
    index = np.meshgrid(*[np.arange(n) // 3 for n in shape], indexing="ij")
    array = coarse[tuple(index)]
    return Volume(array, spacing[:ndim], ORIGIN[:ndim], tuple(np.asarray(direction).ravel()), {"label_map": True})


def make_image(dtype=np.float32, shape=(6, 20, 24), direction=PERMUTED_FLIPPED, seed=1) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.uniform(0, 800, size=shape)
    if np.dtype(dtype).kind == "i":
        array = np.rint(array - 200)  # some negative values, as in CT
    ndim = len(shape)
    return Volume(array.astype(dtype), SPACING[:ndim], ORIGIN[:ndim], tuple(np.asarray(direction).ravel()))


def make_region(like: Volume, box=(slice(2, 4), slice(5, 15), slice(6, 18))) -> Volume:
    array = np.zeros(like.shape, np.uint8)
    array[box] = 1
    return like.with_array(array, metadata={})


def axial_slices(volume: Volume) -> int:
    """Slices a 2-D model goes through: along the canonical (axial) axis, not array axis 0."""
    return to_canonical(volume).shape[0]


def assert_same_geometry(result: Volume, reference: Volume) -> None:
    assert result.shape == reference.shape
    assert result.spacing == reference.spacing
    assert result.origin == reference.origin
    assert result.direction == reference.direction


class CallCounter:
    """Counts forward passes of a network (a pre-hook, removed afterwards)."""

    def __init__(self, model: LoadedModel) -> None:
        self.count = 0
        self.batch = 0
        self._handle = model.networks["network"].register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1
        self.batch += args[0].shape[0]

    def remove(self) -> None:
        self._handle.remove()


class Oracle(torch.nn.Module):
    """A network that knows the answer: the clean image is a fixed intensity per label class.

    It reads the label one-hot from its input channels and returns the exact noise prediction for
    that clean image, so the sampled result must equal it wherever the geometry is right.
    """

    def __init__(self, model: LoadedModel) -> None:
        super().__init__()
        self.schedule = NoiseSchedule(model.card.scheduler)
        self.n = model.card.num_label_channels
        self.values = torch.linspace(-1.0, 1.0, self.n)

    def forward(self, x, timesteps, class_labels=None, **_):
        onehot = x[:, 1 : 1 + self.n]
        x0 = (onehot * self.values.reshape((1, -1) + (1,) * (x.dim() - 2)).to(x.dtype)).sum(1, keepdim=True)
        a = self.schedule.alpha_bar(int(timesteps[0]))
        return (x[:, :1] - a**0.5 * x0) / (1 - a) ** 0.5


def with_oracle(model: LoadedModel) -> LoadedModel:
    return dataclasses.replace(model, networks={"network": Oracle(model)})


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float32 rounding (a convolution over a batch of 4 need not round like one over 1)."""
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)

