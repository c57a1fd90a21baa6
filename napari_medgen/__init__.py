"""napari-medgen: anatomy-conditioned diffusion synthesis and inpainting of medical images in napari."""

__version__ = "0.1.0"
