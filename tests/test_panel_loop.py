"""The correction loop in the panel: train with my corrections, then the next image to fix.

A real viewer, a real ``freesolo selftrain`` process and a real ``freesolo next-to-fix`` process
on a tiny synthetic folder (4 images of 96 px, a few iterations, cpu-small).
"""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui

ITERS = 20
STALL_LIMIT_MS = 1500  # generous on a shared 2-core machine; a GUI-thread training round would take minutes


def _sources(layer) -> set:
    return set(layer.features["source"][1:])


class Heartbeat:
    """The longest gap between ticks of a 10 ms GUI-thread timer (how long the viewer could not react)."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.timer = QTimer(interval=10)
        self.timer.timeout.connect(self._tick)
        self.gaps, self._last = [], None

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.gaps.append((now - self._last) * 1000)
        self._last = now

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *_exc):
        self.timer.stop()


@pytest.fixture
def loop_panel(make_napari_viewer, qtbot, tmp_path):
    """The panel with a folder of 4 synthetic images open, Free Mask computed for all of them."""
    from engine.data.synthetic import write_synthetic_dataset

    images, _gt = write_synthetic_dataset(tmp_path / "data", 4, seed=5, size=(96, 96), kind="cartoon")
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    view = widget.run_scope.folder_view
    assert view.open_folder(images)
    qtbot.waitUntil(lambda: view.session is not None, timeout=30_000)  # listed in a worker
    names = list(view.session.names)
    qtbot.waitUntil(lambda: view.shown == names[0], timeout=30_000)
    view.run_folder()
    qtbot.waitUntil(lambda: not widget.run_scope.busy and f"{names[0]} · free masks" in viewer.layers, timeout=120_000)
    t = widget.training
    t.out_edit.setText(str(tmp_path / "run"))
    t.rounds.setValue(1)
    t.iters.setValue(ITERS)
    t.size.setValue(96)
    t.preset.setCurrentText("cpu-small")
    return viewer, widget, names, tmp_path / "run"


def _edit(viewer, name: str, label: int, at: tuple[int, int]) -> np.ndarray:
    """Paint a square of a new label with napari's brush; the labels as painted."""
    layer = viewer.layers[f"{name} · free masks"]
    layer.brush_size = 9
    layer.paint(at, label)
    return np.asarray(layer.data).copy()


def _show(qtbot, view, viewer, index: int, name: str) -> None:
    view.show_image(index)
    qtbot.waitUntil(lambda: view.shown == name and f"{name} · free masks" in viewer.layers, timeout=30_000)


