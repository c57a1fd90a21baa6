"""The one way the widgets tell the user something: napari's notification manager.

Widgets call `messages.notify(level, text)` through this module (not an imported copy of the
function), so a test replaces this one function to see every message the plugin shows.
"""

from __future__ import annotations

LEVELS = ("info", "warning", "error")


def notify(level: str, message: str) -> None:
    """Show `message` as a napari notification of `level`: 'info', 'warning' or 'error'."""
    from napari.utils import notifications

    if level not in LEVELS:
        raise ValueError(f"unknown notification level {level!r}; use one of {', '.join(LEVELS)}")
    show = {"info": notifications.show_info, "warning": notifications.show_warning, "error": notifications.show_error}
    show[level](message)
