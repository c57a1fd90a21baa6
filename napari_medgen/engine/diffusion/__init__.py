"""Diffusion maths: the noise schedule (sampling and training targets), the sampling loops, and the
denoiser that wraps a model's networks with its conditioning and guidance."""
