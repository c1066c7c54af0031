"""Panel settings that persist between sessions, as one versioned JSON file.

What is saved is an explicit schema (:data:`SCHEMA`): each setting has a key (its name in the
file, which never changes once released), the attribute path of its input widget from the panel
(e.g. ``controls.tau.slider``, which may change when the panel is reorganised) and its default
(whose type is the setting's type). Renaming a widget means updating its path here, and a test
fails until that is done; renaming a key needs a migration (:data:`MIGRATIONS`). Values are saved
shortly after any change; a new panel restores them.

File: ``{"version": 5, "values": {key: value}}``. Version 1 files (``{"format": 1, ...}``,
written when the keys were found by walking the panel's attributes) hold the same keys and are
migrated; version 2 files predate the generator toggles and colour by source: they are migrated
to Free Mask alone, coloured as they were; version 3 files predate the tiles control: they are
migrated to tiles off (the overlap at the command line's default); version 4 files predate the
classical-methods choice and Free Mask's merge weight: they are migrated to 'auto' and 0.5. A file of an unknown version is ignored with one
notice, and the defaults are used.

Location: ``$FREESOLO_NAPARI_SETTINGS`` if set (tests point it at a temporary file), else
``freesolo-napari/settings.json`` in the platform's configuration folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qtpy.QtCore import QStandardPaths, QTimer
from qtpy.QtWidgets import QAbstractButton, QComboBox, QDoubleSpinBox, QLineEdit, QWidget

from engine.backbones.registry import DEFAULT_BACKBONE
from engine.freemask.postprocess import FreeMaskParams
from engine.generators.merge import GENERATORS, GeneratorConfig
from engine.selftrain.config import SelfTrainConfig
from engine.solo.config import TrainConfig
from freesolo_napari.sections.tiling import DEFAULT_OVERLAP

SETTINGS_ENV = "FREESOLO_NAPARI_SETTINGS"
SAVE_DELAY_MS = 300
VERSION = 5


@dataclass(frozen=True)
class Setting:
    key: str  # name in the saved file
    path: str  # attribute path of the input widget, from the panel
    default: bool | int | float | str  # what a new panel shows; its type is the setting's type


_P, _T, _S, _G = FreeMaskParams(), TrainConfig(), SelfTrainConfig(), GeneratorConfig()
SCHEMA: tuple[Setting, ...] = (
    Setting("controls.tau.slider", "controls.tau.slider", round(_P.tau * 100)),
    Setting("controls.min_score.slider", "controls.min_score.slider", round(_P.min_score * 100)),
    *(Setting(f"controls.scale_checks.{i}", f"controls.scale_checks.{i}", s in _P.scales)
      for i, s in enumerate((1.0, 0.5, 0.25, 0.125))),
    Setting("controls.scales_edit", "controls.scales_edit", ", ".join(f"{s:g}" for s in _P.scales)),
    Setting("controls.top_k", "controls.top_k", _P.top_k or 0),
    Setting("controls.min_area", "controls.min_area", _P.min_area),
    Setting("controls.nms_kernel", "controls.nms_kernel", _P.nms_kernel),
    Setting("controls.nms_sigma", "controls.nms_sigma", _P.nms_sigma),
    Setting("controls.split", "controls.split", _P.split_components),
    Setting("controls.refine", "controls.refine", _P.refine),
    Setting("controls.radius", "controls.radius", _P.refine_radius or 0),
    *(Setting(f"controls.generators.{g}", f"controls.generator_checks.{i}", g in _G.generators)
      for i, g in enumerate(GENERATORS)),
    Setting("controls.generators.on_microscopy", "controls.on_microscopy", _G.classical_on_microscopy),
    Setting("controls.classical_methods", "controls.classical_methods", "auto"),
    Setting("controls.freemask_weight", "controls.freemask_weight", _G.freemask_weight),
    Setting("tiling.tile", "tiling.tile", 0),
    Setting("tiling.overlap", "tiling.overlap", DEFAULT_OVERLAP),
    Setting("run_scope.combo", "run_scope.combo", "current image"),
    Setting("export_controls.scope", "export_controls.scope", "all open images"),
    Setting("export_controls.format", "export_controls.format", "RLE"),
    Setting("review.color_check", "review.color_check", False),
    Setting("review.source_check", "review.source_check", False),
    Setting("inspect_check", "inspector.check", False),
    Setting("model.toggle", "model.toggle", False),
    Setting("model.backbone", "model.backbone", DEFAULT_BACKBONE),
    Setting("model.device", "model.device", "auto"),
    Setting("model.model_path", "model.model_path", ""),
    Setting("training.toggle", "training.toggle", False),
    Setting("training.images_edit", "training.images_edit", ""),
    Setting("training.rounds", "training.rounds", _S.rounds),
    Setting("training.iters", "training.iters", _T.iters),
    Setting("training.size", "training.size", 320),
    Setting("training.keep_thr", "training.keep_thr", _S.keep_thr),
    Setting("training.preset", "training.preset", "cpu-small"),
    Setting("training.out_edit", "training.out_edit", ""),
)


def _from_v1(values: dict) -> dict:
    """Version 1 saved the keys the attribute walk found: the schema's keys, plus any it no longer has."""
    return values


