"""Stacks (3-D, time-lapse) plane by plane in the panel, and the channel choice of RGB / multi-channel images.

Real napari viewers under Xvfb and the real backbone; small planes to stay fast.
"""

import numpy as np
import pytest

SIZE = 96
MASKS = "cells · free masks"


def _planes(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """n different grey nucleus-like planes (uint8)."""
    from engine.data.synthetic import make_sample

    return np.stack([make_sample(seed + k, (size, size), kind="microscopy")[0][..., 1] for k in range(n)])


def _panel(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    return viewer, widget


def _idle(widget):
    return widget.run_button.isEnabled() and not widget.run_scope.busy and widget._update_worker is None


def _filled(layer) -> list[int]:
    return [k for k in range(layer.data.shape[0]) if layer.data[k].any()]


# ---- Qt-free pieces ------------------------------------------------------------------------------
def test_views_are_keyed_by_plane_and_channel():
    from freesolo_napari.planes import Layout, View, default_letters, plane_image

    assert View("photo").key == "photo"  # a 2-D image in colour keeps its name as its key
    assert View("cells", (3,), None, ("z",)).key == "cells[z=3]"
    assert View("movie", (1, 0), 2, ("t", "z")).key == "movie[t=1,z=0][c=2]"
    assert View("cells", (3,), 1, ("z",)).file_name("cells.tif") == "cells.tif[z=3]"  # channels are not in names
    assert default_letters(1) == ("z",) and default_letters(2) == ("t", "z") and default_letters(0) == ()
    stack = _planes(3)
    first = plane_image(stack, Layout((3,)), (2,))
    assert first.shape == (SIZE, SIZE, 3) and np.array_equal(first[..., 0], stack[2])  # plane 2, not plane 0
    rgb = np.stack([stack[0], stack[1], stack[2]], axis=-1)
    grey = plane_image(rgb, Layout((), "rgb", 3), (), 1)
    assert np.array_equal(grey[..., 0], stack[1]) and np.array_equal(grey[..., 2], stack[1])
    with pytest.raises(ValueError, match="channel 3"):
        plane_image(rgb, Layout((), "rgb", 3), (), 3)


def test_axis_letters_come_from_the_tiff_then_napari_labels(tmp_path):
    import tifffile

    from freesolo_napari.planes import axis_letters

    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, _planes(3), imagej=True, metadata={"axes": "TYX"})

    class Layer:  # the two things axis_letters reads of a napari layer
        ndim = 3

        def __init__(self, path=None):
            self.source = type("Source", (), {"path": path})()

    assert axis_letters(Layer(str(path)), (3,)) == ("t",)  # what `freesolo freemask movie.tif` names
    assert axis_letters(Layer(str(path)), (4,)) == ("z",)  # not that file's shape: the default
    assert axis_letters(Layer(), (3,), ("C", "y", "x")) == ("c",)  # napari's labels when they are letters
    assert axis_letters(Layer(), (3,), ("-3", "-2", "-1")) == ("z",)


# ---- the panel -----------------------------------------------------------------------------------
@pytest.mark.gui
def test_stack_runs_the_plane_on_screen_and_masks_follow_the_slider(make_napari_viewer, qtbot, tmp_path):
    from engine.io.coco import load_image_results

    viewer, widget = _panel(make_napari_viewer)
    stack = _planes(4)
    viewer.add_image(stack, name="cells")
    assert widget.current_image() == "cells"
    viewer.dims.set_current_step(0, 1)
    widget.run_button.click()  # the plane on screen, not "not a 2D image"
    qtbot.waitUntil(lambda: MASKS in viewer.layers and _idle(widget), timeout=120_000)
    labels = viewer.layers[MASKS]
    assert labels.data.shape == (4, SIZE, SIZE), "one nD Labels layer with the image's leading shape"
    assert _filled(labels) == [1] and widget.backbone_calls == 1
    image, _feats = widget.state.features["cells[z=1]"]
    assert np.array_equal(image[..., 0], stack[1]), "the backbone saw plane 1"
    assert viewer.layers["cells · maskness"].ndim == 3  # the maskness text sits on its plane

    viewer.dims.set_current_step(0, 3)  # a plane never computed: no masks, and the status says so
    assert "no masks yet" in widget.status.text() and "cells[z=3]" in widget.status.text()
    assert len(labels.features) == 1  # its (empty) table, not plane 1's
    widget.run_button.click()
    qtbot.waitUntil(lambda: 3 in _filled(labels) and _idle(widget), timeout=120_000)
    assert _filled(labels) == [1, 3] and widget.backbone_calls == 2
    plane1, plane3 = labels.data[1].copy(), labels.data[3].copy()
    assert len(labels.features) - 1 >= int(plane3.max())  # the table of the plane on screen

    asked = []
    widget.review.confirm_replace = lambda name: asked.append(name) or True
    data = labels.data.copy()
    data[0, 10:20, 10:20] = 7  # the user paints on plane 0: updates of other planes never ask about it
    labels.data = data

    calls = widget.state.extractor.backbone_calls
    widget.tau_slider.setValue(85)  # τ on a stack: post-processing of the plane on screen only
    qtbot.waitUntil(lambda: widget.state.params_shown.get("cells[z=3]") == widget.current_params()
                    and _idle(widget), timeout=30_000)
    assert (labels.data[3] > 0).sum() < (plane3 > 0).sum()
    assert np.array_equal(labels.data[1], plane1), "other planes keep their masks until shown"
    viewer.dims.set_current_step(0, 1)  # plane 1 catches up (post-processing only)
    qtbot.waitUntil(lambda: widget.state.params_shown.get("cells[z=1]") == widget.current_params()
                    and _idle(widget), timeout=30_000)
    assert (labels.data[1] > 0).sum() < (plane1 > 0).sum()
    assert widget.state.extractor.backbone_calls == calls and widget.backbone_calls == 2
    assert len(labels.features) - 1 >= int(labels.data[1].max())
    assert np.array_equal(widget.state.automatic["cells"][1:], labels.data[1:]) and not asked

    out = tmp_path / "stack.json"
    widget.export_coco(str(out), scope="current image")
    results = load_image_results(out)
    assert sorted(results) == ["cells.png[z=0]", "cells.png[z=1]", "cells.png[z=3]"], "one image per plane with masks"
    assert len(results["cells.png[z=1]"].instances) == len(np.unique(labels.data[1])) - 1
    assert [m.source for m in results["cells.png[z=0]"].instances] == ["edited"]

    assert widget.review.undo()  # the last automatic update (plane 1's catch-up) is undone, with its table
    assert np.array_equal(labels.data[1], plane1) and labels.data[0].any()
    assert len(labels.features) - 1 >= int(plane1.max())


@pytest.mark.gui
def test_all_planes_fills_every_plane_and_cancel_stops_between_planes(make_napari_viewer, qtbot):
    viewer, widget = _panel(make_napari_viewer)
    n = 6
    viewer.add_image(_planes(n, seed=40, size=160), name="cells")
    widget.run_scope.set_scope("all planes of this image")
    assert widget.run_button.text() == "Run on all planes"
    seen = []

    def on_step(item):
        seen.append((widget.progress.value(), widget.progress.maximum()))
        if len(seen) == 1:
            widget.cancel_button.click()  # stop between planes

    widget.run_button.click()
    widget.job.yielded.connect(on_step)
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: _idle(widget), timeout=180_000)
    assert seen[0] == (1, n), "determinate progress: one step per plane"
    assert "Cancelled after" in widget.status.text()
    labels = viewer.layers[MASKS]
    done = _filled(labels)
    assert 1 <= len(done) < n, "Cancel stops between planes"
    assert widget.backbone_calls == len(done)
    for k in done:  # every plane shown is complete and recorded
        assert f"cells[z={k}]" in widget.state.features
        assert np.array_equal(widget.state.automatic["cells"][k], labels.data[k])

    widget.run_button.click()  # again: the rest of the planes; those computed cost post-processing only
    qtbot.waitUntil(lambda: _idle(widget) and len(_filled(labels)) == n, timeout=300_000)
    assert f"Done: {n} of {n} plane(s)" in widget.status.text()
    assert widget.backbone_calls == n, "planes with features are not sent through the backbone again"
    assert {f"cells[z={k}]" for k in range(n)} <= set(widget.state.features)


