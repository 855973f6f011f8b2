"""The Train widget's Advanced section: a magicgui form made from the engine's config dataclasses.

Each field's editor, range and tooltip come from its metadata (`engine.config.settings`), the same
source as the command line's flags and docs/settings.md. A field the user has not changed gives no
value, so the engine's default (or the preset's, for the model's size) applies; a default that
changes in the engine therefore never hides behind an old number in the form.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox, Widget

from ..engine.config import Setting, settings

# Fields edited elsewhere in the Train widget or set from the data.
SHOWN_ELSEWHERE = {"max_steps", "max_minutes", "device", "in_channels", "spatial_dims", "orientation"}
LARGEST = 10**9


def editor_for(s: Setting) -> Widget:
    """The magicgui editor of one setting: check box, choice, spin box, or a line for sequences and
    settings that may be left empty."""
    common = dict(name=s.name, label=s.label, tooltip=s.help)
    if s.kind is bool:
        return CheckBox(value=s.default, text="", **common)
    if s.choices:
        return ComboBox(value=s.default, choices=list(s.choices), **common)
    if s.count is None and not s.nullable and s.kind is int:
        return SpinBox(value=s.default, min=int(s.low if s.low is not None else -LARGEST),
                       max=int(s.high if s.high is not None else LARGEST), step=int(s.step or 1), **common)
    if s.count is None and not s.nullable and s.kind is float:
        # The step sets the decimals shown, so small values (learning rates) are not rounded away.
        return FloatSpinBox(value=s.default, min=s.low if s.low is not None else -float(LARGEST),
                            max=s.high if s.high is not None else float(LARGEST), step=s.step or 0.1, **common)
    line = LineEdit(value="", **common)
    shown = s.shown_default()
    # A default that may be turned off (seed 0): say how, since an empty editor means the default.
    hint = f"{shown}; none: {s.empty}" if shown and s.nullable else shown
    line.native.setPlaceholderText(hint or s.empty)
    return line


class SettingsForm(Container):
    """Editors for the settings of some config dataclasses; `values(cls)` returns what the user changed.

    `show_defaults(cls, values)` puts other defaults in the editors the user has not touched (the
    preset's network size), so the form always shows what training will use.
    """

    def __init__(self, classes) -> None:
        super().__init__(labels=True)
        self.settings: dict[str, Setting] = {}
        self._shown: dict[str, Any] = {}
        for cls in classes:
            for s in settings(cls):
                if s.name in SHOWN_ELSEWHERE:
                    continue
                self.settings[s.name] = s
                self._shown[s.name] = s.default
                self.append(editor_for(s))
        self.native.layout().setContentsMargins(0, 0, 0, 0)

    def show_defaults(self, cls, values: dict[str, Any]) -> None:
        """Show `values` as the defaults of `cls`'s untouched fields (others keep the user's entry)."""
        for name, s in self.settings.items():
            if s.owner is not cls or name not in values:
                continue
            editor, new = self[name], values[name]
            if isinstance(editor, LineEdit):
                shown = " ".join(map(str, new)) if isinstance(new, tuple) else "" if new is None else str(new)
                editor.native.setPlaceholderText(shown or s.empty)
            elif editor.value == self._shown[name]:
                editor.value = new
            self._shown[name] = new

    def values(self, cls) -> dict[str, Any]:
        """Typed values of `cls`'s fields that the user changed; ValueError names a field it cannot read."""
        out = {}
        for name, s in self.settings.items():
            if s.owner is not cls:
                continue
            editor = self[name]
            if isinstance(editor, LineEdit):
                if not editor.value.strip():
                    continue
                value = s.parse(editor.value)
            else:
                value = editor.value
            if value != self._shown[name]:
                out[name] = value
        return out