def test_train_with_my_corrections_then_next_image_to_fix(loop_panel, qtbot, make_napari_viewer):
    from engine.io.coco import load_image_results
    from engine.selftrain.layout import RunLayout
    from freesolo_napari.sections.trainer_process import is_running

    viewer, widget, names, run_dir = loop_panel
    view, t = widget.run_scope.folder_view, widget.training
    loop, run = t.loop, RunLayout(run_dir)
    assert _sources(viewer.layers[f"{names[0]} · free masks"]) <= {"freemask"}

    first = _edit(viewer, names[0], 50, (20, 20))  # corrected, then left: its edits are stored
    _show(qtbot, view, viewer, 1, names[1])
    second = _edit(viewer, names[1], 60, (70, 70))  # corrected and on screen when the round ends

    assert loop.train_with_corrections() is not None
    assert t.images_edit.text() == str(view.session.folder)  # the open folder is what gets trained on
    qtbot.waitUntil(lambda: t.is_running() or t.state == "failed", timeout=30_000)
    with Heartbeat() as beat:
        qtbot.waitUntil(lambda: not t.is_running(), timeout=300_000)
        qtbot.waitUntil(lambda: t.rounds_view.pending is not None, timeout=30_000)
    assert t.state == "finished", t.log_view.toPlainText()
    assert len(beat.gaps) > 100 and max(beat.gaps) < STALL_LIMIT_MS, max(beat.gaps)

    # the trusted labels: the two corrected images, complete, with the masks as painted
    assert loop.trusted.path == run.corrections(1) and sorted(loop.trusted.names) == sorted(names[:2])
    trusted = load_image_results(run.corrections(1))
    assert set(trusted) == set(names[:2])
    for name, painted in ((names[0], first), (names[1], second)):
        assert "edited" in {m.source for m in trusted[name].instances}  # provenance: the painted mask
        got = np.zeros(painted.shape, int)
        for i, m in enumerate(trusted[name].instances, 1):
            got[m.mask] = i
        assert len(trusted[name].instances) == len(np.unique(painted)) - 1
        assert np.array_equal(got > 0, painted > 0)
    assert run.trusted(1).read_bytes() == run.corrections(1).read_bytes()  # the round recorded what it used
    assert run.model(1).is_file() and run.predictions(1).is_file()

    # the round's masks come as a preview over the image on screen, which keeps its masks until Accept
    assert t.rounds_view.pending[0] == 1 and f"{names[1]} · round 1 preview" in viewer.layers
    assert np.array_equal(viewer.layers[f"{names[1]} · free masks"].data, second) and view.round is None
    assert "Accept round 1" in loop.status.text() and t.rounds_view.accept_button.text() == "Accept round 1"
    t.rounds_view.accept_button.click()
    # the corrected image on screen kept its masks; unedited images get the round's masks
    assert loop.pending_round is None and t.rounds_view.kept == [names[1]]
    assert np.array_equal(viewer.layers[f"{names[1]} · free masks"].data, second)
    assert view.round is not None and view.round[0] == 1
    _show(qtbot, view, viewer, 3, names[3])
    shown = viewer.layers[f"{names[3]} · free masks"]
    assert shown.data.max() >= 1 and _sources(shown) == {"model round 1"}
    assert "model round 1" in widget.status.text()
    _show(qtbot, view, viewer, 0, names[0])  # back to the first corrected image: its edits, not the round's
    assert np.array_equal(viewer.layers[f"{names[0]} · free masks"].data, first)

    # next image to fix: ranked by round 1's model in a process (which the button stops) ...
    first_try = loop.next_image()
    assert is_running(first_try) and loop.next_button.text() == "Stop ranking"
    loop.next_button.click()
    qtbot.waitUntil(lambda: not is_running(first_try), timeout=30_000)
    assert loop.status.text() == "Ranking stopped." and loop.picked is None
    assert loop.next_button.text() == "Next image to fix"
    # ... corrected images skipped
    proc = loop.next_image()
    assert proc is not None and loop.next_button.text() == "Stop ranking"
    qtbot.waitUntil(lambda: loop.picked is not None, timeout=120_000)
    picked = loop.picked
    assert picked.file_name in names[2:] and run.ranking(1).is_file()
    assert f"rank {picked.rank} of 4" in loop.status.text() and "uncertainty" in loop.status.text()
    qtbot.waitUntil(lambda: view.shown == picked.file_name, timeout=30_000)
    qtbot.waitUntil(lambda: f"{picked.file_name} · free masks" in viewer.layers, timeout=30_000)

    # correcting it makes the next click pick the other one (the saved ranking, no new process)
    third = _edit(viewer, picked.file_name, 70, (48, 48))
    loop.picked = None
    assert loop.next_image() is not proc and loop.ranker is proc
    qtbot.waitUntil(lambda: loop.picked is not None, timeout=30_000)
    assert loop.picked.file_name in names[2:] and loop.picked.rank > picked.rank  # ranked below the corrected one

    # in another panel with no folder open, Next image to fix opens the training folder (listed in a
    # worker), then picks from the saved ranking
    viewer2 = make_napari_viewer()
    _dock, widget2 = viewer2.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    widget2.training.out_edit.setText(str(run_dir))
    widget2.training.images_edit.setText(str(view.session.folder))
    assert widget2.run_scope.folder_view.session is None
    assert widget2.training.loop.next_image() is not None
    qtbot.waitUntil(lambda: widget2.training.loop.picked is not None, timeout=30_000)
    assert widget2.training.loop.picked.file_name in names and widget2.training.loop.ranker is None
    qtbot.waitUntil(lambda: widget2.run_scope.folder_view.shown == widget2.training.loop.picked.file_name,
                    timeout=30_000)
    viewer2.close()

    # a second round with the three corrected images; round 1 is kept, the round on screen loads
    assert loop.train_with_corrections() is not None
    qtbot.waitUntil(lambda: t.is_running() or t.state == "failed", timeout=30_000)
    round_1 = {p: p.read_bytes() for p in (run.model(1), run.predictions(1), run.trusted(1))}
    qtbot.waitUntil(lambda: not t.is_running(), timeout=300_000)
    qtbot.waitUntil(lambda: t.rounds_view.pending is not None, timeout=30_000)
    assert t.rounds_view.pending[0] == 2 and t.rounds_view.accept()
    assert view.round is not None and view.round[0] == 2
    assert t.state == "finished" and "--resume" in t.log_view.toPlainText(), t.log_view.toPlainText()
    assert {p: p.read_bytes() for p in round_1} == round_1
    assert set(load_image_results(run.trusted(2))) == {*names[:2], picked.file_name}
    assert run.model(2).is_file() and run.predictions(2).is_file()
    # on screen: the image picked second (not corrected), which gets round 2's masks
    assert view.shown == loop.picked.file_name and t.rounds_view.kept == [] and t.shown_round == (2, 1)
    assert _sources(viewer.layers[f"{loop.picked.file_name} · free masks"]) <= {"model round 2"}
    _show(qtbot, view, viewer, names.index(picked.file_name), picked.file_name)  # corrected: its own masks
    assert np.array_equal(viewer.layers[f"{picked.file_name} · free masks"].data, third)


