"""The MedGen Slicer module's logic that needs no Slicer: run napari-medgen and follow its jsonl events.

- cli_runner: build the generate / inpaint command line, start it in its own process group, read its
  events on a thread (`poll()`), cancel it, collect the result paths or one error message.
- serve_client: the same interface over one long-lived `napari-medgen serve` worker.
- models: the models `napari-medgen models` lists, with their label classes from model.json.
- label_names: match segment names to a model's class names.

Imports nothing of Slicer, Qt or numpy; runs on Python 3.9+ (Slicer's) and in the project's tests.
"""
