"""Generator toggles, colour by source and the automatic-choices line, in a real napari viewer (Xvfb)."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui

MASKS = "synthetic photo · free masks"


def _sources(layer) -> set:
    return set(layer.features["source"]) - {"background"}


def _colour_of(layer, label: int) -> np.ndarray:
    return np.asarray(layer.colormap.map(np.array([label]))[0])[:3]


def _run(widget, viewer, qtbot):
    widget.run_button.click()
    qtbot.waitUntil(lambda: MASKS in viewer.layers and widget.run_button.isEnabled(), timeout=120_000)
    return viewer.layers[MASKS]


def test_classical_and_free_mask_merged_coloured_by_source_and_tau_is_post_processing(panel, qtbot):
    from napari.utils.colormaps import CyclicLabelColormap, DirectLabelColormap

    from freesolo_napari.layers import SOURCE_COLORS

    viewer, widget = panel
    freemask, maskcut, classical, grouping = widget.controls.generator_checks
    assert [b.text() for b in widget.controls.generator_checks] == ["Free Mask", "MaskCut", "classical", "grouping"]
    assert not grouping.isChecked()
    assert freemask.isChecked() and not freemask.isEnabled()  # the only one on cannot be turned off
    classical.setChecked(True)
    assert freemask.isEnabled() and widget.current_generators().generators == ("freemask", "classical")

    layer = _run(widget, viewer, qtbot)
    assert widget.backbone_calls == 1
    assert _sources(layer) == {"freemask", "classical"}, "masks of both generators, merged into one ranking"
    scores = np.asarray(layer.features["score"])[1:]
    assert np.all(np.diff(scores) <= 1e-9), "one ranking: label k + 1 is the k-th best of all sources"
    assert "classical" in widget.status.text() and "freemask" in widget.status.text()

    widget.review.color_check.setChecked(True)
    widget.review.source_check.setChecked(True)
    assert not widget.review.color_check.isChecked(), "colour by score and by source exclude each other"
    assert isinstance(layer.colormap, DirectLabelColormap)
    table = layer.features
    for source in ("freemask", "classical"):
        label = int(table["index"][table["source"] == source].iloc[0])
        assert np.allclose(_colour_of(layer, label), SOURCE_COLORS[source], atol=0.02)
    legend = widget.review.legend
    assert legend.isVisibleTo(widget) and "freemask" in legend.text() and "classical" in legend.text()

    first = layer.data.copy()
    widget.tau_slider.setValue(78)
    qtbot.waitUntil(lambda: not np.array_equal(viewer.layers[MASKS].data, first), timeout=60_000)
    assert widget.backbone_calls == 1, "a τ change must not re-run the backbone"
    layer = viewer.layers[MASKS]
    assert _sources(layer) == {"freemask", "classical"} and isinstance(layer.colormap, DirectLabelColormap)
    table = layer.features
    label = int(table["index"][table["source"] == "classical"].iloc[0])
    assert np.allclose(_colour_of(layer, label), SOURCE_COLORS["classical"], atol=0.02), "colours follow new masks"

    widget.review.source_check.setChecked(False)
    assert isinstance(layer.colormap, CyclicLabelColormap) and not legend.isVisibleTo(widget)

    shown = layer.data.copy()
    freemask.setChecked(False)  # classical alone: post-processing on the kept features
    assert not classical.isEnabled()
    qtbot.waitUntil(lambda: not np.array_equal(viewer.layers[MASKS].data, shown), timeout=60_000)
    qtbot.waitUntil(lambda: _sources(viewer.layers[MASKS]) == {"classical"}, timeout=60_000)
    assert widget.backbone_calls == 1


def test_no_generator_on_is_never_left(panel, qtbot):
    _viewer, widget = panel
    freemask = widget.controls.generator_checks[0]
    freemask.setChecked(False)  # from code (a disabled box): back on after the event
    with pytest.raises(ValueError, match="at least one generator"):
        widget.current_generators()
    qtbot.waitUntil(freemask.isChecked, timeout=5000)
    assert widget.current_generators().generators == ("freemask",)


def test_automatic_choices_line_shows_what_the_engine_used(panel, qtbot):
    viewer, widget = panel
    assert widget.auto_label.text() == "" and widget.auto_label.toolTip()
    _run(widget, viewer, qtbot)
    feats = widget.state.features["synthetic photo"][1]
    text = widget.auto_label.text()
    stain = {"he": "hematoxylin", "none": "none"}[feats.stain]
    assert text.startswith("used: ") and f"input scale ×{feats.input_scale:.2f} (auto" in text
    assert f"stain: {stain} (auto)" in text and "tiles: none" in text
    assert f"query grid {widget.state.choices['synthetic photo'].query_grid[0]}×" in text

    viewer.add_image(np.zeros((64, 64), np.uint8), name="blank")
    widget.layer_combo.setCurrentText("blank")  # no masks yet: nothing was chosen for it
    assert widget.auto_label.text() == ""
    widget.layer_combo.setCurrentText("synthetic photo")
    assert widget.auto_label.text() == text


def test_folder_view_and_folder_export_use_the_chosen_generators(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image

    from engine.data.synthetic import make_sample
    from engine.io.coco import load_image_results

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(make_sample(30 + i, (160, 160), kind="photo")[0]).save(folder / f"img{i + 1}.png")
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    widget.controls.generator_checks[2].setChecked(True)  # classical beside Free Mask
    widget.run_scope.set_scope("folder")
    view = widget.run_scope.folder_view
    assert view.open_folder(folder)
    qtbot.waitUntil(lambda: "img1.png" in viewer.layers, timeout=30_000)
    widget.run_button.click()  # Run whole folder
    qtbot.waitUntil(lambda: widget.run_button.isEnabled() and "img1.png · free masks" in viewer.layers,
                    timeout=120_000)
    assert _sources(viewer.layers["img1.png · free masks"]) == {"freemask", "classical"}

    view.next_button.click()  # from the cache: the merge again, never the network
    qtbot.waitUntil(lambda: "img2.png · free masks" in viewer.layers, timeout=60_000)
    assert _sources(viewer.layers["img2.png · free masks"]) == {"freemask", "classical"}
    assert widget.backbone_calls == 2

    view.prev_button.click()  # img2 is no longer shown: the export computes it from the cache
    qtbot.waitUntil(lambda: "img1.png · free masks" in viewer.layers, timeout=60_000)
    widget.export_controls.scope.setCurrentText("whole folder")
    out = tmp_path / "folder.json"
    widget.export_coco(str(out))
    qtbot.waitUntil(lambda: widget.run_button.isEnabled() and out.exists(), timeout=60_000)
    results = load_image_results(out)
    assert {m.source for m in results["img2.png"].instances} == {"freemask", "classical"}


def test_all_open_images_run_with_maskcut(make_napari_viewer, qtbot):
    from engine.data.synthetic import make_sample

    viewer = make_napari_viewer()
    viewer.add_image(make_sample(5, (160, 160), kind="photo")[0], name="a", rgb=True)
    viewer.add_image(make_sample(6, (144, 160), kind="photo")[0], name="b", rgb=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    widget.controls.generator_checks[1].setChecked(True)  # MaskCut beside Free Mask
    widget.run_scope.set_scope("all open images")
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled() and not widget.run_scope.busy
                    and "b · free masks" in viewer.layers, timeout=120_000)
    for name in ("a", "b"):
        assert _sources(viewer.layers[f"{name} · free masks"]) == {"freemask", "maskcut"}
        assert widget.state.generators_shown[name].generators == ("freemask", "maskcut")
    assert widget.backbone_calls == 2

    widget.run_scope.set_scope("current image")
    widget.layer_combo.setCurrentText("a")
    widget.controls.generator_checks[1].setChecked(False)  # Free Mask alone: 'a' updates now ...
    qtbot.waitUntil(lambda: _sources(viewer.layers["a · free masks"]) == {"freemask"}, timeout=60_000)
    assert _sources(viewer.layers["b · free masks"]) == {"freemask", "maskcut"}
    widget.layer_combo.setCurrentText("b")  # ... and 'b' catches up when picked
    qtbot.waitUntil(lambda: _sources(viewer.layers["b · free masks"]) == {"freemask"}, timeout=60_000)
    assert widget.backbone_calls == 2


def test_classical_methods_and_free_mask_weight_are_post_processing_shown_and_saved(make_napari_viewer, qtbot,
                                                                                    tmp_path, monkeypatch):
    import json

    from engine.data.synthetic import make_sample

    monkeypatch.setenv("FREESOLO_NAPARI_SETTINGS", str(tmp_path / "settings.json"))
    viewer = make_napari_viewer()
    viewer.add_image(make_sample(5, (128, 128), kind="microscopy")[0], name="nuclei", rgb=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    c = widget.controls
    assert c.classical_methods.currentText() == "auto" and c.freemask_weight.value() == 0.5
    assert c.classical_methods.toolTip() and c.freemask_weight.toolTip()
    widget.run_button.click()
    qtbot.waitUntil(lambda: "nuclei · free masks" in viewer.layers and widget.run_button.isEnabled()
                    and widget._update_worker is None, timeout=120_000)
    text = widget.auto_label.text()  # 'auto' resolved for this microscopy image, and the weight it got
    assert "+ classical (auto: microscopy)" in text and "classical: watershed, local_watershed (auto)" in text
    assert "Free Mask weight ×0.5 (microscopy)" in text

    c.classical_methods.setCurrentText("felzenszwalb")  # chosen, not auto: post-processing on the kept features
    qtbot.waitUntil(lambda: widget.state.generators_shown["nuclei"].classical == ("felzenszwalb",), timeout=60_000)
    assert "classical:" not in widget.auto_label.text() and widget.backbone_calls == 1
    c.freemask_weight.setValue(1.0)  # no down-weighting: nothing to report
    qtbot.waitUntil(lambda: widget.state.generators_shown["nuclei"].freemask_weight == 1.0, timeout=60_000)
    qtbot.waitUntil(lambda: "weight" not in widget.auto_label.text(), timeout=30_000)
    assert widget.backbone_calls == 1
    assert widget.current_generators().classical == ("felzenszwalb",)

    widget.settings.save()  # saved, and a new panel starts with them
    values = json.loads((tmp_path / "settings.json").read_text())["values"]
    assert (values["controls.classical_methods"], values["controls.freemask_weight"]) == ("felzenszwalb", 1.0)
    viewer2 = make_napari_viewer()
    _dock2, widget2 = viewer2.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    config = widget2.current_generators()
    assert (config.classical, config.freemask_weight) == (("felzenszwalb",), 1.0)