def test_the_loop_plans_rounds_refuses_an_unfinished_one_and_takes_imports(loop_panel, qtbot, tmp_path):
    from engine.selftrain.layout import RunLayout

    _viewer, widget, names, run_dir = loop_panel
    t = widget.training
    loop, run = t.loop, RunLayout(run_dir)
    folder = widget.run_scope.folder_view.session.folder
    t.images_edit.setText(str(folder))
    run.round_dir(0).mkdir(parents=True)
    run.coarse().write_text("[]")
    run.round_dir(1).mkdir()
    run.predictions(1).write_text("[]")
    assert loop._plan()[1:4] == (2, True, 2)  # round 2, continuing the run, 2 rounds in all
    args = t.command(resume=True, rounds=2, labels=run.corrections(2))
    assert args[args.index("--rounds") + 1] == "2" and "--resume" in args
    assert args[args.index("--labels") + 1] == str(run.corrections(2))
    run.round_dir(2).mkdir()  # round 2 was stopped: Resume first
    assert loop.train_with_corrections() is None and "Resume" in widget.status.text()
    resume = t.command(resume=True)  # Resume finishes round 2 although the rounds field says 1
    assert t.rounds.value() == 1 and resume[resume.index("--rounds") + 1] == "2" and "--labels" not in resume
    run.round_dir(2).rmdir()
    assert loop.train_with_corrections() is not None  # nothing was corrected: one notice, nothing starts
    qtbot.waitUntil(lambda: loop.trusted is not None, timeout=30_000)
    assert loop.trusted.path is None and not t.is_running() and t.process is None
    assert "no corrected image" in widget.status.text() and not run.corrections(2).exists()
    assert loop.train_button.isEnabled()

    # imported masks count as a correction: the image on screen, complete, as imported
    from engine.io.coco import build_coco_dataset, load_image_results, write_coco
    from engine.structures import ImageResult, InstanceMask
    from freesolo_napari.corrections import write_trusted

    box = np.zeros((96, 96), bool)
    box[10:30, 40:70] = True
    write_coco(tmp_path / "mine.json", build_coco_dataset([ImageResult(names[0], 96, 96, [InstanceMask(box, 1.0)])]))
    widget.import_coco(str(tmp_path / "mine.json"))
    edited = loop._edited_open_results()
    assert [r.file_name for r in edited] == [names[0]]
    trusted = write_trusted(tmp_path / "trusted.json", edited, widget.run_scope.folder_view.session, folder)
    assert trusted.names == [names[0]] and trusted.left_out == []
    (mask,) = load_image_results(trusted.path)[names[0]].instances
    assert np.array_equal(mask.mask, box)


