"""Labels from a scan: the model's atlas registered to the scan (SimpleITK), refined by a mixture model.

Front ends call `labels_from_scan(scan, model)` (a generator of progress events returning the label map);
`atlas_for(card)` says which atlas a model uses.
"""

from .api import labels_from_scan
from .atlas import Atlas, atlas_for
from .errors import AnatomyError, NoAtlasError
from .options import AnatomyOptions

__all__ = ["AnatomyError", "AnatomyOptions", "Atlas", "NoAtlasError", "atlas_for", "labels_from_scan"]
