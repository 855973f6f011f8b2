"""What the widgets of one viewer share: the model of this session and the suggested orientation.

Plain Python with psygnal signals, no Qt: the Train widget publishes the model it trained or loaded,
the Denoise widget offers it, and the Noise widget's suggestion can set the Train widget's orientation.
"""

from __future__ import annotations

import weakref

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


def underlying_viewer(viewer):
    """The viewer itself: napari hands each dock widget its own PublicOnlyProxy of the viewer, so the
    widgets of one window see different objects; unwrapping them finds the one they share."""
    for _ in range(8):  # proxies of proxies, never a cycle
        inner = getattr(viewer, "__wrapped__", None)
        if inner is None:
            return viewer
        viewer = inner
    return viewer


# id(viewer) -> (weak reference to that viewer, its session). The viewer is held weakly: when it goes,
# its entry (and the model in it) goes too, and a new viewer that reuses the id gets a new session.
_SESSIONS: dict[int, tuple[weakref.ref, Session]] = {}


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _SESSIONS.get(key)
    if entry is not None and entry[0] is ref:
        del _SESSIONS[key]


def session_for(viewer) -> Session:
    """The one Session of a viewer (created on first use), whichever proxy of it is passed."""
    viewer = underlying_viewer(viewer)
    key = id(viewer)
    entry = _SESSIONS.get(key)
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    ref = weakref.ref(viewer, lambda r, key=key: _forget(key, r))
    session = Session()
    _SESSIONS[key] = (ref, session)
    return session


def close_session(viewer) -> None:
    """Drop a viewer's session and the model in it (when its window closes)."""
    viewer = underlying_viewer(viewer)
    entry = _SESSIONS.pop(id(viewer), None)
    if entry is not None:
        entry[1].model = None
