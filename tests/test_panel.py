"""The FreeSOLO panel in a real napari viewer (under Xvfb), driven like a user would."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def panel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("freesolo-napari", "synthetic-photo")
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    return viewer, widget


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
    assert widget.tau_label.text() == "0.80"
    tight = (_labels_layers(viewer)[0].data > 0).sum()
    assert tight < (first > 0).sum()


def test_non_2d_layer_is_reported_and_panel_stays_usable(panel, qtbot):
    viewer, widget = panel
    viewer.add_image(np.zeros((3, 5, 32, 32), np.uint8), name="stack")
    widget.layer_combo.setCurrentText("stack")
    widget.run_button.click()
    assert "not a 2D image" in widget.status.text()
    assert widget.run_button.isEnabled()
