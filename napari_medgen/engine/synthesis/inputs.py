"""The checks of a run's inputs, shared by pixel runs (`api`) and latent runs (`latent`): each raises the
project's own error, saying what to do, before a thread, a progress bar or a network call exists."""

from __future__ import annotations

from ..errors import InvalidVolumeError, LabelSchemaError, TaskNotSupportedError
from ..label_tools import check_fraction_values
from ..model.card import ModelCard
from ..volume import Volume
from .model_grid import region_on_image


def require_volume_for(card: ModelCard, volume: Volume, what: str) -> None:
    """A 3-D model needs a 3-D volume of more than one slice: on one slice it would see only padding."""
    if card.spatial_dims == 3 and (volume.ndim == 2 or min(volume.shape) < 2):
        raise InvalidVolumeError(f"model {card.name} is 3-D and needs a 3-D {what} with more than one slice")


def check_label_map(card: ModelCard, label_map: Volume) -> None:
    """Integer voxels, the dimensions the model works in, and only the card's schema's labels."""
    if not label_map.is_label_map:
        raise LabelSchemaError(
            "the label map holds non-integer values, so it looks like an image; give a label map (integers "
            "naming anatomy classes) or paint one in a Labels layer"
        )
    require_volume_for(card, label_map, "label map")
    card.label_schema.validate_label_map(label_map.array)


def check_fractions(card: ModelCard, tissue_fractions: list[Volume], label_map: Volume) -> None:
    """Tissue fraction maps for a model trained on them: one per class from 1, values 0..1, on the label map's grid."""
    if not card.conditioning.tissue_fractions:
        raise TaskNotSupportedError(
            f"model {card.name} was trained on hard labels only; generate from the label map alone, or use a model "
            "whose card says conditioning.tissue_fractions"
        )
    wanted = card.num_label_channels - 1
    if len(tissue_fractions) != wanted:
        names = ", ".join(c.name for c in card.label_schema.classes if c.index > 0)
        raise LabelSchemaError(f"model {card.name} needs {wanted} tissue fraction maps ({names}), got {len(tissue_fractions)}")
    for k, fraction in enumerate(tissue_fractions, start=1):
        check_fraction_values(fraction, f"tissue fraction map {k}")
        fraction.require_same_grid(label_map, what=f"tissue fraction map {k}", ref="label map")


def check_image_to_inpaint(card: ModelCard, image: Volume) -> None:
    """A scan: not a label map or a mask, finite, and of the dimensions the model works in."""
    if image.is_label_map and image.metadata.get("label_map"):
        raise InvalidVolumeError("the image to inpaint is a label map; give the scan (intensities) instead")
    if image.is_label_map and image.array.min() >= 0 and image.array.max() <= 1:
        raise InvalidVolumeError(
            "the image to inpaint holds only 0 and 1 (a mask or a boolean volume, not a scan); give the scan "
            "(intensities) as the image and the mask as the region"
        )
    image.require_finite("image to inpaint")
    require_volume_for(card, image, "image")


def inpaint_inputs(
    card: ModelCard, image: Volume, region: Volume, label_map: Volume | None
) -> tuple[Volume, dict[str, str]]:
    """Checks an inpainting's image, region and label map; returns the region on the image's grid and the
    inputs' hashes for the provenance (the region's as given, not as resampled onto the image)."""
    check_image_to_inpaint(card, image)
    region_hash = region.content_hash()
    region = region_on_image(region, image)
    inputs = {"image": image.content_hash(), "region": region_hash}
    if label_map is not None:
        check_label_map(card, label_map)
        image.require_same_grid(label_map, what="label map", ref="image")
        inputs["label_map"] = label_map.content_hash()
    return region, inputs
