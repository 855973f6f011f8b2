"""What the widgets of one viewer share: the model of this session and the suggested orientation.

Plain Python with psygnal signals, no Qt: the Train widget publishes the model it trained or loaded,
the Denoise widget offers it, and the Noise widget's suggestion can set the Train widget's orientation.
"""

from __future__ import annotations

from psygnal import Signal


class Session:
    """State shared by the plugin's widgets on one viewer."""

    model_changed = Signal(object, str)     # (model, description)
    orientation_chosen = Signal(str)        # "x", "y", "z" or "none"

    def __init__(self) -> None:
        self.model = None
        self.model_description = ""

    def set_model(self, model, description: str) -> None:
        self.model = model
        self.model_description = description
        self.model_changed.emit(model, description)


_SESSIONS: dict[int, Session] = {}


def session_for(viewer) -> Session:
    """The one Session of a viewer (created on first use)."""
    return _SESSIONS.setdefault(id(viewer), Session())
