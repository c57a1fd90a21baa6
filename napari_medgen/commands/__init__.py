"""The command line's commands, one module each: `add_arguments(parser)` builds its options and
`run(args, reporter)` does it and returns the paths written. `napari_medgen.cli` lists them in COMMANDS
and imports each only when it runs (or its --help is asked for); `reporting` and `sampling` hold what
several commands share. `serve` has only its arguments here: the worker is `napari_medgen.serve`."""
