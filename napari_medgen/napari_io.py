"""Volumes as napari layers and back: the reader and writer contributions, thin wrappers over the
engine's `read_volume` / `write_volume` and the one geometry adapter in `layer_geometry`, and
`volume_to_layer`, the one recipe every part of the plugin uses to show a volume (geometry plus display)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .engine.errors import InvalidVolumeError, MedgenError
from .engine.io import READ_EXTENSIONS, read_volume, volume_extension, write_volume
from .engine.volume import Volume
from .layer_geometry import layer_to_volume, volume_to_layer_data

# File names that mark an integer volume as a segmentation (nnU-Net, FreeSurfer, MONAI, Slicer habits).
_SEGMENTATION_NAME = re.compile(
    r"(^|[_\-.\s])(seg|segmentation|label|labels|labelmap|mask|aseg|aparc|parc|tissue|roi|gt)s?([_\-.\s\d]|$)",
    re.IGNORECASE,
)


def is_segmentation(path: str | Path, volume: Volume) -> bool:
    """An integer volume whose name or metadata says it is a label map opens as a Labels layer."""
    if not volume.is_label_map:
        return False
    if volume.metadata.get("label_map") or volume.metadata.get("label_names"):
        return True
    return bool(_SEGMENTATION_NAME.search(Path(path).name))


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """Return a reader for the medical image formats we read, or None so napari asks another plugin."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    for item in paths:
        item = Path(item)
        if item.is_dir():
            from .engine.io import is_dicom_series_folder

            if not is_dicom_series_folder(item):
                return None
        elif volume_extension(item) not in READ_EXTENSIONS:
            return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    """Read each path as a volume and return napari LayerDataTuples in physical space."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers = []
    for item in paths:
        volume = read_volume(item)
        name = _layer_name(item)
        layer_type = "labels" if is_segmentation(item, volume) else "image"
        layers.append(volume_to_layer(volume, layer_type, name))
    return layers


def volume_to_layer(
    volume: Volume, layer_type: str | None = None, name: str | None = None, contrast_limits: Any = None
) -> tuple:
    """A napari LayerDataTuple ``(data, kwargs, layer_type)`` that shows `volume`: in physical space
    (`volume_to_layer_data`) and, for an image, with contrast limits that suit it (`image_display_kwargs`)
    unless `contrast_limits` are given."""
    data, kwargs, layer_type = volume_to_layer_data(volume, layer_type, name)
    if layer_type == "image":
        if contrast_limits is not None:
            kwargs["contrast_limits"] = [float(v) for v in contrast_limits]
        else:
            kwargs.update(image_display_kwargs(volume))
    return data, kwargs, layer_type


def image_display_kwargs(volume: Volume) -> dict[str, Any]:
    """Contrast limits that suit the modality: a CT window in HU if the file gives one, else percentiles."""
    array = volume.array
    window = volume.metadata.get("display_window")  # a generated CT's window in HU (engine/synthesis/latent.py)
    if isinstance(window, (list, tuple)) and len(window) == 2 and float(window[1]) > float(window[0]):
        return {"contrast_limits": [float(window[0]), float(window[1])]}
    if volume.metadata.get("modality") == "CT":
        return {"contrast_limits": [-1000.0, 1000.0] if array.min() < -500 else [float(array.min()), float(array.max())]}
    foreground = array[array > array.min()] if np.any(array > array.min()) else array.ravel()
    low, high = np.percentile(foreground, [0.5, 99.5])
    if high <= low:
        high = low + 1
    return {"contrast_limits": [float(low), float(high)]}


def _layer_name(path: str | Path) -> str:
    path = Path(path)
    ext = volume_extension(path)
    return path.name[: -len(ext)] if ext else path.name


def _write(path: str, data: Any, attributes: dict[str, Any], label_map: bool) -> list[str]:
    if attributes.get("rgb"):
        raise InvalidVolumeError(
            f"{Path(path).name}: an RGB layer is a colour picture, not a scan; save it with napari's "
            "own image writer, or convert it to one grey-scale channel first"
        )
    if attributes.get("multiscale"):
        data = data[0]  # the full-resolution level; the others are display pyramids
    try:
        volume = layer_to_volume(
            np.asarray(data),
            scale=attributes.get("scale"),
            translate=attributes.get("translate"),
            affine=attributes.get("affine"),
            metadata=attributes.get("metadata") or {},
        )
    except MedgenError as error:
        raise type(error)(f"{Path(path).name}: {error}") from None
    if label_map:
        volume.metadata["label_map"] = True
    return [str(write_volume(volume, path))]


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer for Image layers: NIfTI / MetaImage / NRRD in the source's geometry."""
    return _write(path, data, attributes, label_map=False)


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """napari writer for Labels layers: keeps the integer type and the source scan's exact grid."""
    return _write(path, data, attributes, label_map=True)
