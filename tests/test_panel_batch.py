"""Run on all open images (progress, Cancel) and on a folder (navigation, disk cache, edits, export).

Real napari viewers under Xvfb, the real backbone, real files; small images to stay fast.
"""


import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.gui


def _panel(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    return viewer, widget


def _labels_layers(viewer):
    from napari.layers import Labels

    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def _messages():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def _idle(widget):
    return widget.run_button.isEnabled() and not widget.run_scope.busy


@pytest.fixture
def image_folder(tmp_path):
    """Three small photos, a corrupt 'image' and a text file."""
    from engine.data.synthetic import make_sample

    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate([(128, 128), (160, 128), (128, 144)]):
        Image.fromarray(make_sample(20 + i, size, kind="photo")[0]).save(folder / f"img{i + 1}.png")
    (folder / "img2b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_run_on_all_open_images_progress_and_cancel(make_napari_viewer, qtbot):
    from engine.data.synthetic import make_sample

    viewer, widget = _panel(make_napari_viewer)
    viewer.add_image(make_sample(1, (128, 128), kind="photo")[0], name="small", rgb=True)
    viewer.add_image(np.zeros((3, 4, 32, 32), np.uint8), name="stack")  # not 2D: skipped, said once
    for k in range(2):  # larger images keep the worker busy while the Cancel arrives
        viewer.add_image(make_sample(2 + k, (448, 448), kind="photo")[0], name=f"large {k}", rgb=True)
    widget.run_scope.set_scope("all open images")
    assert widget.run_button.text() == "Run on all open images" and widget.run_scope.combo.toolTip()

    seen = []

    def on_step(item):
        seen.append((widget.progress.value(), widget.progress.maximum()))
        if len(seen) == 1:
            widget.cancel_button.click()  # stop between images

    before = len(_messages())
    widget.run_button.click()
    widget.job.yielded.connect(on_step)
    assert any("stack" in m and "not a 2D image" in m for m in _messages()[before:])
    qtbot.waitUntil(lambda: _idle(widget), timeout=120_000)
    assert seen[0] == (1, 3), "determinate progress: one step per image"
    assert "Cancelled after" in widget.status.text()
    done = _labels_layers(viewer)
    assert 1 <= len(done) < 3, "Cancel stops between images"
    for layer in done:  # every shown result is complete and recorded
        name = layer.name.replace(" · free masks", "")
        assert np.array_equal(widget.state.automatic[name], layer.data) and name in widget.state.features
    assert not widget.progress.isVisible() and widget.cancel_button.isEnabled() is False

    widget.run_button.click()  # the panel is usable: a second run finishes every image
    qtbot.waitUntil(lambda: _idle(widget) and len(_labels_layers(viewer)) == 3, timeout=180_000)
    assert "Done: 3 of 3" in widget.status.text()
    assert {layer.name for layer in _labels_layers(viewer)} == {
        f"{n} · free masks" for n in ("small", "large 0", "large 1")}


def test_folder_browse_run_cache_edits_and_new_session(make_napari_viewer, qtbot, image_folder):
    viewer, widget = _panel(make_napari_viewer)
    widget.run_scope.set_scope("folder")
    view = widget.run_scope.folder_view
    assert view.isVisibleTo(widget) and widget.run_button.text() == "Run whole folder"
    assert all(w.toolTip() for w in (view.open_button, view.prev_button, view.next_button, view.position))
    assert not view.open_folder(image_folder / "missing")  # a bad folder is a message
    assert "Cannot open folder" in widget.status.text()
    empty = image_folder.parent / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    listing = view.open_folder(empty)  # listed in a worker: the GUI stays free, the message comes after
    assert listing is not None and "Listing" in widget.status.text()
    qtbot.waitUntil(lambda: "Cannot open folder" in widget.status.text(), timeout=30_000)
    assert view.session is None

    assert view.open_folder(image_folder)
    qtbot.waitUntil(lambda: "img1.png" in viewer.layers, timeout=30_000)
    assert view.position.text() == "1 / 4  img1.png"  # notes.txt is not listed
    assert not view.prev_button.isEnabled() and view.next_button.isEnabled()
    assert "no masks yet" in widget.status.text() and not _labels_layers(viewer)

    before = len(_messages())
    widget.run_button.click()  # Run whole folder
    qtbot.waitUntil(lambda: _idle(widget) and "img1.png · free masks" in viewer.layers, timeout=120_000)
    new = _messages()[before:]
    assert sum("img2b_broken.png" in m for m in new) == 1, new  # one notification per bad file ...
    assert sum("notes.txt" in m for m in new) == 1, new
    assert widget.backbone_calls == 3  # ... and the batch went on over the three good images
    assert widget.progress.maximum() == 0  # back to the busy indicator for single runs

    # the next image reopens from the cache: post-processing only, never the network
    view.next_button.click()
    qtbot.waitUntil(lambda: "img2.png · free masks" in viewer.layers, timeout=30_000)
    assert "img1.png" not in viewer.layers, "one image at a time"
    assert view.position.text() == "2 / 4  img2.png" and widget.backbone_calls == 3
    labels = viewer.layers["img2.png · free masks"]
    ids = [i for i in np.unique(labels.data) if i > 0]
    assert len(ids) >= 2
    edited = labels.data.copy()
    edited[edited == ids[0]] = 0  # the user deletes one mask and paints onto another
    edited[:5, :5] = ids[1]
    labels.data = edited
    # a brush stroke with napari's own paint tool is stored on disk on its own, without
    # leaving the image (closing napari now would not lose the edits)
    session = view.session
    assert session.load_edits(session.path) is None
    labels.selected_label = int(ids[1])
    labels.brush_size = 3
    labels.paint((20, 20), int(ids[1]))
    edited = labels.data.copy()
    qtbot.waitUntil(lambda: session.load_edits(session.path) is not None, timeout=10_000)
    assert np.array_equal(session.load_edits(session.path).labels, edited)
    labels.paint((30, 30), int(ids[1]))  # a stroke, then the viewer closes at once (it hides the panel
    edited = labels.data.copy()          # first): the pending edits are written, not lost
    view.setVisible(False)
    assert np.array_equal(session.load_edits(session.path).labels, edited)
    view.setVisible(True)

    view.next_button.click()  # the broken file: one message, the panel stays usable
    qtbot.waitUntil(lambda: "unreadable" in view.position.text(), timeout=30_000)
    assert "img2b_broken.png" in widget.status.text()
    view.next_button.click()
    qtbot.waitUntil(lambda: "img3.png · free masks" in viewer.layers, timeout=30_000)
    assert not view.next_button.isEnabled()
    view.prev_button.click()
    view.prev_button.click()  # back to img2: the edits are still there
    qtbot.waitUntil(lambda: "img2.png · free masks" in viewer.layers, timeout=30_000)
    assert np.array_equal(viewer.layers["img2.png · free masks"].data, edited)
    view.next_button.click()  # leaving img2 stores the edits on disk

    # a new session on the same folder: masks without the network, the edits kept
    viewer2, widget2 = _panel(make_napari_viewer)
    widget2.run_scope.set_scope("folder")
    view2 = widget2.run_scope.folder_view
    view2.open_folder(image_folder)
    qtbot.waitUntil(lambda: "img1.png · free masks" in viewer2.layers, timeout=30_000)
    assert widget2.backbone_calls == 0
    view2.show_image(1)
    qtbot.waitUntil(lambda: "img2.png · free masks" in viewer2.layers, timeout=30_000)
    assert np.array_equal(viewer2.layers["img2.png · free masks"].data, edited)
    assert widget2.backbone_calls == 0

    # re-running the shown folder image on its own: features from the disk cache, edits protected
    widget2.run_scope.set_scope("current image")
    assert view2.isVisibleTo(widget2), "the browser stays while a folder is open"
    asked = []
    widget2.review.confirm_replace = lambda name: asked.append(name) or False
    widget2.run_button.click()
    qtbot.waitUntil(lambda: bool(asked) and widget2.run_button.isEnabled(), timeout=60_000)
    assert asked == ["img2.png"] and "Kept your edits" in widget2.status.text()
    assert np.array_equal(viewer2.layers["img2.png · free masks"].data, edited)
    assert widget2.backbone_calls == 0


def test_folder_export_coco_and_label_images(make_napari_viewer, qtbot, image_folder, tmp_path):
    from engine.io.coco import load_image_results, read_coco

    viewer, widget = _panel(make_napari_viewer)
    widget.run_scope.set_scope("folder")
    view = widget.run_scope.folder_view
    view.open_folder(image_folder)
    qtbot.waitUntil(lambda: "img1.png" in viewer.layers, timeout=30_000)
    widget.run_button.click()
    qtbot.waitUntil(lambda: _idle(widget) and "img1.png · free masks" in viewer.layers, timeout=120_000)
    labels = viewer.layers["img1.png · free masks"]
    edited = labels.data.copy()
    edited[:4, :4] = edited.max() + 1  # a hand-painted mask on the image shown
    labels.data = edited

    ex = widget.export_controls
    assert all(w.toolTip() for w in (ex.scope, ex.format, ex.coco_button, ex.labels_button))
    ex.scope.setCurrentText("whole folder")
    ex.format.setCurrentText("polygons")
    out = tmp_path / "folder.json"
    widget.export_coco(str(out))
    qtbot.waitUntil(lambda: _idle(widget) and out.exists(), timeout=60_000)
    assert "Exported 3 image(s)" in widget.status.text()
    ds = read_coco(out)
    assert [im["file_name"] for im in ds.images] == ["img1.png", "img2.png", "img3.png"]
    assert all(isinstance(a["segmentation"], list) for a in ds.annotations)  # polygons
    res = load_image_results(out)
    assert any(m.source == "edited" for m in res["img1.png"].instances)  # the live edit
    assert all(m.source == "freemask" for m in res["img3.png"].instances)  # from the cache
    assert len(res["img3.png"].instances) >= 1

    widget.export_coco(str(out))  # never silently overwritten
    qtbot.waitUntil(lambda: _idle(widget), timeout=60_000)
    assert "already exists" in widget.status.text()

    folder = tmp_path / "labels"
    ex.export_labels(folder)
    qtbot.waitUntil(lambda: _idle(widget) and (folder / "img3.png").exists(), timeout=60_000)
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["img1.png", "img2.png", "img3.png"]
    lab = np.asarray(Image.open(folder / "img1.png"))
    assert lab.dtype == np.uint16 and lab.shape == edited.shape
    assert ((lab > 0) == (edited > 0)).all()

    asked = []
    ex.confirm_overwrite = lambda paths: asked.append(paths) or False
    ex.export_labels_asking(folder)  # the question lists the files; "no" replaces nothing
    assert len(asked[0]) == 3 and "nothing was replaced" in widget.status.text()
    ex.confirm_overwrite = lambda paths: True
    ex.export_labels_asking(folder)
    qtbot.waitUntil(lambda: _idle(widget) and (folder / "img1.png.bak").exists(), timeout=60_000)


def test_folder_browser_reuses_its_layers(make_napari_viewer, qtbot, image_folder):
    """Next and Previous put the next image into the same layers (napari collects garbage for every
    layer removed): new data and names, the panel follows, nothing of the old image carries over."""
    viewer, widget = _folder_panel(make_napari_viewer, qtbot, image_folder, "img1.png")
    view = widget.run_scope.folder_view
    widget.run_button.click()  # Run whole folder
    qtbot.waitUntil(lambda: _idle(widget) and "img1.png · free masks" in viewer.layers, timeout=120_000)
    image, labels = viewer.layers["img1.png"], viewer.layers["img1.png · free masks"]
    labels.paint((10, 10), int(labels.data.max()) + 1)  # an edit of img1, with undo history
    view.next_button.click()
    assert not labels.editable, "while the next image loads the old masks take no strokes"
    qtbot.waitUntil(lambda: "img2.png · free masks" in viewer.layers, timeout=30_000)
    assert viewer.layers["img2.png"] is image and viewer.layers["img2.png · free masks"] is labels
    assert "img1.png" not in viewer.layers and "img1.png · free masks" not in viewer.layers
    assert image.data.shape[:2] == (160, 128) == labels.data.shape and labels.editable
    assert image.metadata["file_name"] == "img2.png" and image.metadata["freesolo_path"].endswith("img2.png")
    assert np.array_equal(labels.data, widget.state.automatic["img2.png"]), "img2's own masks, not edited"
    assert widget.current_image() == "img2.png"
    assert [widget.layer_combo.itemText(i) for i in range(widget.layer_combo.count())] == ["img2.png"]
    labels.undo()  # the history of img1's strokes is gone
    assert np.array_equal(labels.data, widget.state.automatic["img2.png"])
    session = view.session
    labels.paint((20, 20), int(labels.data.max()) + 1)  # a stroke on img2 is stored as img2's
    qtbot.waitUntil(lambda: session.load_edits(session.paths[1]) is not None, timeout=10_000)
    assert session.load_edits(session.paths[0]).labels[10, 10] > 0  # img1's edit stayed img1's

    for cached in session.cache.root.glob("*.pt"):
        cached.unlink()  # img3 will have no masks
    text = viewer.layers["img2.png · maskness"]
    view.show_image(3)
    qtbot.waitUntil(lambda: view.shown == "img3.png", timeout=30_000)
    assert "no masks yet" in widget.status.text() and not _labels_layers(viewer)
    assert viewer.layers["img3.png · maskness"] is text and len(text.data) == 0, "the text layer stays, empty"
    view.show_image(1)  # back to img2: its stored edits, into the kept text layer and a new masks layer
    qtbot.waitUntil(lambda: "img2.png · free masks" in viewer.layers, timeout=30_000)
    assert viewer.layers["img2.png · maskness"] is text and len(text.data) > 0

    view.next_button.click()  # the broken file: the old layers go, nothing stale stays on screen
    qtbot.waitUntil(lambda: "unreadable" in view.position.text(), timeout=30_000)
    assert "img2.png" not in viewer.layers and not _labels_layers(viewer)


def _folder_panel(make_napari_viewer, qtbot, folder, first: str):
    """The panel set to run on ``folder``, opened in the folder browser with ``first`` shown."""
    viewer, widget = _panel(make_napari_viewer)
    widget.run_scope.set_scope("folder")
    assert widget.run_scope.folder_view.open_folder(folder)
    qtbot.waitUntil(lambda: first in viewer.layers, timeout=30_000)
    return viewer, widget


def test_cancel_mid_folder_then_run_again_resumes(make_napari_viewer, qtbot, tmp_path):
    """Cancel during 'Run whole folder' stops between images; running again computes only the rest."""
    from engine.data.synthetic import make_sample

    folder = tmp_path / "larger"
    folder.mkdir()
    for i in range(4):  # large enough that the Cancel arrives while images are left
        Image.fromarray(make_sample(40 + i, (448, 448), kind="photo")[0]).save(folder / f"img{i}.png")
    viewer, widget = _folder_panel(make_napari_viewer, qtbot, folder, "img0.png")

    done = []

    def on_step(item):
        if item[0] == "done":
            done.append(item)
            if len(done) == 1:
                widget.cancel_button.click()

    widget.run_button.click()
    widget.job.yielded.connect(on_step)
    qtbot.waitUntil(lambda: _idle(widget), timeout=120_000)
    assert "Cancelled after" in widget.status.text()
    computed = widget.backbone_calls
    assert 1 <= computed < 4, "Cancel stops between images"

    widget.run_button.click()  # again: the images already in the cache are not recomputed
    qtbot.waitUntil(lambda: _idle(widget) and "Done: 4 of 4" in widget.status.text(), timeout=120_000)
    assert widget.backbone_calls == 4, "each image's backbone ran exactly once over both runs"


def test_folder_run_of_cached_images_ends_with_every_count_shown(make_napari_viewer, qtbot, tmp_path):
    """Cached images arrive faster than the status line is redrawn (it shows the latest step at most
    every 100 ms): the run still ends with the right counts on the progress bar and status line."""
    from engine.data.synthetic import make_sample

    folder = tmp_path / "many"
    folder.mkdir()
    image = make_sample(9, (48, 48), kind="photo")[0]
    for i in range(40):  # one content: after the first image every one is a cache hit
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    viewer, widget = _folder_panel(make_napari_viewer, qtbot, folder, "img00.png")
    shown = []
    widget.progress.valueChanged.connect(shown.append)
    widget.run_button.click()
    qtbot.waitUntil(lambda: _idle(widget), timeout=120_000)
    assert "Done: 40 of 40" in widget.status.text() or "img00.png" in widget.status.text()
    counts = shown[:-1]  # the run's end sets the bar back to 0
    assert counts[-1] == 40 and counts == sorted(counts)  # the counts only go up, and the last is shown
    assert len(counts) < 40  # steps that came within 100 ms of each other were shown once (one per step before)
    assert widget.backbone_calls == 1