def test_corrections_are_named_as_the_training_folder_names_its_images(tmp_path):
    from PIL import Image

    from engine.structures import ImageResult
    from freesolo_napari.corrections import match_training_names, next_to_fix

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    results = [ImageResult(n, 8, 8, []) for n in ("a.png", "elsewhere/b.png", "z.png")]
    matched, left_out = match_training_names(results, tmp_path)
    assert [r.file_name for r in matched] == ["a.png", "b.png"]  # the same file name in the training folder
    assert left_out == ["z.png"]
    rows = [{"file_name": n, "uncertainty": u} for n, u in (("x", 0.9), ("y", 0.5), ("z", 0.1))]
    pick = next_to_fix(rows, {"x"})
    assert (pick.file_name, pick.rank, pick.total, pick.uncertainty, pick.skipped) == ("y", 2, 3, 0.5, 1)
    assert next_to_fix(rows, {"x", "y", "z"}) is None


def test_planes_of_a_stack_are_named_as_the_training_folder_names_them(tmp_path):
    import tifffile

    from engine.structures import ImageResult
    from freesolo_napari.corrections import match_training_names

    tifffile.imwrite(tmp_path / "movie.tif", np.zeros((3, 8, 8), np.uint8), imagej=True, metadata={"axes": "TYX"})
    results = [ImageResult(n, 8, 8, []) for n in ("movie.tif[t=2]", "elsewhere/movie.tif[t=0]", "other.tif[z=1]")]
    matched, left_out = match_training_names(results, tmp_path)
    assert [r.file_name for r in matched] == ["movie.tif[t=2]", "movie.tif[t=0]"]
    assert left_out == ["other.tif[z=1]"]


def test_an_edited_plane_of_a_stack_is_a_correction_the_others_are_not(make_napari_viewer, qtbot, tmp_path):
    import tifffile

    from engine.io.coco import load_image_results
    from engine.solo.data import load_training_set
    from freesolo_napari.corrections import write_trusted
    from freesolo_napari.stack_layers import computed_planes

    from engine.data.synthetic import make_sample

    folder = tmp_path / "images"
    folder.mkdir()
    stack = np.stack([make_sample(40 + k, (96, 96), kind="microscopy")[0][..., 1] for k in range(3)])
    tifffile.imwrite(folder / "movie.tif", stack, imagej=True, metadata={"axes": "TYX"})
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    viewer.open(str(folder / "movie.tif"), plugin="napari")
    for t in (0, 1):  # Free Mask on planes 0 and 1; only plane 1 is then edited
        viewer.dims.set_current_step(0, t)
        widget.run_button.click()
        qtbot.waitUntil(lambda: "movie · free masks" in viewer.layers and widget.run_button.isEnabled()
                        and not widget.run_scope.busy and widget._update_worker is None, timeout=120_000)
    layer = viewer.layers["movie · free masks"]
    qtbot.waitUntil(lambda: computed_planes(layer) == [(0,), (1,)], timeout=30_000)
    painted = np.asarray(layer.data).copy()
    painted[1, 5:25, 60:90] = painted.max() + 1  # one new mask on plane 1
    layer.data = painted
    edited = widget.training.loop._edited_open_results()
    assert [r.file_name for r in edited] == ["movie.tif[t=1]"]
    trusted = write_trusted(tmp_path / "trusted.json", edited, None, folder)
    assert trusted.names == ["movie.tif[t=1]"]
    masks = load_image_results(trusted.path)["movie.tif[t=1]"].instances
    assert any(np.array_equal(m.mask, painted[1] == painted.max()) for m in masks)
    # training reads that plane of the file with these masks as trusted labels
    samples, problems = load_training_set(folder, trusted.path, 96, trusted_json=trusted.path)
    assert not problems and [s.file_name for s in samples] == ["movie.tif[t=1]"] and samples[0].trusted

    # a round's predictions, named by plane, come back onto the stack's planes; the edited plane is kept
    from engine.io.coco import build_coco_dataset, write_coco
    from engine.selftrain.layout import RunLayout
    from engine.structures import ImageResult, InstanceMask

    box = np.zeros((96, 96), bool)
    box[40:60, 10:30] = True
    run = RunLayout(tmp_path / "run")
    run.predictions(1).parent.mkdir(parents=True)
    write_coco(run.predictions(1), build_coco_dataset(
        [ImageResult(f"movie.tif[t={t}]", 96, 96, [InstanceMask(box, 0.9)]) for t in range(3)]))
    loader = widget.training.rounds_view
    loader.run_folder = lambda: run
    loader.load(1)  # first a preview over the stack: one preview plane per round image, the masks unchanged
    qtbot.waitUntil(lambda: loader.pending is not None, timeout=30_000)
    preview = viewer.layers["movie · round 1 preview"]
    assert preview.data.shape == layer.data.shape and all(np.array_equal(preview.data[t] > 0, box) for t in range(3))
    assert np.array_equal(layer.data, painted)
    assert loader.accept()
    assert loader.shown_round == (1, 2) and "movie · round 1 preview" not in viewer.layers
    data = np.asarray(layer.data)
    assert np.array_equal(data[1], painted[1]) and loader.kept == ["movie.tif[t=1]"]
    for t in (0, 2):  # replaced / filled with the round's one mask
        assert np.array_equal(data[t] > 0, box)
    assert computed_planes(layer) == [(0,), (1,), (2,)]


