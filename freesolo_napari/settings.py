"""Panel settings that persist between sessions, as one JSON file.

Every input widget the panel holds (its own attributes and those of its sections, found by
walking them) is saved under its attribute path, e.g. ``controls.tau.slider`` or
``training.iters``, shortly after any change; a new panel restores them. A widget with the Qt
property ``persist`` set to False is skipped (e.g. the image-layer picker).

Location: ``$FREESOLO_NAPARI_SETTINGS`` if set (tests point it at a temporary file), else
``freesolo-napari/settings.json`` in the platform's configuration folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qtpy.QtCore import QStandardPaths, QTimer
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractSlider,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QSpinBox,
    QWidget,
)

SETTINGS_ENV = "FREESOLO_NAPARI_SETTINGS"
SAVE_DELAY_MS = 300
FORMAT = 1


def settings_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(SETTINGS_ENV, "").strip():
        return Path(os.environ[SETTINGS_ENV]).expanduser()
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
    return Path(base or Path.home() / ".config") / "freesolo-napari" / "settings.json"


def _is_input(w) -> bool:
    if isinstance(w, QAbstractButton):
        return w.isCheckable()
    return isinstance(w, (QAbstractSlider, QSpinBox, QDoubleSpinBox, QComboBox, QLineEdit))


def persistent_inputs(root) -> dict[str, QWidget]:
    """``{attribute path: input widget}`` over ``root`` and its freesolo_napari sub-widgets."""
    found: dict[str, QWidget] = {}
    seen: set[int] = {id(root)}

    def walk(obj, prefix: str) -> None:
        for attr, value in list(vars(obj).items()):
            if attr.startswith("_") or attr == "panel":
                continue
            items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
            for i, w in items:
                if not isinstance(w, QWidget) or id(w) in seen:
                    continue
                seen.add(id(w))
                key = prefix + attr + ("" if i is None else f".{i}")
                if _is_input(w):
                    if w.property("persist") is not False:
                        found[key] = w
                elif type(w).__module__.startswith("freesolo_napari"):
                    walk(w, key + ".")

    walk(root, "")
    return found


def read_value(w):
    if isinstance(w, QAbstractButton):
        return w.isChecked()
    if isinstance(w, QComboBox):
        return w.currentText()
    if isinstance(w, QLineEdit):
        return w.text()
    return w.value()


def write_value(w, value) -> None:
    if isinstance(w, QAbstractButton):
        w.setChecked(bool(value))
    elif isinstance(w, QComboBox):
        value = str(value)
        if w.findText(value) < 0 and (w.isEditable() or w.property("persist_add")) and value:
            w.addItem(value)
        if w.findText(value) >= 0:
            w.setCurrentText(value)
    elif isinstance(w, QLineEdit):
        w.setText(str(value))
    elif isinstance(w, QDoubleSpinBox):
        w.setValue(float(value))
    else:
        w.setValue(int(value))


class PanelSettings:
    """Saves the panel's inputs (debounced) and restores them; a bad file is one notice, then defaults."""

    def __init__(self, panel, path: str | os.PathLike[str] | None = None):
        self.panel = panel
        self.path = settings_path(path)
        self.problem: str | None = None
        self._restoring = False
        self._timer = QTimer(panel, singleShot=True, interval=SAVE_DELAY_MS)
        self._timer.timeout.connect(self.save)

    def values(self) -> dict:
        return {key: read_value(w) for key, w in persistent_inputs(self.panel).items()}

    def save(self) -> Path | None:
        from engine.atomic import atomic_write_json

        try:
            return atomic_write_json(self.path, {"format": FORMAT, "values": self.values()}, overwrite=True,
                                     backup=False)
        except OSError as exc:  # an unwritable config folder must not break the panel
            self.problem = f"settings not saved to {self.path}: {exc}"
            return None

    def restore(self) -> int:
        """Apply the saved values; returns how many were applied."""
        if not self.path.is_file():
            return 0
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            values = data["values"]
            if not isinstance(values, dict):
                raise ValueError("'values' is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.problem = f"settings file {self.path} is unreadable ({exc}); using defaults"
            self.panel._notify(self.problem)
            return 0
        applied = 0
        self._restoring = True
        try:
            for key, w in persistent_inputs(self.panel).items():
                if key in values:
                    try:
                        write_value(w, values[key])
                        applied += 1
                    except (TypeError, ValueError):
                        continue  # one odd value never blocks the others
        finally:
            self._restoring = False
        return applied

    def watch(self) -> None:
        """Save shortly after any input changes."""
        for w in persistent_inputs(self.panel).values():
            if isinstance(w, QAbstractButton):
                signal = w.toggled
            elif isinstance(w, QComboBox):
                signal = w.currentTextChanged
            elif isinstance(w, QLineEdit):
                signal = w.textChanged
            else:
                signal = w.valueChanged
            signal.connect(self._changed)
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self._flush)

    def _changed(self, *_args) -> None:
        if not self._restoring:
            self._timer.start()

    def _flush(self) -> None:
        try:
            if self._timer.isActive():
                self._timer.stop()
                self.save()
        except RuntimeError:  # the panel is already gone; its last change was saved by the timer
            pass
