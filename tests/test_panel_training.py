"""Self-training from the panel: a real ``freesolo selftrain`` process, cancelled, resumed and loaded.

The one slow GUI test (a tiny run: 4 images of 96 px, 30 iterations, cpu-small).
"""

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

ITERS = 30


@pytest.fixture
def training_panel(make_napari_viewer, tmp_path):
    from engine.data.synthetic import write_synthetic_dataset

    images, _gt = write_synthetic_dataset(tmp_path / "data", 4, seed=5, size=(96, 96), kind="cartoon")
    viewer = make_napari_viewer()
    for path in sorted(images.glob("*.png"))[:3]:  # three of the four training images are open
        viewer.open(str(path), plugin="napari")
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    t = widget.training
    t.images_edit.setText(str(images))
    t.out_edit.setText(str(tmp_path / "run"))
    t.rounds.setValue(1)
    t.iters.setValue(ITERS)
    t.size.setValue(96)
    t.preset.setCurrentText("cpu-small")
    return viewer, widget, tmp_path / "run"


def test_bad_fields_are_one_notice_and_nothing_starts(training_panel, tmp_path):
    _viewer, widget, _run = training_panel
    t = widget.training
    t.images_edit.setText(str(tmp_path / "nowhere"))
    assert not t.start() and not t.is_running()
    assert "nowhere" in widget.status.text() and t.start_button.isEnabled()
    assert not t.start(resume=True)  # nothing to resume either
    assert t.process is None


def test_start_cancel_resume_then_load_round(training_panel, qtbot):
    from napari.layers import Labels

    viewer, widget, run = training_panel
    t = widget.training
    assert t.start()
    assert t.is_running() and not t.start_button.isEnabled() and t.cancel_button.isEnabled()
    # the GUI keeps running while the process trains: progress arrives as events
    qtbot.waitUntil(lambda: t.iteration >= 2 or not t.is_running(), timeout=150_000)
    assert t.is_running(), t.log_view.toPlainText()
    assert t.round == 1 and "round 1/1" in t.progress_label.text()
    qtbot.waitUntil(lambda: len(t.curve.iters) >= 2, timeout=10_000)  # the curve follows log.jsonl live
    t.cancel()  # SIGINT: the trainer saves a checkpoint and exits
    qtbot.waitUntil(lambda: not t.is_running(), timeout=60_000)
    assert t.state == "stopped" and "Resume" in t.progress_label.text()
    assert (run / "round_1" / "checkpoint.pt").is_file() and not (run / "round_1" / "model.pt").exists()
    stopped_at = t.iteration
    assert 2 <= stopped_at < ITERS
    assert [t.round_combo.itemData(i) for i in range(t.round_combo.count())] == [0]  # Free Mask's round only
    assert not t.start(), "Start refuses a folder that holds a run (Resume continues it)"

    t.resume_button.click()
    qtbot.waitUntil(lambda: not t.is_running(), timeout=150_000)
    assert t.state == "finished", t.log_view.toPlainText()
    assert t.iteration == ITERS and t.iters_total == ITERS and "Finished" in t.progress_label.text()
    train_steps = [e["done"] for e in t.events if e["event"] == "progress" and e["phase"] == "train"]
    assert train_steps[0] == stopped_at + 1 and train_steps[-1] == ITERS  # resumed, not restarted
    assert t.curve.iters == list(range(1, ITERS + 1))  # the loss curve read the whole log.jsonl
    assert all(np.isfinite(t.curve.values["total"]))
    log = t.log_view.toPlainText()
    assert "resuming" in log and "round 1 done" in log
    assert t.load_button.isEnabled() and t.round_combo.currentData() == 1
    assert t.load_button.text() == "Preview round 1 predictions"

    t.load_button.click()  # a preview layer over each of the three open images of the four, then Accept
    qtbot.waitUntil(lambda: t.rounds_view.pending is not None, timeout=30_000)
    previews = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert sorted(layer.name for layer in previews) == [f"img_000{i} · round 1 preview" for i in range(3)]
    t.rounds_view.accept_button.click()
    assert t.shown_round == (1, 3), widget.status.text()
    masks = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    assert len(masks) == 3
    sources = {s for layer in masks for s in layer.features["source"][1:]}
    n = sum(int(layer.data.max()) for layer in masks)
    assert n >= 1 and sources == {"model round 1"}

    # the finished run's model is offered to "Predict with model"
    assert widget.model.model_path.text() == str(run / "round_1" / "model.pt")
    widget.layer_combo.setCurrentText("img_0000")
    widget.model.predict_current()
    qtbot.waitUntil(lambda: widget.model.predict_button.isEnabled() and "from model.pt" in widget.status.text(),
                    timeout=60_000)
    layer = viewer.layers["img_0000 · free masks"]
    assert set(layer.features["source"][1:]) <= {"model"} and Path(run / "round_1" / "model.pt").is_file()


def test_closing_the_viewer_stops_training_with_a_checkpoint(training_panel, qtbot):
    viewer, widget, run = training_panel
    t = widget.training
    t.iters.setValue(5000)  # would run for minutes
    assert t.start()
    qtbot.waitUntil(lambda: t.iteration >= 1 or not t.is_running(), timeout=150_000)
    proc = t.process
    assert t.is_running(), t.log_view.toPlainText()
    viewer.close()  # the panel goes away: SIGINT, the trainer saves its checkpoint, then exits
    qtbot.waitUntil(lambda: (run / "round_1" / "checkpoint.pt").is_file(), timeout=5_000)
    with pytest.raises(RuntimeError):  # the QProcess went with the panel, after its process ended
        proc.state()


def test_round_0_is_made_with_the_free_mask_settings_on_screen(training_panel):
    """What the user tuned by eye (sliders, generators, tiles) is what the training process's round 0 uses."""
    from engine.cli import build_parser
    from engine.cli.common import feature_config_from_args, generator_config_from_args, params_from_args

    _viewer, widget, _run = training_panel
    widget.tau_slider.setValue(42)
    widget.controls.top_k.setValue(7)
    widget.controls.generator_checks[2].setChecked(True)  # classical proposals beside Free Mask
    widget.tiling.tile.setValue(512)
    args = build_parser().parse_args(widget.training.command()[2:])  # after "-m engine.cli"
    assert params_from_args(args) == widget.current_params() and params_from_args(args).tau == 0.42
    assert params_from_args(args).top_k == 7
    assert generator_config_from_args(args) == widget.current_generators()
    assert generator_config_from_args(args).generators == ("freemask", "classical")
    assert feature_config_from_args(args) == widget.feature_config()
    assert (args.tile, args.tile_overlap) == widget.tiling.tiling() == (512, widget.tiling.overlap.value())
