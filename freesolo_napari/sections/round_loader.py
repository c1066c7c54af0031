"""Finished rounds of a self-training run folder: previewed over the open images, then accepted or discarded.

**Preview round K** (and the end of a round the correction loop started) decodes the round's COCO
file in a worker and lays its masks over every open image it names as a preview layer of its own
(``round_preview``: outlines, ``"<image> · round K preview"``; *show preview* hides or shows them
all); the masks on screen are not touched. Folder images shown while a preview is pending get
theirs as you move to them. **Accept round K** puts the round's masks into the masks layers of the
open images you did not edit (Undo last update brings the old ones back), makes them what the
folder browser shows for images without edits (``on_loaded(k, results, masks file)``; the browser
remembers it for the folder, also in later sessions) and drops the previews; images you corrected
keep your masks, without a question. **Discard** drops the previews and
changes nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from engine.selftrain.layout import RunLayout
from freesolo_napari.round_preview import PREVIEW_KEY, by_image, preview_layers, round_targets, show_preview
from freesolo_napari.sections.trainer_process import read_round


class RoundLoader(QWidget):
    """The finished rounds of ``run_folder()``; 'Preview round K', then 'Accept round K' or 'Discard'."""

    def __init__(self, ctx, run_folder: Callable[[], RunLayout | None],
                 on_loaded: Callable[[int, dict, Path | None], None] | None = None):
        super().__init__()
        self.ctx = ctx
        self.run_folder = run_folder
        self.on_loaded = on_loaded
        self.kept: list[str] = []  # images of the last accepted round that kept the user's edited masks
        self.shown_round: tuple[int, int] | None = None  # (round, images shown) of the last accepted round
        self.pending: tuple[int, dict] | None = None  # (K, {file name: ImageResult}) previewed, not accepted
        self._pending_masks: Path | None = None  # the COCO file of the round previewed last
        self._workers: list = []
        self._sync = QTimer(self, singleShot=True, interval=0)  # previews follow images opened and closed
        self._sync.timeout.connect(self.sync_previews)
        self._make_widgets()
        ctx.viewer.layers.events.inserted.connect(self._layers_changed)
        ctx.viewer.layers.events.removed.connect(self._layers_changed)
        ctx.viewer.layers.events.renamed.connect(self._layers_changed)  # the folder browser reuses its layers

    def _make_widgets(self) -> None:
        self.combo = QComboBox(toolTip="A finished round of the run folder (0 = Free Mask's coarse masks)")
        self.combo.setProperty("persist", False)  # follows the run folder
        self.load_button = QPushButton("Preview round predictions", enabled=False,
                                       toolTip="Show the chosen round's masks over the open images with the same "
                                       "file names, as preview layers; the masks on screen stay until you Accept")
        self.accept_button = QPushButton("Accept round", enabled=False,
                                         toolTip="The previewed round's masks replace those of the images you did "
                                         "not edit (open and in the folder browser); your edited images keep "
                                         "their masks. Undo last update brings an image's old masks back")
        self.discard_button = QPushButton("Discard", enabled=False,
                                          toolTip="Drop the preview: the masks on screen stay as they are")
        self.preview_check = QCheckBox("show preview", checked=True,
                                       toolTip="Show or hide the round's preview layers (outlines over the masks)")
        self.preview_check.setProperty("persist", False)  # belongs to the preview on screen
        self.load_button.clicked.connect(lambda: self.load())
        self.accept_button.clicked.connect(lambda: self.accept())
        self.discard_button.clicked.connect(lambda: self.discard())
        self.preview_check.toggled.connect(self._show_previews)
        self.combo.currentIndexChanged.connect(self._round_picked)
        row, review = QHBoxLayout(), QHBoxLayout()
        row.addWidget(self.combo, 1)
        row.addWidget(self.load_button)
        review.addWidget(self.accept_button)
        review.addWidget(self.discard_button)
        review.addWidget(self.preview_check)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(row)
        column.addLayout(review)

    def refresh(self) -> list[int]:
        run = self.run_folder()
        ks = run.finished_rounds() if run is not None else []
        before = [self.combo.itemData(i) for i in range(self.combo.count())]
        if ks == before:
            return ks
        self.combo.clear()
        for k in ks:
            self.combo.addItem(f"round {k} ({'Free Mask' if k == 0 else 'SOLO'})", k)
        if ks:
            self.combo.setCurrentIndex(len(ks) - 1)  # the newest round
        self.load_button.setEnabled(bool(ks))
        self.load_button.setText(f"Preview round {ks[self.combo.currentIndex()]} predictions" if ks
                                 else "Preview round predictions")
        return ks

    def _round_picked(self, index: int) -> None:
        k = self.combo.itemData(index)
        if k is not None:
            self.load_button.setText(f"Preview round {k} predictions")

    # ---- preview --------------------------------------------------------------------------
    def load(self, k: int | None = None):
        """Decode round ``k``'s COCO file in a worker, then preview it over the matching open images."""
        from freesolo_napari.workers import create_worker

        k = self.combo.currentData() if k is None else k
        run = self.run_folder() or RunLayout(Path())
        path = run.masks(int(k)) if k is not None else None
        self._pending_masks = path
        if path is None or not path.is_file():
            self.ctx.notify(f"No predictions for round {k} in {run.root}")
            return None
        source = "freemask round 0" if k == 0 else f"model round {k}"
        worker = create_worker(self, read_round, path, source, _ignore_errors=True)
        worker.returned.connect(lambda payload: self._preview(int(k), *payload))
        worker.errored.connect(lambda exc: self.ctx.notify(f"Cannot read {path}: {exc}"))
        self._workers.append(worker)
        worker.finished.connect(lambda: self._workers.remove(worker) if worker in self._workers else None)
        worker.start()
        return worker

    def _preview(self, k: int, results: dict, problems: list[str]) -> None:
        self._drop_previews()
        self.pending = (k, results)
        shown = self.sync_previews()
        self.accept_button.setText(f"Accept round {k}")
        self.accept_button.setEnabled(True)
        self.discard_button.setEnabled(True)
        text = (f"Round {k}: preview on {shown} of {len(results)} image(s) of the run (outlined). Accept round {k} "
                "puts its masks on the images you did not edit; Discard keeps what is on screen")
        if not shown:
            text += " (open the training images to see them)"
        if problems:
            text += f"; {len(problems)} entries skipped"
        self.ctx.set_status(text)

    def sync_previews(self) -> int:
        """Previews for the open images of the pending round that have none, none for closed images;
        returns how many images show a preview."""
        viewer = self.ctx.viewer
        for layer in preview_layers(viewer):
            image, k = layer.metadata[PREVIEW_KEY]
            if self.pending is None or k != self.pending[0] or image not in viewer.layers:
                viewer.layers.remove(layer)
        if self.pending is None:
            return 0
        k, results = self.pending
        have = {layer.metadata[PREVIEW_KEY][0] for layer in preview_layers(viewer)}
        for image, targets in by_image(round_targets(viewer, self.ctx.state, results)).items():
            if image not in have:
                show_preview(viewer, self.ctx.state, k, image, targets).visible = self.preview_check.isChecked()
                have.add(image)
        return len(have)

    def _layers_changed(self, _event=None) -> None:
        if self.pending is None:
            return
        try:
            self._sync.start()
        except RuntimeError:  # the panel is gone while the viewer lives on
            self.pending = None

    def _show_previews(self, on: bool) -> None:
        for layer in preview_layers(self.ctx.viewer):
            layer.visible = on

    def _drop_previews(self) -> None:
        for layer in preview_layers(self.ctx.viewer):
            self.ctx.viewer.layers.remove(layer)

    def _end_review(self) -> None:
        self.pending = None
        self._drop_previews()
        self.accept_button.setEnabled(False)
        self.discard_button.setEnabled(False)

    # ---- accept or discard ----------------------------------------------------------------
    def accept(self) -> bool:
        """The pending round's masks onto the open images not edited (planes of stacks included), and the
        folder browser's; the previews go. False: nothing to accept."""
        if self.pending is None:
            return False
        k, results = self.pending
        shown, self.kept = 0, []
        for t in round_targets(self.ctx.viewer, self.ctx.state, results):
            if self.ctx.review.is_edited(t.image, t.index):
                self.kept.append(t.file_name)
                continue
            shown += int(self.ctx.show_instances(t.image, t.result.instances, t.plane if t.index else None))
        self._end_review()
        if self.on_loaded is not None:
            self.on_loaded(k, results, self._pending_masks)
        text = f"Round {k} accepted: its masks shown on {shown} of {len(results)} image(s) of the run"
        if self.kept:
            text += f"; your corrected masks kept on {len(self.kept)}"
        self.ctx.set_status(text + "; the folder browser shows them on images without edits")
        self.shown_round = (k, shown)
        return True

    def discard(self) -> bool:
        """Drop the pending round's previews; nothing on screen or in the folder browser changes."""
        if self.pending is None:
            return False
        k = self.pending[0]
        self._end_review()
        self.ctx.set_status(f"Round {k} discarded: the masks on screen are unchanged.")
        return True
