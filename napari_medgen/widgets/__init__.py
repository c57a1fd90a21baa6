"""The napari front: dock widgets over the engine. Thin: no model or geometry logic lives here.

One widget per file (`model_panel`, `painter`, `generate_widget`, `inpaint_widget`, `sampling_controls`);
the pieces they share: `session` (the model of one viewer, and its change signal), `messages` (the one
path to napari's notifications), `layers` (layer choices, result layers), `preview_layer`, `run_buttons`,
and `runner` (an engine generator in a worker thread).
"""