def _from_v2(values: dict) -> dict:
    """Version 2 had no generator toggles and no colour by source: Free Mask alone, coloured as before."""
    return {**values, **{f"controls.generators.{g}": g == "freemask" for g in GENERATORS},
            "review.source_check": False}


def _from_v3(values: dict) -> dict:
    """Version 3 had no tiles control: tiles off, as before."""
    return {**values, "tiling.tile": 0, "tiling.overlap": DEFAULT_OVERLAP}


def _from_v4(values: dict) -> dict:
    """Version 4 had no classical-methods choice and no Free Mask weight: the engine's defaults, as before."""
    return {**values, "controls.classical_methods": "auto", "controls.freemask_weight": _G.freemask_weight}


# version -> its values in the next version's keys
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _from_v1, 2: _from_v2, 3: _from_v3, 4: _from_v4}


def settings_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(SETTINGS_ENV, "").strip():
        return Path(os.environ[SETTINGS_ENV]).expanduser()
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericConfigLocation)
    return Path(base or Path.home() / ".config") / "freesolo-napari" / "settings.json"


def resolve(root, path: str):
    """The object at attribute path ``path`` from ``root`` (a number indexes a list); AttributeError if gone."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


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


def changed_signal(w):
    if isinstance(w, QAbstractButton):
        return w.toggled
    if isinstance(w, QComboBox):
        return w.currentTextChanged
    if isinstance(w, QLineEdit):
        return w.textChanged
    return w.valueChanged


def coerce(setting: Setting, value):
    """A saved value as the setting's type; TypeError/ValueError if it is not one."""
    kind = type(setting.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{setting.key}: expected true or false, got {value!r}")
        return value
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"{setting.key}: expected a number, got {value!r}")
    return kind(value)


def load_values(data) -> tuple[dict | None, str | None]:
    """(values in the current version's keys, None) of a parsed file, or (None, why it cannot be used)."""
    if not isinstance(data, dict) or not isinstance(data.get("values"), dict):
        raise ValueError("no 'values' object")
    version = data.get("version", data.get("format"))
    if version == VERSION:
        return data["values"], None
    if not isinstance(version, int) or isinstance(version, bool) or version not in MIGRATIONS:
        return None, f"version {version!r}, which this freesolo-napari does not know (it reads 1 to {VERSION})"
    values = data["values"]
    while version != VERSION:
        values, version = MIGRATIONS[version](values), version + 1
    return values, None


class PanelSettings:
    """Saves the :data:`SCHEMA` inputs of ``root`` (the panel; debounced) and restores them.

    A file that cannot be used is one notice (``notify``), then the defaults.
    """

    def __init__(self, root: QWidget, path: str | os.PathLike[str] | None = None,
                 notify: Callable[[str], None] | None = None):
        self.root = root
        self.path = settings_path(path)
        self.notify = notify or (lambda _text: None)
        self.problem: str | None = None
        self._restoring = False
        self._timer = QTimer(root, singleShot=True, interval=SAVE_DELAY_MS)
        self._timer.timeout.connect(self.save)

    def widgets(self) -> dict[str, QWidget]:
        """``{key: input widget}`` of every schema entry (AttributeError names an entry whose widget is gone)."""
        return {s.key: resolve(self.root, s.path) for s in SCHEMA}

    def values(self) -> dict:
        return {key: read_value(w) for key, w in self.widgets().items()}

    def save(self) -> Path | None:
        from engine.io.atomic import atomic_write_json

        try:
            return atomic_write_json(self.path, {"version": VERSION, "values": self.values()}, overwrite=True,
                                     backup=False)
        except OSError as exc:  # an unwritable config folder must not break the panel
            self.problem = f"settings not saved to {self.path}: {exc}"
            return None

    def restore(self) -> int:
        """Apply the saved values; returns how many were applied."""
        if not self.path.is_file():
            return 0
        try:
            values, why = load_values(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            values, why = None, f"unreadable ({exc})"
        if values is None:
            self.problem = f"settings file {self.path} is {why}; using defaults"
            self.notify(self.problem)
            return 0
        return self._apply(values)

    def _apply(self, values: dict) -> int:
        applied = 0
        self._restoring = True
        try:
            for setting in SCHEMA:
                if setting.key in values:
                    try:
                        write_value(resolve(self.root, setting.path), coerce(setting, values[setting.key]))
                        applied += 1
                    except (TypeError, ValueError):
                        continue  # one odd value never blocks the others
        finally:
            self._restoring = False
        return applied

    def watch(self) -> None:
        """Save shortly after any input changes."""
        for w in self.widgets().values():
            changed_signal(w).connect(self._changed)
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
