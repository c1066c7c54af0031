"""Colour by score, asking before automatic updates replace edits, undo, export scope and format."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def ran(make_napari_viewer, qtbot):
    """A viewer with two small photos, Free Mask run on both."""
    from engine.data.synthetic import make_sample

    viewer = make_napari_viewer()
    viewer.add_image(make_sample(5, (160, 160), kind="photo")[0], name="a", rgb=True)
    viewer.add_image(make_sample(6, (144, 160), kind="photo")[0], name="b", rgb=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    widget.run_scope.set_scope("all open images")
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled() and "b · free masks" in viewer.layers, timeout=120_000)
    widget.run_scope.set_scope("current image")
    widget.layer_combo.setCurrentText("a")
    return viewer, widget


def _wait_update(qtbot, widget, before_text):
    qtbot.waitUntil(lambda: widget.status.text() != before_text, timeout=30_000)


def test_colour_by_score(ran, qtbot):
    from napari.utils.colormaps import CyclicLabelColormap, DirectLabelColormap, ensure_colormap

    viewer, widget = ran
    check = widget.review.color_check
    assert check.toolTip() and widget.review.undo_button.toolTip()
    layer = viewer.layers["a · free masks"]
    assert isinstance(layer.colormap, CyclicLabelColormap)
    check.setChecked(True)
    assert isinstance(layer.colormap, DirectLabelColormap)
    assert isinstance(viewer.layers["b · free masks"].colormap, DirectLabelColormap)
    table = layer.features
    viridis = ensure_colormap("viridis")

    def assert_score_colours(layer):
        table = layer.features
        for label, score in zip(table["index"][1:], table["score"][1:]):
            got = layer.colormap.map(np.array([label]))[0]
            assert np.allclose(got[:3], viridis.map(np.array([score]))[0][:3], atol=0.02)

    assert_score_colours(layer)
    best, worst = table["index"][table["score"].idxmax()], table["index"][table["score"].idxmin()]
    if table["score"].max() - table["score"][1:].min() > 0.2:
        assert not np.allclose(layer.colormap.map(np.array([best])), layer.colormap.map(np.array([worst])))

    text = widget.status.text()
    widget.tau_slider.setValue(75)  # an automatic update keeps the score colouring, for the new masks
    _wait_update(qtbot, widget, text)
    layer = viewer.layers["a · free masks"]
    assert not np.array_equal(layer.features["score"], table["score"])
    assert_score_colours(layer)  # the colours follow the new scores
    check.setChecked(False)
    assert isinstance(layer.colormap, CyclicLabelColormap)


def test_edits_are_kept_or_replaced_as_the_user_says_and_undo(ran, qtbot):
    viewer, widget = ran
    layer = viewer.layers["a · free masks"]
    auto = layer.data.copy()
    auto_features = layer.features.copy()
    edited = auto.copy()
    edited[:8, :8] = auto.max() + 1  # the user paints a mask
    layer.data = edited
    assert widget.review.is_edited("a") and not widget.review.is_edited("b")

    asked = []
    widget.review.confirm_replace = lambda name: asked.append(name) or False  # "Keep my edits"
    text = widget.status.text()
    widget.tau_slider.setValue(75)
    _wait_update(qtbot, widget, text)
    assert asked == ["a"] and "Kept your edits" in widget.status.text()
    assert np.array_equal(viewer.layers["a · free masks"].data, edited), "the overlay was not replaced"

    widget.review.confirm_replace = lambda name: asked.append(name) or True  # "Replace"
    text = widget.status.text()
    widget.tau_slider.setValue(70)
    _wait_update(qtbot, widget, text)
    replaced = viewer.layers["a · free masks"].data.copy()
    assert asked == ["a", "a"] and not np.array_equal(replaced, edited)
    assert np.array_equal(widget.state.automatic["a"], replaced)

    # Undo last update: the edited masks and their table come back
    assert widget.review.undo_button.isEnabled()
    widget.review.undo_button.click()
    restored = viewer.layers["a · free masks"]
    assert np.array_equal(restored.data, edited)
    assert list(restored.features["score"]) == list(auto_features["score"])
    assert np.array_equal(widget.state.automatic["a"], auto)  # still counted as edited against the old run
    assert widget.review.is_edited("a")

    # an unedited layer updates without a question; undo of the first run removes its masks
    widget.layer_combo.setCurrentText("b")
    asked.clear()
    b_before = viewer.layers["b · free masks"].data.copy()
    text = widget.status.text()
    widget.tau_slider.setValue(80)
    _wait_update(qtbot, widget, text)
    assert asked == [] and not np.array_equal(viewer.layers["b · free masks"].data, b_before)
    widget.review.undo()
    assert np.array_equal(viewer.layers["b · free masks"].data, b_before)
    while widget.review.undo():  # back to before the batch run
        pass
    assert "b · free masks" not in viewer.layers and "b · maskness" not in viewer.layers
    assert not widget.review.undo_button.isEnabled()


def test_export_scope_and_format(ran, qtbot, tmp_path):
    from engine.io.coco import read_coco

    viewer, widget = ran
    ex = widget.export_controls
    ex.scope.setCurrentText("current image")
    widget.export_coco(str(tmp_path / "current.json"))
    [image] = read_coco(tmp_path / "current.json").images
    assert image["file_name"] == "a.png"
    # the automatic choices the panel showed for the image are written with it, as the command line does
    assert image["automatic"] == widget.state.choices["a"].as_dict()
    ex.scope.setCurrentText("all open images")
    ex.format.setCurrentText("polygons")
    widget.export_coco(str(tmp_path / "open.json"))
    ds = read_coco(tmp_path / "open.json")
    assert [im["file_name"] for im in ds.images] == ["a.png", "b.png"]
    assert ds.annotations and all(isinstance(a["segmentation"], list) for a in ds.annotations)
    ex.format.setCurrentText("RLE")
    widget.export_coco(str(tmp_path / "rle.json"))
    assert all(isinstance(a["segmentation"], dict) for a in read_coco(tmp_path / "rle.json").annotations)

    ex.export_labels(tmp_path / "labels", scope="current image")
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["a.png"]
    ex.export_labels(tmp_path / "labels", scope="current image")  # never silently overwritten
    assert "already exists" in widget.status.text()
    ex.scope.setCurrentText("whole folder")
    widget.export_coco(str(tmp_path / "folder.json"))  # no folder open: a message, no crash
    assert "no folder is open" in widget.status.text() and ex.coco_button.isEnabled()
