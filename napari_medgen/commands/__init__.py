"""Command-line commands kept in their own modules; `napari_medgen.cli` lists them in COMMANDS and
HANDLERS and imports each only when it runs."""