@pytest.mark.gui
def test_tiff_stack_exports_planes_named_like_the_command_line(make_napari_viewer, qtbot, tmp_path):
    import tifffile

    from engine.io.coco import load_image_results

    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, _planes(3, seed=60), imagej=True, metadata={"axes": "TYX"})
    viewer, widget = _panel(make_napari_viewer)
    viewer.open(str(path), plugin="napari")
    assert widget.current_image() == "movie"
    viewer.dims.set_current_step(0, 2)
    widget.run_button.click()
    qtbot.waitUntil(lambda: "movie · free masks" in viewer.layers and _idle(widget), timeout=120_000)
    assert "movie[t=2]" in widget.state.features, "the TIFF's own axis letter, not the default z"
    out = tmp_path / "movie.json"
    widget.export_coco(str(out), scope="current image")
    assert list(load_image_results(out)) == ["movie.tif[t=2]"]
    assert load_image_results(out)["movie.tif[t=2]"].automatic == widget.state.choices["movie[t=2]"].as_dict()


@pytest.mark.gui
def test_channel_choice_makes_grey_input_and_is_cached_per_channel(make_napari_viewer, qtbot):
    from engine.data.synthetic import make_sample
    from engine.io.images import to_uint8_rgb

    viewer, widget = _panel(make_napari_viewer)
    photo = make_sample(7, (SIZE, SIZE), kind="photo")[0]
    viewer.add_image(photo, name="photo", rgb=True)
    combo = widget.run_scope.channel
    assert combo.isVisibleTo(widget) and combo.toolTip()
    assert [combo.itemText(i) for i in range(combo.count())] == ["all (colour)", "0", "1", "2"]
    widget.run_button.click()
    qtbot.waitUntil(lambda: "photo" in widget.state.features and _idle(widget), timeout=120_000)
    widget.run_scope.set_channel("1")
    assert "no masks yet" in widget.status.text() and "photo[c=1]" in widget.status.text()
    widget.run_button.click()  # a new backbone pass, on the green channel alone, as grey
    qtbot.waitUntil(lambda: "photo[c=1]" in widget.state.features and _idle(widget), timeout=120_000)
    grey = widget.state.features["photo[c=1]"][0]
    assert all(np.array_equal(grey[..., c], photo[..., 1]) for c in range(3))
    assert widget.backbone_calls == 2 and np.array_equal(widget.state.features["photo"][0], photo)
    widget.run_scope.set_channel("all (colour)")  # back to colour: its features are kept
    qtbot.wait(200)
    assert widget.backbone_calls == 2 and widget.state.params_shown["photo"] == widget.current_params()

    fluo = _planes(3, seed=80)  # (C, Y, X): a stack of 3 planes unless the user picks its channels
    viewer.add_image(fluo, name="fluo")
    widget.layer_combo.setCurrentText("fluo")
    assert combo.currentText() == "none: a stack of planes" and widget.current_view().key.startswith("fluo[z=")
    widget.run_scope.set_channel("2")
    assert widget.current_view().key == "fluo[c=2]"
    widget.run_button.click()
    qtbot.waitUntil(lambda: "fluo[c=2]" in widget.state.features and _idle(widget), timeout=120_000)
    assert np.array_equal(widget.state.features["fluo[c=2]"][0], to_uint8_rgb(fluo[2]))
    assert viewer.layers["fluo · free masks"].data.shape == (SIZE, SIZE)  # one 2-D image now
    widget.layer_combo.setCurrentText("photo")
    assert combo.currentText() == "all (colour)", "each image keeps its own channel choice"


