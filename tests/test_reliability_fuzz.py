"""Property-based tests (hypothesis): the model-card parser, the volume reader's header handling and the
napari geometry adapter.

Whatever the input, the card parser and the reader return a valid object or raise one of the project's
own errors (never another exception, never a crash, never an attempt to allocate what a damaged header
promises); the geometry adapter places every voxel where ITK does and goes back to the same grid.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import tiny_card

from napari_medgen.engine.errors import MedgenError, ModelCardError
from napari_medgen.engine.io import read_volume, write_volume
from napari_medgen.engine.model.card import CARD_FILE, ModelCard, load_card, parse_card
from napari_medgen.engine.volume import Volume
from napari_medgen.layer_geometry import GEOMETRY_KEY, layer_to_volume, volume_to_layer_data

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: CI failures can be reproduced
    database=None,
)

# -- the card parser -------------------------------------------------------------------------------
VALID_CARD = tiny_card().model_dump(mode="json")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["DiffusionModelUNet", "DDIMScheduler", "os.system", "torch.nn.Module", "../x.safetensors",
                     "weights.pt", "generate", "inpaint", "channels", "spade", "mri_percentile", "#ffffff"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12,
)


def _paths(value, prefix=()):
    """Every key path inside a JSON value (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


CARD_PATHS = [p for p in _paths(VALID_CARD) if p]


@st.composite
def mutated_cards(draw):
    """The valid card with a few fields replaced by random JSON, deleted, or added."""
    card = json.loads(json.dumps(VALID_CARD))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(CARD_PATHS))
        target = card
        try:
            for key in path[:-1]:
                target = target[key]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                target[path[-1]] = draw(json_values)
            elif action == "delete" and isinstance(target, dict):
                target.pop(path[-1], None)
            elif isinstance(target, dict):
                target[draw(st.text(max_size=8))] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or retyped the path
    return card


@FUZZ
@given(raw=mutated_cards())
def test_card_parser_accepts_or_raises_a_card_error(raw):
    try:
        card = parse_card(raw, source="fuzzed card")
    except ModelCardError as error:
        assert "fuzzed card" in str(error)
        return
    assert isinstance(card, ModelCard)
    # What passes the schema is self-consistent and every number in it is finite.
    assert card.input_channels == card.network.kwargs["in_channels"]
    assert all(math.isfinite(v) and v > 0 for v in card.spacing_mm)
    assert min(card.tile_size) >= 8
    assert 0 in card.label_schema.indices


@FUZZ
@given(raw=json_values)
def test_any_json_value_as_a_card(raw):
    try:
        parse_card(raw)
    except ModelCardError:
        pass


@FUZZ
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                         mutated_cards().map(lambda c: json.dumps(c).encode())))
def test_card_file_of_any_bytes(tmp_path_factory, content):
    folder = tmp_path_factory.mktemp("card")
    (folder / CARD_FILE).write_bytes(content)
    try:
        load_card(folder)
    except ModelCardError as error:
        assert CARD_FILE in str(error)


def test_card_nested_too_deeply_and_non_finite_numbers(tmp_path):
    (tmp_path / CARD_FILE).write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ModelCardError, match="JSON"):
        load_card(tmp_path)
    for path, value in ((("spacing_mm",), [float("nan"), 4.0]), (("normalization", "output_max"), float("inf")),
                        (("normalization", "background"), float("nan"))):
        raw = json.loads(json.dumps(VALID_CARD))
        target = raw
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(ModelCardError, match=path[-1]):
            parse_card(raw)


def test_card_that_cannot_be_read(tmp_path):
    (tmp_path / CARD_FILE).mkdir()  # a folder where the card should be
    with pytest.raises(ModelCardError, match=CARD_FILE):
        load_card(tmp_path)


# -- the volume reader's header handling -----------------------------------------------------------
def _reads_or_refuses(path) -> Volume | None:
    """read_volume either gives a valid volume or raises one of our errors naming the file."""
    try:
        volume = read_volume(path)
    except MedgenError as error:
        assert path.name in str(error)
        return None
    assert volume.ndim in (2, 3)
    assert all(s > 0 and math.isfinite(s) for s in volume.spacing)
    assert np.isfinite(volume.origin).all()
    if volume.array.dtype.kind == "f":
        assert np.isfinite(volume.array).all()
    json.dumps(volume.metadata, default=str)
    return volume