def test_a_round_is_previewed_then_accepted_or_discarded(loop_panel, qtbot, make_napari_viewer):
    """A round's masks come as outlined preview layers; Discard changes nothing, Accept replaces the masks
    of images not edited (open, and in the folder browser) and keeps the edited ones."""
    from engine.io.coco import build_coco_dataset, write_coco
    from engine.selftrain.layout import RunLayout
    from engine.structures import ImageResult, InstanceMask

    viewer, widget, names, run_dir = loop_panel
    view, loader = widget.run_scope.folder_view, widget.training.rounds_view
    run = RunLayout(run_dir)
    boxes = {}
    for i, name in enumerate(names):
        boxes[name] = np.zeros((96, 96), bool)
        boxes[name][10 + 5 * i: 40 + 5 * i, 50:80] = True
    run.predictions(1).parent.mkdir(parents=True)
    write_coco(run.predictions(1), build_coco_dataset([ImageResult(n, 96, 96, [InstanceMask(b, 0.9)])
                                                       for n, b in boxes.items()]))
    masks = viewer.layers[f"{names[0]} · free masks"]
    before = np.asarray(masks.data).copy()
    assert not np.array_equal(before > 0, boxes[names[0]])

    assert loader.load(1) is not None
    qtbot.waitUntil(lambda: loader.pending is not None, timeout=30_000)
    preview = viewer.layers[f"{names[0]} · round 1 preview"]
    assert np.array_equal(preview.data > 0, boxes[names[0]]) and preview.contour > 0
    assert np.array_equal(masks.data, before), "a preview never touches the masks on screen"
    assert "preview on 1 of 4" in widget.status.text() and loader.accept_button.isEnabled()
    loader.preview_check.setChecked(False)
    assert not preview.visible
    loader.preview_check.setChecked(True)
    assert preview.visible

    assert loader.discard()  # Discard: the preview goes, nothing else changes
    assert f"{names[0]} · round 1 preview" not in viewer.layers and np.array_equal(masks.data, before)
    assert view.round is None and loader.shown_round is None and not loader.accept_button.isEnabled()
    assert "discarded" in widget.status.text()
    _show(qtbot, view, viewer, 1, names[1])
    assert f"{names[1]} · round 1 preview" not in viewer.layers  # discarded: no preview on other images either

    loader.load(1)
    qtbot.waitUntil(lambda: loader.pending is not None, timeout=30_000)
    assert [layer.name for layer in viewer.layers if "preview" in layer.name] == [f"{names[1]} · round 1 preview"]
    _show(qtbot, view, viewer, 2, names[2])  # the folder browser: each image shown gets its preview
    qtbot.waitUntil(lambda: f"{names[2]} · round 1 preview" in viewer.layers, timeout=30_000)
    assert f"{names[1]} · round 1 preview" not in viewer.layers  # its image is closed
    assert np.array_equal(viewer.layers[f"{names[2]} · round 1 preview"].data > 0, boxes[names[2]])
    painted = _edit(viewer, names[2], 40, (70, 20))  # a correction made while reviewing
    assert loader.accept()
    assert loader.kept == [names[2]] and np.array_equal(viewer.layers[f"{names[2]} · free masks"].data, painted)
    assert not [layer for layer in viewer.layers if "preview" in layer.name] and loader.pending is None
    assert view.round is not None and view.round[0] == 1 and loader.shown_round == (1, 0)
    _show(qtbot, view, viewer, 3, names[3])  # not edited: the accepted round's masks
    shown = viewer.layers[f"{names[3]} · free masks"]
    assert np.array_equal(shown.data > 0, boxes[names[3]]) and _sources(shown) == {"model round 1"}
    _show(qtbot, view, viewer, 2, names[2])  # edited: its own masks
    assert np.array_equal(viewer.layers[f"{names[2]} · free masks"].data, painted)

    # a later session on the same folder: unedited images still show the accepted round
    viewer2 = make_napari_viewer()
    _dock, widget2 = viewer2.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    view2 = widget2.run_scope.folder_view
    assert view2.open_folder(view.session.folder)
    qtbot.waitUntil(lambda: f"{names[0]} · free masks" in viewer2.layers, timeout=30_000)
    assert view2.round is not None and view2.round[0] == 1
    first = viewer2.layers[f"{names[0]} · free masks"]
    assert np.array_equal(first.data > 0, boxes[names[0]]) and _sources(first) == {"model round 1"}
    viewer2.close()


