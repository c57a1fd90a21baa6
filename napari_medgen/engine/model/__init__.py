"""Models: the card (architecture, spacing, schema, conditioning), finding models on disk, devices,
safetensors weights, loading with a cache, and the presets this project trains.

`card` and `registry` need no torch (listing models is fast); `loading`, `weights`, `networks` and
`device` import it.
"""