numbers = st.one_of(
    st.integers(-3, 12).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.sampled_from(["0", "-1", "1e308", "nan", "inf", "-0", "2.5", "abc", "", "1e-300", "99999999999"]),
)
sizes = st.one_of(st.integers(1, 4), st.integers(1, 4), st.integers(-2, 6), st.sampled_from([0, 10**6, 2**31, 2**40, 10**12]))
# Voxel data: random bytes, or enough zeros (raw) or a valid zlib / gzip stream of zeros for any small image.
voxel_data = st.one_of(st.binary(max_size=400), st.just(bytes(1024)), st.just(__import__("zlib").compress(bytes(1024))))
header_text = st.one_of(
    st.text(max_size=40).filter(lambda s: "\n" not in s and "\r" not in s),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3).map(json.dumps),
    st.lists(st.integers(), max_size=3).map(json.dumps),
    st.just("5"),
    st.just('"text"'),
)


good_numbers = st.floats(0.1, 10.0).map(repr)


@st.composite
def metaimage_files(draw) -> bytes:
    """A MetaImage header: either mostly sound (2-D/3-D, small sizes, a real voxel type, enough data) with
    a few damaged fields, or damaged throughout."""
    sound = draw(st.booleans())
    ndims = draw(st.sampled_from([2, 3])) if sound else draw(st.sampled_from([2, 3, 3, 4, 1, 0, 7]))
    n = max(ndims, 0)
    numbers_here = good_numbers if sound else numbers
    lines = ["ObjectType = Image", f"NDims = {ndims}", "BinaryData = True", "BinaryDataByteOrderMSB = False"]
    compressed = draw(st.booleans())
    lines.append(f"CompressedData = {'True' if compressed else 'False'}")
    optional = {
        "TransformMatrix": " ".join(draw(st.lists(numbers, min_size=n * n, max_size=n * n + 1))),
        "Offset": " ".join(draw(st.lists(numbers_here, min_size=n, max_size=n))),
        "ElementSpacing": " ".join(draw(st.lists(numbers_here, min_size=n if sound else max(n - 1, 0), max_size=n))),
        "ElementNumberOfChannels": "1" if sound else draw(st.sampled_from(["1", "3", "2", "0"])),
        "napari_medgen": draw(header_text),
    }
    for key, value in optional.items():
        if draw(st.booleans()):
            lines.append(f"{key} = {value}")
    dims = draw(st.lists(st.integers(1, 4) if sound else sizes, min_size=n, max_size=n))
    lines.append("DimSize = " + " ".join(str(d) for d in dims))
    types = ["MET_SHORT", "MET_FLOAT", "MET_UCHAR", "MET_DOUBLE", "MET_INT"] + ([] if sound else ["MET_BOGUS"])
    lines.append("ElementType = " + draw(st.sampled_from(types)))
    lines.append("ElementDataFile = LOCAL")
    if sound:
        data = __import__("zlib").compress(bytes(1024)) if compressed else bytes(1024)
    else:
        data = draw(voxel_data)
    return ("\n".join(lines) + "\n").encode() + data


