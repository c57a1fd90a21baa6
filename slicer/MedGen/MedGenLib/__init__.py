"""The MedGen Slicer module's logic that needs no Slicer: run napari-medgen and follow its jsonl events.

- command_lines: build the generate / inpaint options and command line; check the executable; clean the
  environment; the run's temporary folder.
- processes: start a process in its own process group, stop or kill that group, drain its stderr.
- events: parse the jsonl events, refuse another protocol version; `Run`, what a front end polls.
- cli_runner: one process per run (`start_run`, `CliRun`); re-exports the public names of the three above.
- serve_client: the same interface over one long-lived `napari-medgen serve` worker.
- models: the models `napari-medgen models` lists, with their label classes from model.json.
- label_names: match segment names to a model's class names.
- results: the job a front end keeps for a run, and the names and attributes of its results.

Imports nothing of Slicer, Qt or numpy; runs on Python 3.9+ (Slicer's) and in the project's tests.
What needs Slicer is in MedGen.py and MedGenSlicerLib.
"""
