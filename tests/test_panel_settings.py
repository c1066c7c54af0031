"""The settings schema: every entry names an input widget that exists, the file is versioned and round-trips."""

import json

import pytest

pytestmark = pytest.mark.gui


def _panel(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    return viewer, widget


def _inputs(widget):
    from qtpy.QtWidgets import (QAbstractButton, QAbstractSlider, QAbstractSpinBox, QComboBox, QLineEdit,
                                QScrollBar, QWidget)

    found = []
    for w in widget.findChildren(QWidget):
        if isinstance(w, QScrollBar) or isinstance(w.parent(), (QAbstractSpinBox, QComboBox)):
            continue
        if isinstance(w, QAbstractButton) and not w.isCheckable():
            continue
        if isinstance(w, (QAbstractButton, QAbstractSlider, QAbstractSpinBox, QComboBox, QLineEdit)):
            found.append(w)
    return found


def test_every_schema_entry_names_an_existing_input_with_its_default(make_napari_viewer):
    """Renaming or removing a widget without updating ``settings.SCHEMA`` fails here."""
    from freesolo_napari.settings import SCHEMA, read_value, resolve

    _viewer, widget = _panel(make_napari_viewer)
    keys = [s.key for s in SCHEMA]
    assert len(keys) == len(set(keys)) == 41
    missing = []
    for setting in SCHEMA:
        try:
            w = resolve(widget, setting.path)
        except (AttributeError, IndexError):
            missing.append(f"{setting.key} -> {setting.path}")
            continue
        value = read_value(w)
        assert type(value) is type(setting.default) and value == setting.default, (setting, value)
    assert not missing, f"settings whose widget no longer exists: {missing}"


def test_every_input_is_saved_or_marked_not_persisted(make_napari_viewer):
    from freesolo_napari.settings import SCHEMA, resolve

    _viewer, widget = _panel(make_napari_viewer)
    saved = {id(resolve(widget, s.path)) for s in SCHEMA}
    unsaved = [w for w in _inputs(widget) if id(w) not in saved and w.property("persist") is not False]
    assert not unsaved, [f"{type(w).__name__} {w.toolTip()!r}" for w in unsaved]


def test_saved_file_is_versioned_and_round_trips(make_napari_viewer, tmp_path, monkeypatch):
    from freesolo_napari.settings import VERSION

    path = tmp_path / "round-trip.json"
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(path))
    _viewer, w = _panel(make_napari_viewer)
    w.controls.tau.slider.setValue(71)
    w.controls.scale_checks[3].setChecked(True)
    w.review.color_check.setChecked(True)
    w.training.keep_thr.setValue(0.55)
    w.export_controls.format.setCurrentText("polygons")
    assert w.settings.save() == path
    data = json.loads(path.read_text())
    assert data["version"] == VERSION and data["values"] == w.settings.values()
    assert data["values"]["review.color_check"] is True and data["values"]["controls.tau.slider"] == 71

    _viewer2, w2 = _panel(make_napari_viewer)
    assert w2.settings.values() == w.settings.values() and w2.settings.problem is None


def test_version_1_file_is_migrated_and_bad_values_are_skipped(make_napari_viewer, tmp_path, monkeypatch):
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({"format": 1, "values": {
        "controls.tau.slider": 80, "training.rounds": 4, "model.device": "cpu", "inspect_check": False,
        "controls.min_area": "many",  # not a number: skipped, the others still apply
        "removed.setting": 3}}))
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(path))
    _viewer, w = _panel(make_napari_viewer)
    assert w.settings.problem is None
    assert w.controls.tau.slider.value() == 80 and w.training.rounds.value() == 4
    assert w.model.device_name() == "cpu" and w.controls.min_area.value() == 16


def test_unknown_version_is_one_notice_then_defaults(make_napari_viewer, tmp_path, monkeypatch):
    path = tmp_path / "future.json"
    path.write_text(json.dumps({"version": 99, "values": {"controls.tau.slider": 80}}))
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(path))
    _viewer, w = _panel(make_napari_viewer)
    assert "version 99" in w.settings.problem and str(path) in w.settings.problem
    assert "using defaults" in w.status.text() and w.controls.tau.slider.value() == 65


def test_generator_toggles_and_colour_by_source_round_trip(make_napari_viewer, tmp_path, monkeypatch):
    path = tmp_path / "generators.json"
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(path))
    _viewer, w = _panel(make_napari_viewer)
    freemask, maskcut, classical, grouping = w.controls.generator_checks
    maskcut.setChecked(True)
    classical.setChecked(True)
    grouping.setChecked(True)
    freemask.setChecked(False)
    assert w.current_generators().classical_on_microscopy  # on by default
    w.controls.on_microscopy.setChecked(False)
    w.review.source_check.setChecked(True)
    w.settings.save()
    values = json.loads(path.read_text())["values"]
    assert (values["controls.generators.freemask"], values["controls.generators.maskcut"],
            values["controls.generators.classical"], values["controls.generators.grouping"],
            values["review.source_check"]) == (False, True, True, True, True)
    assert values["controls.generators.on_microscopy"] is False

    _viewer2, w2 = _panel(make_napari_viewer)
    assert w2.current_generators().generators == ("maskcut", "classical", "grouping")
    assert not w2.current_generators().classical_on_microscopy
    assert w2.review.source_check.isChecked() and not w2.review.color_check.isChecked()


