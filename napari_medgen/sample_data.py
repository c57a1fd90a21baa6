"""Sample data contribution: the ICBM152 brain T1 at 2 mm with CSF / grey / white matter labels."""

from __future__ import annotations

from ._paths import sample_dir
from .engine.io import read_volume
from .engine.model.labels import TISSUE_SCHEMA
from .napari_io import volume_to_layer

SAMPLE_T1 = "mni152_t1_2mm.nii.gz"
SAMPLE_LABELS = "mni152_tissue_labels_2mm.nii.gz"


def sample_brain() -> list[tuple]:
    """Image and Labels layers of the sample brain, on the same grid in physical space."""
    t1 = read_volume(sample_dir() / SAMPLE_T1)
    labels = read_volume(sample_dir() / SAMPLE_LABELS)
    image = volume_to_layer(t1, "image", "brain T1 (MNI152, 2 mm)")
    label_data, label_kwargs, _ = volume_to_layer(labels, "labels", "tissue labels")
    label_kwargs["colormap"] = TISSUE_SCHEMA.napari_colormap()
    label_kwargs["metadata"]["label_schema"] = TISSUE_SCHEMA.to_json()
    return [image, (label_data, label_kwargs, "labels")]