@pytest.mark.gui
def test_coco_import_puts_each_plane_back_onto_its_plane_of_the_stack(make_napari_viewer, qtbot, tmp_path):
    import json

    import tifffile

    from engine.io.coco import load_image_results
    from freesolo_napari.stack_layers import computed_planes

    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, _planes(3, seed=70), imagej=True, metadata={"axes": "TYX"})
    viewer, widget = _panel(make_napari_viewer)
    viewer.open(str(path), plugin="napari")
    for t in (0, 2):  # Free Mask on planes 0 and 2; plane 1 stays empty
        viewer.dims.set_current_step(0, t)
        widget.run_button.click()
        qtbot.waitUntil(lambda: "movie · free masks" in viewer.layers and _idle(widget), timeout=120_000)
    layer = viewer.layers["movie · free masks"]
    qtbot.waitUntil(lambda: computed_planes(layer) == [(0,), (2,)], timeout=30_000)
    exported = np.asarray(layer.data).copy()
    assert exported[0].any() and exported[2].any() and not exported[1].any()
    out = tmp_path / "movie.json"
    widget.export_coco(str(out), scope="current image")
    assert sorted(load_image_results(out)) == ["movie.tif[t=0]", "movie.tif[t=2]"]

    layer.data = np.zeros_like(exported)  # cleared ...
    viewer.dims.set_current_step(0, 1)
    widget.import_coco(str(out))  # ... and imported: each plane's masks onto its own plane
    assert "Imported masks for 2 image(s)" in widget.status.text(), widget.status.text()
    back = np.asarray(viewer.layers["movie · free masks"].data)
    for t in (0, 2):  # the same masks (numbered by the file's order) on the same planes
        assert np.array_equal(back[t] > 0, exported[t] > 0)
        assert len(np.unique(back[t])) == len(np.unique(exported[t]))
    assert not back[1].any()
    # imported planes are not automatic results: they count as corrections
    assert [r.file_name for r in widget.training.loop._edited_open_results()] == ["movie.tif[t=0]", "movie.tif[t=2]"]

    wrong = tmp_path / "wrong.json"  # a plane the stack does not have is a problem, never fatal
    data = json.loads(out.read_text())
    data["images"][0]["file_name"] = "movie.tif[t=7]"
    wrong.write_text(json.dumps(data))
    widget.import_coco(str(wrong))
    assert "Imported masks for 1 image(s)" in widget.status.text() and "movie.tif[t=7]" in widget.status.text()