def test_a_file_with_one_generator_on_restores_it_alone_and_locked(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    from freesolo_napari.settings import VERSION

    path = tmp_path / "classical.json"
    path.write_text(json.dumps({"version": VERSION, "values": {
        "controls.generators.freemask": False, "controls.generators.maskcut": False,
        "controls.generators.classical": True}}))
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(path))
    _viewer, w = _panel(make_napari_viewer)
    qtbot.wait(50)  # restoring went through 'none on' for a moment: nothing turns Free Mask back on
    assert w.current_generators().generators == ("classical",)
    assert not w.controls.generator_checks[2].isEnabled()


def test_version_2_file_is_migrated_to_free_mask_alone(make_napari_viewer, tmp_path, monkeypatch):
    from freesolo_napari.settings import MIGRATIONS, VERSION

    path = tmp_path / "v2.json"
    path.write_text(json.dumps({"version": 2, "values": {"controls.tau.slider": 70, "review.color_check": True}}))
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(path))
    _viewer, w = _panel(make_napari_viewer)
    assert VERSION == 5 and w.settings.problem is None
    assert w.controls.tau.slider.value() == 70 and w.review.color_check.isChecked()
    assert w.current_generators().generators == ("freemask",) and not w.review.source_check.isChecked()
    migrated = MIGRATIONS[2]({"controls.tau.slider": 70})
    assert migrated["controls.generators.freemask"] is True and migrated["controls.generators.classical"] is False
    assert migrated["review.source_check"] is False and migrated["controls.tau.slider"] == 70


def test_version_3_file_is_migrated_to_tiles_off_and_tiles_round_trip(make_napari_viewer, tmp_path, monkeypatch):
    from freesolo_napari.settings import MIGRATIONS

    path = tmp_path / "v3.json"
    path.write_text(json.dumps({"version": 3, "values": {"controls.tau.slider": 66}}))
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(path))
    _viewer, w = _panel(make_napari_viewer)
    assert w.settings.problem is None and w.controls.tau.slider.value() == 66
    assert w.tiling.tiling() == (None, 0) and not w.tiling.overlap.isEnabled()
    assert MIGRATIONS[3]({"controls.tau.slider": 66}) == {"controls.tau.slider": 66, "tiling.tile": 0,
                                                          "tiling.overlap": 64}
    w.tiling.tile.setValue(512)
    w.tiling.overlap.setValue(96)
    w.settings.save()
    values = json.loads(path.read_text())["values"]
    assert (values["tiling.tile"], values["tiling.overlap"]) == (512, 96)
    _viewer2, w2 = _panel(make_napari_viewer)
    assert w2.tiling.tiling() == (512, 96) and w2.state.tiling == (512, 96)  # restored and in effect


def test_version_4_file_is_migrated_to_auto_classical_methods_and_the_default_weight(make_napari_viewer, tmp_path,
                                                                                     monkeypatch):
    from freesolo_napari.settings import MIGRATIONS

    path = tmp_path / "v4.json"
    path.write_text(json.dumps({"version": 4, "values": {"controls.tau.slider": 61, "tiling.tile": 256}}))
    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(path))
    _viewer, w = _panel(make_napari_viewer)
    assert w.settings.problem is None and w.controls.tau.slider.value() == 61
    config = w.current_generators()
    assert (config.classical, config.freemask_weight) == (None, 0.5)
    assert MIGRATIONS[4]({"controls.tau.slider": 61}) == {"controls.tau.slider": 61, "controls.classical_methods": "auto",
                                                          "controls.freemask_weight": 0.5}


def test_the_tile_control_keeps_what_the_engine_can_plan(make_napari_viewer):
    from engine.generators.tiling import check_tiling

    _viewer, w = _panel(make_napari_viewer)
    t = w.tiling
    t.tile.setValue(20)  # below the engine's smallest tile
    assert t.tiling() == (64, 31)  # the tile raised to 64, the overlap clamped under half of it
    t.tile.setValue(1024)
    t.overlap.setValue(200)
    assert t.tiling() == (1024, 200)
    check_tiling(*t.tiling())
    t.tile.setValue(0)
    assert t.tiling() == (None, 0) and w.state.tiling == (None, 0) and not t.overlap.isEnabled()
