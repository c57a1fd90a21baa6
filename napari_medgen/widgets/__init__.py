"""The napari front: dock widgets over the engine. Thin: no model or geometry logic lives here."""
