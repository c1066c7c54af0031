"""Finished rounds of a self-training run folder, loaded onto the open images whose file names match.

``on_loaded(k, results)`` hears of every loaded round (the folder browser shows its masks on the
folder's images as you move to them). With ``keep_edited`` (the correction loop) images whose
masks the user edited keep them, without a question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QPushButton, QWidget

from engine.io.stacks import split_plane_name
from engine.selftrain.layout import RunLayout
from freesolo_napari.exchange import image_file_name
from freesolo_napari.planes import layer_array, plane_view
from freesolo_napari.sections.trainer_process import read_round


class RoundLoader(QWidget):
    """The finished rounds of ``run_folder()`` and 'Load round K predictions' (source "model round K")."""

    def __init__(self, ctx, run_folder: Callable[[], RunLayout | None],
                 on_loaded: Callable[[int, dict], None] | None = None):
        super().__init__()
        self.ctx = ctx
        self.run_folder = run_folder
        self.on_loaded = on_loaded
        self.kept: list[str] = []  # images of the last load that kept the user's edited masks
        self.shown_round: tuple[int, int] | None = None  # (round, images shown) of the last load
        self._workers: list = []
        self.combo = QComboBox(toolTip="A finished round of the run folder (0 = Free Mask's coarse masks)")
        self.combo.setProperty("persist", False)  # follows the run folder
        self.load_button = QPushButton("Load round predictions", enabled=False,
                                       toolTip="Show the chosen round's masks on the open images with the same file names")
        self.load_button.clicked.connect(lambda: self.load())
        self.combo.currentIndexChanged.connect(self._round_picked)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.load_button)

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
        self.load_button.setText(f"Load round {ks[self.combo.currentIndex()]} predictions" if ks
                                 else "Load round predictions")
        return ks

    def _round_picked(self, index: int) -> None:
        k = self.combo.itemData(index)
        if k is not None:
            self.load_button.setText(f"Load round {k} predictions")

    def load(self, k: int | None = None, keep_edited: bool = False):
        """Decode round ``k``'s COCO file in a worker, then show it on the matching open images
        (``keep_edited``: not on those whose masks the user edited)."""
        from freesolo_napari.workers import create_worker

        k = self.combo.currentData() if k is None else k
        run = self.run_folder() or RunLayout(Path())
        path = run.masks(int(k)) if k is not None else None
        if path is None or not path.is_file():
            self.ctx.notify(f"No predictions for round {k} in {run.root}")
            return None
        source = "freemask round 0" if k == 0 else f"model round {k}"
        worker = create_worker(self, read_round, path, source, _ignore_errors=True)
        worker.returned.connect(lambda payload: self._show(int(k), *payload, keep_edited=keep_edited))
        worker.errored.connect(lambda exc: self.ctx.notify(f"Cannot read {path}: {exc}"))
        self._workers.append(worker)
        worker.finished.connect(lambda: self._workers.remove(worker) if worker in self._workers else None)
        worker.start()
        return worker

    def _show(self, k: int, results: dict, problems: list[str], keep_edited: bool = False) -> None:
        layers = _image_layers_by_file(self.ctx.viewer)
        shown, self.kept = 0, []
        for name, res in results.items():
            base, plane = split_plane_name(name)  # a stack's plane: movie.tif[t=2]
            layer = layers.get(base) or layers.get(Path(base).name) or layers.get(Path(base).stem)
            if layer is None:
                continue
            if plane.index:
                view = plane_view(self.ctx.viewer, layer, self.ctx.state, plane)
                if view is not None and keep_edited and self.ctx.review.is_edited(layer.name, view.index):
                    self.kept.append(name)
                elif view is not None:
                    shown += int(self.ctx.show_instances(layer.name, res.instances, plane))
                continue
            if layer_array(layer).shape[:2] != (res.height, res.width):
                continue
            if keep_edited and self.ctx.review.is_edited(layer.name):
                self.kept.append(layer.name)
                continue
            shown += int(self.ctx.show_instances(layer.name, res.instances))
        if self.on_loaded is not None:
            self.on_loaded(k, results)
        text = f"Round {k}: masks shown on {shown} of {len(results)} image(s) of the run"
        if self.kept:
            text += f"; your corrected masks kept on {len(self.kept)}"
        if not shown and not self.kept:
            text += " (open the training images to see them)"
        if problems:
            text += f"; {len(problems)} entries skipped"
        self.ctx.set_status(text)
        self.shown_round = (k, shown)


def _image_layers_by_file(viewer) -> dict:
    """Open image layers by file name, file stem and layer name (the first layer wins)."""
    from napari.layers import Image

    layers = {}
    for layer in viewer.layers:
        if isinstance(layer, Image):
            for key in (image_file_name(layer), Path(image_file_name(layer)).stem, layer.name):
                layers.setdefault(key, layer)
    return layers
