"""A form with one editor per field of the engine's TrainConfig and ModelConfig (the Advanced section).

Empty or unchanged editors leave the engine's default, so the form never hides a default change in
the engine; typed values are parsed and checked when training starts.
"""

from __future__ import annotations

import dataclasses

from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLineEdit, QWidget

from ..engine.config import FIELD_CHOICES, FIELD_HELP

# Fields edited elsewhere in the Train widget or set from the data.
SHOWN_ELSEWHERE = {"max_steps", "max_minutes", "device", "in_channels", "spatial_dims", "orientation"}
NULLABLE_TYPES = {"threads": int, "clip_outliers": float, "seed": int}


class SettingsForm(QWidget):
    """Editors for the fields of some dataclasses; `values(cls)` returns the fields the user set."""

    def __init__(self, classes, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.editors: dict[str, tuple[type, dataclasses.Field, QWidget]] = {}
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for cls in classes:
            for f in dataclasses.fields(cls):
                if f.name in SHOWN_ELSEWHERE:
                    continue
                editor = self._editor(f)
                editor.setToolTip(FIELD_HELP.get(f.name, f.name))
                layout.addRow(f.name.replace("_", " "), editor)
                self.editors[f.name] = (cls, f, editor)

    @staticmethod
    def _default(f: dataclasses.Field):
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()

    def _editor(self, f: dataclasses.Field) -> QWidget:
        default = self._default(f)
        if isinstance(default, bool):
            box = QCheckBox()
            box.setChecked(default)
            return box
        if f.name in FIELD_CHOICES:
            combo = QComboBox()
            combo.addItems(FIELD_CHOICES[f.name])
            combo.setCurrentText(str(default))
            return combo
        edit = QLineEdit()
        if isinstance(default, tuple):
            edit.setPlaceholderText(" ".join(map(str, default)) if default else "automatic")
        else:
            edit.setPlaceholderText("" if default is None else f"{default:g}" if isinstance(default, float)
                                    else str(default))
        return edit

    def values(self, cls) -> dict:
        """Parsed values of `cls`'s fields that differ from the engine default; ValueError names the field."""
        out = {}
        for name, (owner, f, editor) in self.editors.items():
            if owner is not cls:
                continue
            default = self._default(f)
            if isinstance(editor, QCheckBox):
                value = editor.isChecked()
            elif isinstance(editor, QComboBox):
                value = editor.currentText()
            else:
                text = editor.text().strip()
                if not text:
                    continue
                value = self._parse(f, default, text)
            if value != default:
                out[name] = value
        return out

    @staticmethod
    def _parse(f: dataclasses.Field, default, text: str):
        label = f.name.replace("_", " ")
        try:
            if isinstance(default, tuple) or f.name == "clip_outliers":
                kind = NULLABLE_TYPES.get(f.name, int)
                return tuple(kind(v) for v in text.replace(",", " ").split())
            kind = NULLABLE_TYPES.get(f.name) or type(default)
            return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError:
            raise ValueError(f"Advanced setting '{label}': {text!r} is not a valid value") from None
