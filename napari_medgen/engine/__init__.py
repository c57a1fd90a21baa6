"""The engine: volumes, I/O, model cards, sampling and training, with no Qt and no napari."""

from .errors import MedgenError
from .io import read_volume, write_volume
from .volume import Volume

__all__ = ["MedgenError", "Volume", "read_volume", "write_volume"]