def test_next_image_to_fix_ranks_and_shows_the_planes_of_a_stack(make_napari_viewer, qtbot, tmp_path):
    """A ranking with a stack's planes (as ``freesolo next-to-fix`` writes it for a folder holding a stack):
    the most uncertain plane opens its stack on that plane; a corrected plane is skipped next time."""
    import json

    import tifffile
    from PIL import Image

    from engine.data.synthetic import make_sample
    from engine.io.stacks import Plane
    from engine.selftrain.layout import RunLayout
    from engine.structures import InstanceMask

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(make_sample(len(name), (96, 96), kind="cartoon")[0]).save(folder / name)
    tifffile.imwrite(folder / "movie.tif", np.stack([make_sample(50 + t, (96, 96), kind="microscopy")[0][..., 1]
                                                     for t in range(3)]), imagej=True, metadata={"axes": "TYX"})
    run = RunLayout(tmp_path / "run")
    for k in (0, 1):
        run.round_dir(k).mkdir(parents=True)
    run.coarse().write_text("[]")
    run.predictions(1).write_text("[]")
    run.model(1).write_bytes(b"a model")  # the saved ranking below is newer: no ranking process runs
    rows = [("movie.tif[t=2]", 0.9), ("b.png", 0.7), ("movie.tif[t=0]", 0.5), ("a.png", 0.3), ("movie.tif[t=1]", 0.1)]
    run.ranking(1).write_text(json.dumps([{"file_name": n, "uncertainty": u} for n, u in rows]))

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    t, loop, view = widget.training, widget.training.loop, widget.run_scope.folder_view
    t.out_edit.setText(str(run.root))
    t.images_edit.setText(str(folder))
    assert loop.next_image() is not None and loop.ranker is None  # the saved ranking, no process
    qtbot.waitUntil(lambda: loop.picked is not None, timeout=30_000)
    assert loop.picked.file_name == "movie.tif[t=2]" and loop.picked.rank == 1
    assert "movie" in viewer.layers and widget.current_image() == "movie"  # opened by napari's reader
    assert viewer.dims.current_step[0] == 2 and widget.current_view().key == "movie[t=2]"
    assert "'movie.tif[t=2]'" in loop.status.text() and "rank 1 of 5" in loop.status.text()

    box = np.zeros((96, 96), bool)
    box[20:50, 20:50] = True
    assert widget.import_plane("movie", [InstanceMask(box, 1.0)], Plane((("t", 2),)))  # the plane corrected
    loop.picked = None
    loop.next_image()
    qtbot.waitUntil(lambda: loop.picked is not None, timeout=30_000)
    assert loop.picked.file_name == "b.png" and loop.picked.skipped == 1
    qtbot.waitUntil(lambda: view.shown == "b.png", timeout=30_000)  # the folder browser moved to it

    viewer.dims.set_current_step(0, 1)  # the next plane of the stack, once b.png is corrected
    view.session.save_edits(view.session.paths[1], np.ones((96, 96), np.int32), {"index": np.arange(2)}, None,
                            (96, 96))
    loop.picked = None
    loop.next_image()
    qtbot.waitUntil(lambda: loop.picked is not None, timeout=30_000)
    assert loop.picked.file_name == "movie.tif[t=0]" and loop.picked.rank == 3
    assert widget.current_image() == "movie" and viewer.dims.current_step[0] == 0
