"""What generation and inpainting refuse, before any work: empty or misplaced regions, labels outside the
schema, float label maps, mismatched grids, unsupported tasks, bad options, a label map given as the image.
No Qt, no napari (fixtures: `engine_fixtures`).
"""

from __future__ import annotations


import numpy as np
import pytest
from engine_fixtures import PERMUTED_FLIPPED, SPACING, make_image, make_labels, make_region
from engine_fixtures import model_folders, models, one_thread  # noqa: F401 (fixtures)
from reliability_helpers import drive

from napari_medgen.engine.errors import (
    GeometryMismatchError,
    InvalidVolumeError,
    LabelSchemaError,
    MedgenError,
    RegionError,
    TaskNotSupportedError,
)
from napari_medgen.engine.synthesis import generate, inpaint
from napari_medgen.engine.volume import Volume


# -- errors ----------------------------------------------------------------------------------------
def test_empty_region(models):
    image = make_image()
    with pytest.raises(RegionError, match="empty"):
        drive(inpaint(models["2d"], image, image.with_array(np.zeros(image.shape, np.uint8)), steps=2))


def test_region_outside_the_image(models):
    image = make_image()
    far = Volume(np.ones((4, 4, 4), np.uint8), (1.0, 1.0, 1.0), (5000.0, 5000.0, 5000.0), tuple(np.eye(3).ravel()))
    with pytest.raises(RegionError, match="outside"):
        drive(inpaint(models["2d"], image, far, steps=2))


def test_region_of_other_dimension(models):
    image = make_image()
    flat = Volume(np.ones((20, 24), np.uint8), (0.9, 1.1), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(GeometryMismatchError):
        drive(inpaint(models["2d"], image, flat, steps=2))


def test_label_values_outside_the_schema(models):
    labels = make_labels()
    array = labels.array.copy()
    array[0, 0, 0] = 7
    with pytest.raises(LabelSchemaError, match="7"):
        drive(generate(models["2d"], labels.with_array(array), steps=2))
    image = make_image()
    with pytest.raises(LabelSchemaError, match="7"):
        drive(inpaint(models["2d"], image, make_region(image), label_map=image.with_array(array, metadata={}), steps=2))


def test_float_label_map_is_refused(models):
    labels = make_labels()
    with pytest.raises(LabelSchemaError, match="non-integer"):
        drive(generate(models["2d"], labels.with_array(labels.array.astype(np.float32)), steps=2))


def test_label_map_on_another_grid_than_the_image(models):
    image = make_image()
    labels = Volume(make_labels().array, SPACING, (0.0, 0.0, 0.0), tuple(PERMUTED_FLIPPED.ravel()))
    with pytest.raises(GeometryMismatchError, match="origin"):
        drive(inpaint(models["2d"], image, make_region(image), label_map=labels, steps=2))


def test_model_without_inpaint_task(models):
    image = make_image()
    with pytest.raises(TaskNotSupportedError, match="inpaint"):
        drive(inpaint(models["generate-only"], image, make_region(image), steps=2))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"sampler": "euler"}, "sampler"),
        ({"steps": 0}, "steps"),
        ({"guidance": -1.0}, "guidance"),
        ({"variants": 0}, "variants"),
        ({"eta": 2.0}, "eta"),
    ],
)
def test_bad_options(models, options, match):
    with pytest.raises(MedgenError, match=match):
        drive(generate(models["2d"], make_labels(), **options))


def test_unknown_option_is_a_type_error(models):
    with pytest.raises(TypeError, match="colour"):
        drive(generate(models["2d"], make_labels(), colour="red"))


def test_image_that_is_a_label_map_is_refused(models):
    labels = make_labels()
    with pytest.raises(InvalidVolumeError, match="label map"):
        drive(inpaint(models["2d"], labels, make_region(labels), steps=2))
