"""The engine: volumes, I/O, model cards, sampling and training, with no Qt and no napari.

Folders by idea: `io` (files), `model` (cards, registry, weights, loading, presets), `diffusion`
(noise schedule, samplers, denoiser), `synthesis` (generate / inpaint), `training`. Importing this
package is cheap: torch and MONAI are imported by the modules that run networks, when they are used.
"""

from .errors import MedgenError
from .io import read_volume, write_volume
from .volume import Volume

__all__ = ["MedgenError", "Volume", "read_volume", "write_volume"]
