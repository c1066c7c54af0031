"""The tiles control in a real napari viewer (Xvfb): the same tiling as ``freesolo freemask --tile``, a
feature-extraction choice (a change computes the image again, in windows), its windows in the
automatic-choices line, sliders still post-processing only."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui

MASKS = "nuclei · free masks"


def test_tiles_compute_the_image_in_windows_and_sliders_stay_post_processing(make_napari_viewer, qtbot):
    from engine.data.synthetic import make_sample
    from engine.freemask.features import Features
    from engine.generators.choices import tile_grid
    from engine.generators.image import generate_image
    from engine.generators.tiling import TiledFeatures, plan_image

    viewer = make_napari_viewer()
    image = make_sample(7, (192, 192), kind="microscopy")[0]  # small nuclei: the automatic scale is ×4
    viewer.add_image(image, name="nuclei", rgb=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    assert widget.tiling.tiling() == (None, 0)
    widget.run_button.click()
    qtbot.waitUntil(lambda: MASKS in viewer.layers and widget.run_button.isEnabled(), timeout=120_000)
    assert "tiles: none" in widget.auto_label.text() and widget.backbone_calls == 1
    assert isinstance(widget.state.features["nuclei"][1], Features)

    widget.tiling.tile.setValue(384)  # the image on screen is computed again, in windows
    plan = plan_image(image, widget.feature_config(), 384, 64)
    rows, cols = tile_grid(plan)
    assert rows * cols == len(plan.windows) > 1
    qtbot.waitUntil(lambda: f"tiles: {rows}×{cols}" in widget.auto_label.text() and widget.run_button.isEnabled(),
                    timeout=180_000)
    assert widget.backbone_calls == 1 + len(plan.windows), "one backbone pass per window"
    tiled = widget.state.features["nuclei"][1]
    assert isinstance(tiled, TiledFeatures) and tiled.plan == plan
    params, generators = widget.current_params(), widget.current_generators()
    _result, choices = generate_image(tiled, params, image, generators)
    assert widget.state.choices["nuclei"] == choices and widget.auto_label.text() == choices.text()
    assert f"input scale ×{plan.scale:.2f} (auto, objects ≈{plan.object_size:.0f} px)" in widget.auto_label.text()
    layer = viewer.layers[MASKS]
    assert layer.data.shape == image.shape[:2] and layer.data.max() > 0
    assert widget.settings.values()["tiling.tile"] == 384
    assert "turn tiles off" in widget.inspect_query(50.0, 50.0)  # query inspection needs the whole image

    shown = layer.data.copy()
    widget.tau_slider.setValue(75)  # post-processing on the windows' kept features
    qtbot.waitUntil(lambda: not np.array_equal(viewer.layers[MASKS].data, shown), timeout=60_000)
    assert widget.backbone_calls == 1 + len(plan.windows), "a τ change must not re-run the backbone"
    assert f"tiles: {rows}×{cols}" in widget.auto_label.text()

    widget.tiling.tile.setValue(0)  # off: the whole image again
    qtbot.waitUntil(lambda: "tiles: none" in widget.auto_label.text() and widget.run_button.isEnabled(),
                    timeout=120_000)
    assert widget.backbone_calls == 2 + len(plan.windows)
    assert isinstance(widget.state.features["nuclei"][1], Features)


def test_folder_run_browse_and_export_use_the_tiles(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image

    from engine.data.synthetic import make_sample
    from engine.generators.choices import tile_grid
    from engine.generators.tiling import plan_image
    from engine.io.coco import load_image_results

    folder = tmp_path / "images"
    folder.mkdir()
    images = [make_sample(20 + i, (192, 192), kind="microscopy")[0] for i in range(2)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i + 1}.png")
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    widget.tiling.tile.setValue(384)
    plans = [plan_image(image, widget.feature_config(), 384, 64) for image in images]
    assert all(p is not None and len(p.windows) > 1 for p in plans)
    widget.run_scope.set_scope("folder")
    view = widget.run_scope.folder_view
    assert view.open_folder(folder)
    qtbot.waitUntil(lambda: "img1.png" in viewer.layers, timeout=30_000)
    widget.run_button.click()  # Run whole folder: every window of every image into the cache
    qtbot.waitUntil(lambda: widget.run_button.isEnabled() and "img1.png · free masks" in viewer.layers,
                    timeout=180_000)
    assert widget.backbone_calls == sum(len(p.windows) for p in plans)
    rows, cols = tile_grid(plans[0])
    assert f"tiles: {rows}×{cols}" in widget.auto_label.text()

    view.next_button.click()  # from the cache: the windows' features, never the network
    qtbot.waitUntil(lambda: "img2.png · free masks" in viewer.layers, timeout=60_000)
    qtbot.waitUntil(lambda: f"tiles: {'×'.join(map(str, tile_grid(plans[1])))}" in widget.auto_label.text(),
                    timeout=30_000)
    assert widget.backbone_calls == sum(len(p.windows) for p in plans)

    widget.export_controls.scope.setCurrentText("whole folder")
    out = tmp_path / "folder.json"
    widget.export_coco(str(out))
    qtbot.waitUntil(lambda: widget.run_button.isEnabled() and out.exists(), timeout=60_000)
    results = load_image_results(out)
    assert results["img1.png"].instances and results["img1.png"].automatic["tiles"] == list(tile_grid(plans[0]))
