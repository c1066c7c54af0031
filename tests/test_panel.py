"""The FreeSOLO panel in a real napari viewer (under Xvfb), driven like a user would."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _labels_layers(viewer):
    from napari.layers import Labels

    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def test_run_then_slider_updates_overlay_without_backbone(panel, qtbot):
    viewer, widget = panel
    assert widget.layer_combo.currentText() == "synthetic photo"
    widget.run_button.click()
    qtbot.waitUntil(lambda: len(_labels_layers(viewer)) == 1, timeout=120_000)
    layer = _labels_layers(viewer)[0]
    assert widget.backbone_calls == 1
    first = layer.data.copy()
    n_first = int(first.max())
    assert n_first >= 1
    feats = layer.features
    assert {"score", "maskness", "scale", "area", "source"} <= set(feats.columns)
    assert len(feats) - 1 >= n_first  # one row per instance (+ background); hidden masks keep a row

    widget.tau_slider.setValue(80)  # tighter masks
    qtbot.waitUntil(lambda: not np.array_equal(_labels_layers(viewer)[0].data, first), timeout=30_000)
    assert widget.backbone_calls == 1, "a slider change must not re-run the backbone"
    assert len(_labels_layers(viewer)) == 1, "the Labels layer is reused, not duplicated"
    assert widget.controls.tau.label.text() == "0.80"
    tight = (_labels_layers(viewer)[0].data > 0).sum()
    assert tight < (first > 0).sum()


def test_stack_layer_runs_the_plane_on_screen_and_panel_stays_usable(panel, qtbot):
    """A 4-D layer is a stack (time, z) run plane by plane; the one on screen, not 'not a 2D image'."""
    viewer, widget = panel
    viewer.add_image(np.zeros((3, 5, 32, 32), np.uint8), name="stack")
    widget.layer_combo.setCurrentText("stack")
    viewer.dims.set_current_step(0, 2)
    viewer.dims.set_current_step(1, 4)
    widget.run_button.click()
    assert "stack[t=2,z=4]" in widget.status.text()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=120_000)
    assert "stack[t=2,z=4]" in widget.state.features and "not a 2D image" not in widget.status.text()
    assert viewer.layers["stack · free masks"].data.shape == (3, 5, 32, 32)


def test_controls_build_params_and_reject_bad_scales(panel, qtbot):
    from engine.freemask.postprocess import parse_scales

    _viewer, widget = panel
    c = widget.controls
    c.scale_checks[3].setChecked(True)  # add 0.125
    assert c.params().scales == (1.0, 0.5, 0.25, 0.125)
    c.scale_checks[0].setChecked(False)
    assert c.params().scales == (0.5, 0.25, 0.125)
    c.nms_kernel.setCurrentText("linear")
    c.min_area.setValue(50)
    c.top_k.setValue(7)
    p = c.params()
    assert (p.nms_kernel, p.min_area, p.top_k) == ("linear", 50, 7)
    c.scales_edit.setText("1, banana")
    with pytest.raises(ValueError, match="banana"):
        c.params()
    widget.run_button.click()  # a bad value is a message, not a crash
    assert "banana" in widget.status.text() and widget.run_button.isEnabled()
    assert parse_scales("0.5;1,0.5") == (1.0, 0.5)
    for name in ("tau", "min_score"):
        assert getattr(c, name).toolTip()
    assert all(w.toolTip() for w in (c.top_k, c.min_area, c.nms_kernel, c.nms_sigma, c.split, c.refine, c.radius))


def test_screenshot_of_panel_with_overlay(make_napari_viewer, qtbot):
    """Saves docs/panel.png (shown in the README) from a real, visible viewer."""
    from pathlib import Path

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("freesolo-napari", "synthetic-photo")
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    widget.run_button.click()
    qtbot.waitUntil(lambda: len(_labels_layers(viewer)) == 1 and widget.run_button.isEnabled(), timeout=120_000)
    viewer.window._qt_window.resize(1400, 900)
    qtbot.wait(300)
    out = Path(__file__).resolve().parents[1] / "docs" / "panel.png"
    out.parent.mkdir(exist_ok=True)
    shot = viewer.screenshot(path=str(out), canvas_only=False)
    assert out.is_file() and shot.shape[0] > 300 and shot.shape[1] > 600
    assert shot[..., :3].std() > 5  # not a blank window


def test_export_with_edits_then_import_round_trip(panel, qtbot, tmp_path, make_napari_viewer):
    from engine.io.coco import load_image_results

    viewer, widget = panel
    widget.run_button.click()
    qtbot.waitUntil(lambda: len(_labels_layers(viewer)) == 1 and widget.run_button.isEnabled(), timeout=120_000)
    labels = _labels_layers(viewer)[0]
    data = labels.data.copy()
    ids = [i for i in np.unique(data) if i > 0]
    assert len(ids) >= 2
    data[data == ids[0]] = 0  # the user deletes one mask ...
    free = np.argwhere(data == 0)[:36]  # ... and paints onto another, over background only
    assert len(free) == 36  # (painting over a third mask would edit that one too)
    data[free[:, 0], free[:, 1]] = ids[1]
    labels.data = data

    out = tmp_path / "masks.json"
    widget.export_coco(str(out))
    assert "Exported 1 image" in widget.status.text()
    res = load_image_results(out)["synthetic photo.png"]
    assert len(res.instances) == len(ids) - 1
    sources = [m.source for m in res.instances]
    assert sources.count("edited") == 1 and sources.count("freemask") == len(ids) - 2
    widget.export_coco(str(out))  # never overwritten silently
    assert "already exists" in widget.status.text()

    # import onto a fresh viewer holding the same image: the same masks come back
    viewer2 = make_napari_viewer()
    viewer2.open_sample("freesolo-napari", "synthetic-photo")
    _dock, w2 = viewer2.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    w2.import_coco(str(out))
    assert "Imported masks for 1 image" in w2.status.text()
    back = _labels_layers(viewer2)[0].data
    assert set(np.unique(back)) - {0} and ((back > 0) == (data > 0)).mean() > 0.99

    bad = tmp_path / "bad.json"
    bad.write_text("{ broken")
    w2.import_coco(str(bad))
    assert "bad.json" in w2.status.text() and w2.import_button.isEnabled()


def test_query_inspector_and_histogram(panel, qtbot):
    viewer, widget = panel
    assert "first" in widget.inspect_query(10, 10)  # before any run: a hint, no crash
    widget.run_button.click()
    qtbot.waitUntil(lambda: len(_labels_layers(viewer)) == 1 and widget.run_button.isEnabled(), timeout=120_000)
    assert widget.histogram.counts.sum() > 0  # every candidate's maskness is binned
    calls = widget.backbone_calls
    text = widget.inspect_query(200, 200)
    assert "maskness" in text and "τ 0.65" in text
    layer = viewer.layers["query soft mask"]
    soft = np.asarray(layer.data)
    assert soft.max() == pytest.approx(1.0) and soft.min() == pytest.approx(0.0)
    h, w = viewer.layers["synthetic photo"].data.shape[:2]
    assert layer.scale[0] * soft.shape[0] == pytest.approx(h, rel=0.05)  # drawn at image size
    assert "query soft mask · τ contour" in viewer.layers
    assert widget.layer_combo.currentText() == "synthetic photo"  # the soft mask is not an image to segment
    assert widget.layer_combo.findText("query soft mask") < 0
    assert "maskness" in widget.inspect_query(100, 100)  # a second click still inspects the photo
    assert widget.backbone_calls == calls  # inspecting never runs the network
    widget.inspect_check.setChecked(True)
    assert widget.inspector.on_click in viewer.mouse_drag_callbacks
    widget.inspect_check.setChecked(False)
    assert widget.inspector.on_click not in viewer.mouse_drag_callbacks


def test_slider_values_follow_to_the_image_you_switch_to(panel, qtbot):
    """Sliders act on the panel's image; another image catches up when you pick it (no backbone),
    and picking a layer in napari's layer list picks its image in the panel."""
    from engine.data.synthetic import make_sample

    viewer, widget = panel
    viewer.add_image(make_sample(5, (96, 96), kind="photo")[0], name="second", rgb=True)
    widget.run_scope.set_scope("all open images")
    widget.run_button.click()
    qtbot.waitUntil(lambda: len(_labels_layers(viewer)) == 2 and widget.run_button.isEnabled(), timeout=120_000)
    calls = widget.backbone_calls
    viewer.layers.selection.active = viewer.layers["synthetic photo · free masks"]
    assert widget.layer_combo.currentText() == "synthetic photo"  # follows napari's selection
    second = viewer.layers["second · free masks"].data.copy()

    widget.tau_slider.setValue(85)
    first = viewer.layers["synthetic photo · free masks"]
    qtbot.waitUntil(lambda: widget.state.params_shown.get("synthetic photo") == widget.current_params(), timeout=30_000)
    assert np.array_equal(viewer.layers["second · free masks"].data, second), "only the panel's image updates"

    viewer.layers.selection.active = viewer.layers["second"]  # switching images catches up
    assert widget.layer_combo.currentText() == "second"
    qtbot.waitUntil(lambda: widget.state.params_shown.get("second") == widget.current_params(), timeout=30_000)
    assert (viewer.layers["second · free masks"].data > 0).sum() < (second > 0).sum()  # τ 0.85: tighter
    assert widget.backbone_calls == calls
    before = first.data.copy()
    widget.layer_combo.setCurrentText("synthetic photo")  # already up to date: nothing is recomputed
    qtbot.wait(300)
    assert np.array_equal(first.data, before) and widget._update_worker is None
    viewer.layers.remove("second")  # closing an image frees its cached features
    assert "second" not in widget.state.features and "second" not in widget.state.params_shown
    assert "synthetic photo" in widget.state.features


def test_closing_the_viewer_while_free_mask_runs_is_safe(make_napari_viewer, qtbot):
    """Results of a worker still running when the viewer closes reach no deleted widget
    (under PyQt6 an exception in a slot would abort the whole process)."""
    from engine.data.synthetic import make_sample
    from freesolo_napari.workers import running_workers

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    viewer.add_image(make_sample(3, (384, 384), kind="photo")[0], name="photo", rgb=True)
    widget.run()
    worker = widget.job
    assert worker in running_workers(widget)
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    widget.deleteLater()  # what closing the viewer does to its dock widgets
    qtbot.waitUntil(lambda: not worker.is_running, timeout=120_000)
    from qtpy.QtCore import QThreadPool

    assert QThreadPool.globalInstance().waitForDone(60_000)  # the thread has emitted its last signal
    qtbot.wait(200)
    assert not finished, "the worker's signals were cut when the panel went away"
