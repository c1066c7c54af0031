"""The panel's Model section, persistent settings and tooltips, in real napari viewers (Xvfb)."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def notices():
    from napari.utils.notifications import notification_manager

    seen = []

    def keep(event):
        seen.append(str(getattr(event, "message", event)))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


def _labels(viewer):
    from napari.layers import Labels

    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def _items(combo):
    return [combo.itemText(i) for i in range(combo.count())]


def test_model_choices_follow_the_engine(panel):
    from engine.backbones.registry import registered_backbones
    from engine.runtime.device import available_devices

    _viewer, widget = panel
    names = _items(widget.model.backbone)
    assert names[0] == "efficientnet-lite0" and sorted(names) == sorted(registered_backbones())
    assert _items(widget.model.device) == available_devices()
    assert _items(widget.model.device)[0] == "auto" and _items(widget.model.device)[-1] == "cpu"


def test_device_and_weights_choice_drop_cached_features(panel, qtbot, notices, tmp_path):
    import torch

    from engine.backbones.registry import _REGISTRY

    viewer, widget = panel
    m = widget.model
    # a garbage weights file: one notification naming it, the choice stays, the panel stays usable
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    m.load_weights(str(garbage))
    qtbot.waitUntil(lambda: m.weights_button.isEnabled(), timeout=30_000)
    assert [n for n in notices if "garbage.pth" in n] == notices and len(notices) == 1
    assert m.backbone.currentText() == "efficientnet-lite0" and str(garbage) not in _items(m.backbone)

    widget.run_button.click()
    qtbot.waitUntil(lambda: len(_labels(viewer)) == 1 and widget.run_button.isEnabled(), timeout=120_000)
    first = widget.state.extractor
    assert first is not None and widget.state.features and widget.backbone_calls == 1

    m.device.setCurrentText("cpu")  # 'auto' before: the extractor and features are dropped
    assert widget.state.extractor is None and not widget.state.features
    assert "recomputes" in widget.status.text()

    # a real checkpoint file (the embedded weights) loads, is selected and is what the next run uses
    weights = _REGISTRY["efficientnet-lite0"].path()
    m.load_weights(str(weights))
    qtbot.waitUntil(lambda: m.backbone.currentText() == str(weights), timeout=60_000)
    assert widget.state.extractor is None and not widget.state.features
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.state.extractor is not None and widget.run_button.isEnabled(), timeout=120_000)
    assert widget.state.extractor is not first
    assert widget.state.extractor.config.backbone == str(weights)
    assert widget.state.extractor.device == torch.device("cpu")
    assert widget.backbone_calls == 1 and len(notices) == 1


def test_bad_solo_model_is_one_notification(panel, qtbot, notices, tmp_path):
    _viewer, widget = panel
    m = widget.model
    m.predict_current()  # no model chosen yet
    assert "model.pt" in widget.status.text()
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a model")
    m.model_path.setText(str(bad))
    m.predict_current()
    qtbot.waitUntil(lambda: m.predict_button.isEnabled(), timeout=30_000)
    assert len(notices) == 2 and str(bad) in notices[-1] and "not a readable checkpoint" in notices[-1]
    assert widget.run_button.isEnabled()


def test_settings_persist_between_sessions(make_napari_viewer, qtbot, tmp_path):
    from freesolo_napari.settings import settings_path

    path = settings_path()
    assert str(path).startswith(str(tmp_path))  # tests never touch the user's real settings
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    c = w.controls
    c.tau.slider.setValue(72)
    c.scales_edit.setText("1, 0.75")
    c.top_k.setValue(33)
    c.min_area.setValue(12)
    c.nms_kernel.setCurrentText("linear")
    c.nms_sigma.setValue(3.5)
    c.split.setChecked(False)
    w.model.device.setCurrentText("cpu")
    w.model.model_path.setText(str(tmp_path / "run" / "model.pt"))
    w.model.backbone.addItem(str(tmp_path / "w.pth"))  # as after "load weights…"
    w.model.backbone.setCurrentText(str(tmp_path / "w.pth"))
    t = w.training
    t.images_edit.setText(str(tmp_path / "imgs"))
    t.rounds.setValue(3)
    t.iters.setValue(77)
    t.keep_thr.setValue(0.45)
    t.preset.setCurrentText("paper")
    t.out_edit.setText(str(tmp_path / "run"))
    t.toggle.setChecked(True)  # section opened
    qtbot.waitUntil(lambda: path.is_file() and bool(json.loads(path.read_text())["values"].get("training.out_edit")),
                    timeout=5000)
    before = w.settings.values()
    viewer.close()

    viewer2 = make_napari_viewer()
    _dock, w2 = viewer2.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    assert w2.settings.values() == before
    p = w2.current_params()
    assert (p.tau, p.scales, p.top_k, p.min_area, p.nms_kernel, p.nms_sigma, p.split_components) == (
        0.72, (1.0, 0.75), 33, 12, "linear", 3.5, False)
    assert w2.model.device_name() == "cpu" and w2.model.backbone.currentText() == str(tmp_path / "w.pth")
    assert (w2.training.rounds.value(), w2.training.iters.value(), w2.training.preset.currentText()) == (3, 77, "paper")
    assert w2.training.keep_thr.value() == pytest.approx(0.45) and w2.training.body.isVisibleTo(w2.training)


def test_unreadable_settings_file_is_one_notice_then_defaults(make_napari_viewer, notices):
    from freesolo_napari.settings import settings_path

    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{ not json")
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    assert len(notices) == 1 and str(path) in notices[0]
    assert w.controls.tau.value() == pytest.approx(0.65) and w.run_button.isEnabled()


def test_every_input_has_a_tooltip(panel):
    from qtpy.QtWidgets import (QAbstractButton, QAbstractSlider, QAbstractSpinBox, QComboBox, QLineEdit,
                                QScrollBar, QWidget)

    _viewer, widget = panel
    inputs = (QAbstractButton, QAbstractSlider, QAbstractSpinBox, QComboBox, QLineEdit)
    missing, n = [], 0
    for w in widget.findChildren(QWidget):
        if not isinstance(w, inputs) or isinstance(w, QScrollBar):
            continue
        if isinstance(w.parent(), (QAbstractSpinBox, QComboBox)):  # a spin box's or combo's own line edit
            continue
        n += 1
        if not w.toolTip().strip():
            missing.append(f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r}")
    assert n > 30, "the walk found the panel's inputs"
    assert not missing, f"inputs without a tooltip: {missing}"
    # and every persisted setting is one of them
    assert len(widget.settings.values()) > 25
    assert np.all([isinstance(k, str) for k in widget.settings.values()])


def test_slider_burst_ends_on_the_latest_value_one_worker_at_a_time(panel, qtbot):
    from engine.freemask.postprocess import postprocess
    from freesolo_napari.layers import instances_to_labels

    viewer, widget = panel
    widget.run_button.click()
    qtbot.waitUntil(lambda: len(_labels(viewer)) == 1 and widget.run_button.isEnabled(), timeout=120_000)
    started = []
    original = widget.update_overlay

    def counting():
        started.append(widget._update_worker)  # None: no other post-processing worker in flight
        original()

    widget.update_overlay = counting  # the first start and the re-run after a worker ends
    for v in (70, 75, 80, 72, 78):  # a quick drag: five values
        widget.tau_slider.setValue(v)
        qtbot.wait(5)
    qtbot.waitUntil(lambda: widget._update_worker is None and not widget._update_again and bool(started),
                    timeout=60_000)
    assert all(w is None for w in started) and 1 <= len(started) <= 3  # throttled, never overlapping
    image, feats = widget.state.features["synthetic photo"]
    expected = postprocess(feats, widget.current_params(), image)
    assert widget.current_params().tau == pytest.approx(0.78)
    assert np.array_equal(_labels(viewer)[0].data, instances_to_labels(expected.instances, image.shape[:2]))