@FUZZ
@given(content=metaimage_files())
def test_metaimage_headers(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("mha") / "fuzzed.mha"
    path.write_bytes(content)
    _reads_or_refuses(path)


@st.composite
def nrrd_files(draw) -> bytes:
    dimension = draw(st.sampled_from([2, 3, 3, 4, 1]))
    lines = ["NRRD0004", "type: " + draw(st.sampled_from(["short", "float", "uchar", "double", "int", "bogus"])),
             f"dimension: {dimension}"]
    lines.append("sizes: " + " ".join(str(s) for s in draw(st.lists(sizes, min_size=dimension, max_size=dimension))))
    if draw(st.booleans()):
        lines.append("space: left-posterior-superior")
        vectors = [
            "(" + ",".join(draw(st.lists(numbers, min_size=3, max_size=3))) + ")" for _ in range(dimension)
        ]
        lines.append("space directions: " + " ".join(vectors))
        lines.append("space origin: (" + ",".join(draw(st.lists(numbers, min_size=3, max_size=3))) + ")")
    elif draw(st.booleans()):
        lines.append("spacings: " + " ".join(draw(st.lists(numbers, min_size=dimension, max_size=dimension))))
    if draw(st.booleans()):
        lines.append(f"napari_medgen:={draw(header_text)}")
    lines.append("endian: little")
    encoding = draw(st.sampled_from(["raw", "raw", "gzip", "ascii"]))
    lines.append("encoding: " + encoding)
    data = draw(voxel_data)
    if encoding == "gzip" and draw(st.booleans()):
        data = __import__("gzip").compress(data)
    return ("\n".join(lines) + "\n\n").encode() + data


@FUZZ
@given(content=nrrd_files())
def test_nrrd_headers(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("nrrd") / "fuzzed.nrrd"
    path.write_bytes(content)
    _reads_or_refuses(path)


def _nifti_template() -> bytes:
    """A valid single-file NIfTI-1 (.nii) of a small int16 volume: the bytes to mutate."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        volume = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), (1.5, 1.0, 2.0), (3.0, -4.0, 5.0), np.eye(3).ravel())
        return write_volume(volume, Path(folder) / "t.nii").read_bytes()


NIFTI = _nifti_template()
# (offset, struct format) of NIfTI-1 header fields worth damaging.
NIFTI_FIELDS = {
    "dim": (40, "<8h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim": (76, "<8f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern": (256, "<6f"),
    "srow": (280, "<12f"),
}
int16s = st.one_of(st.integers(-(2**15), 2**15 - 1), st.sampled_from([0, -1, 1, 2, 3, 4, 7, 8, 16, 32767]))
float32s = st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1.0, 352.0, 1e30]))


@st.composite
def nifti_files(draw) -> bytes:
    data = bytearray(NIFTI)
    for name in draw(st.lists(st.sampled_from(sorted(NIFTI_FIELDS)), min_size=1, max_size=4)):
        offset, fmt = NIFTI_FIELDS[name]
        count = struct.calcsize(fmt) // (2 if fmt[-1] == "h" else 4)
        values = draw(st.lists(int16s if fmt[-1] == "h" else float32s, min_size=count, max_size=count))
        struct.pack_into(fmt, data, offset, *values)
    keep = draw(st.sampled_from([len(data), len(data), 348, 300, len(data) - 7, len(data) + 50]))
    data = data[:keep] + (b"\0" * max(0, keep - len(data)))
    return bytes(data)


@FUZZ
@given(content=nifti_files())
def test_nifti_headers(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("nii") / "fuzzed.nii"
    path.write_bytes(content)
    _reads_or_refuses(path)


def test_header_promising_more_voxels_than_memory_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nBinaryData = True\nCompressedData = False\n"
                     b"DimSize = 100000 100000 100000\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + bytes(64))
    with pytest.raises(MedgenError, match="memory") as error:
        read_volume(path)
    assert "huge.mha" in str(error.value)


@pytest.mark.parametrize("stored", ["[1, 2]", "5", '"text"', "{not json"])
def test_header_metadata_that_is_not_an_object_is_ignored(tmp_path, stored):
    path = tmp_path / "scan.mha"
    write_volume(Volume(np.zeros((2, 3, 4), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3).ravel()), path, compress=False)
    content = path.read_bytes().replace(b"ElementDataFile", f"napari_medgen = {stored}\nElementDataFile".encode(), 1)
    path.write_bytes(content)
    volume = read_volume(path)
    assert volume.shape == (2, 3, 4)


# -- the geometry adapter --------------------------------------------------------------------------
def _rotation(seed: int, ndim: int, proper: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


@st.composite
def volumes(draw) -> Volume:
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    spacing = tuple(draw(st.lists(st.floats(1e-3, 1e3), min_size=ndim, max_size=ndim)))
    origin = tuple(draw(st.lists(st.floats(-1e4, 1e4), min_size=ndim, max_size=ndim)))
    kind = draw(st.sampled_from(["random", "permutation", "identity"]))
    if kind == "random":
        direction = _rotation(draw(st.integers(0, 2**32 - 1)), ndim, draw(st.booleans()))
    else:
        direction = np.eye(ndim)
        if kind == "permutation":
            direction = direction[list(draw(st.permutations(range(ndim))))]
            direction = direction * np.array(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=ndim, max_size=ndim)))
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    return Volume(array, spacing, origin, tuple(direction.ravel()))


def _world_of_voxels(volume: Volume) -> np.ndarray:
    """ITK's physical point (LPS, x y z) of every voxel, in array order."""
    index_zyx = np.argwhere(np.ones(volume.shape, bool))
    return volume.index_to_physical(index_zyx[:, ::-1].astype(float))


def _napari_world(data: np.ndarray, kwargs: dict) -> np.ndarray:
    """Where napari puts every voxel of layer data: affine @ (scale * index + translate), world (z, y, x)."""
    n = data.ndim
    index = np.argwhere(np.ones(data.shape, bool)).astype(float)
    local = index * np.asarray(kwargs["scale"]) + np.asarray(kwargs["translate"])
    affine = kwargs.get("affine")
    if affine is not None:
        affine = np.asarray(affine)
        local = local @ affine[:n, :n].T + affine[:n, n]
    return local


@FUZZ
@given(volume=volumes())
def test_geometry_round_trip_through_layer_data(volume):
    data, kwargs, _ = volume_to_layer_data(volume, "image")
    # Every voxel (identified by its unique value) lands where ITK places it.
    world_zyx = _napari_world(data, kwargs)
    expected_xyz = _world_of_voxels(volume)
    values = data[tuple(np.argwhere(np.ones(data.shape, bool)).T)].astype(int)
    scale = max(1.0, float(np.abs(expected_xyz).max()))
    np.testing.assert_allclose(world_zyx[:, ::-1], expected_xyz[values], atol=1e-9 * scale * 10, rtol=1e-9)
    # With the reference geometry: exactly the source grid.
    back = layer_to_volume(data, kwargs["scale"], kwargs["translate"], kwargs.get("affine"), kwargs["metadata"])
    assert back.same_grid(volume)
    assert (back.spacing, back.origin, back.direction) == (volume.spacing, volume.origin, volume.direction)
    np.testing.assert_array_equal(back.array, volume.array)
    # Without it (as from a layer another plugin made): the same voxels at the same physical places.
    metadata = {k: v for k, v in kwargs["metadata"].items() if k != GEOMETRY_KEY}
    derived = layer_to_volume(data, kwargs["scale"], kwargs["translate"], kwargs.get("affine"), metadata)
    np.testing.assert_allclose(
        _world_of_voxels(derived)[np.argsort(derived.array.ravel().astype(int))],
        expected_xyz,
        atol=1e-9 * scale * 10,
        rtol=1e-9,
    )


@FUZZ
@given(
    ndim=st.sampled_from([2, 3]),
    scale=st.lists(st.one_of(st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3)), min_size=3, max_size=3),
    translate=st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3),
    seed=st.integers(0, 2**32 - 1),
    oblique=st.booleans(),
)
def test_any_napari_layer_placement_round_trips(ndim, scale, translate, seed, oblique):
    """A layer napari (or another plugin) placed with any scale (negative too: a flip), translate and
    rotation is saved as a volume whose voxels sit where napari showed them, and shows again there."""
    shape = (2, 3, 4)[-ndim:]
    data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    affine = np.eye(ndim + 1)
    if oblique:
        affine[:ndim, :ndim] = _rotation(seed, ndim, proper=True)
        affine[:ndim, ndim] = np.asarray(translate[:ndim]) * 0.5
    kwargs = {"scale": np.asarray(scale[:ndim]), "translate": np.asarray(translate[:ndim]), "affine": affine}
    volume = layer_to_volume(data, kwargs["scale"], kwargs["translate"], affine, {})
    shown = _napari_world(data, kwargs)
    span = max(1.0, float(np.abs(shown).max()))
    np.testing.assert_allclose(_world_of_voxels(volume)[:, ::-1], shown, atol=1e-9 * span * 10, rtol=1e-9)
    again, again_kwargs, _ = volume_to_layer_data(volume, "image")
    order = again.ravel().astype(int)
    np.testing.assert_allclose(_napari_world(again, again_kwargs)[np.argsort(order)], shown, atol=1e-9 * span * 10, rtol=1e-9)
