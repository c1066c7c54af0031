"""Reviewing masks: colour by score or by source, never replacing edits without asking, undo of
automatic updates.

Every automatic update of a Labels layer (a run, a slider change, a batch result) goes through
``allow_update`` first: it asks before replacing masks the user edited since the last automatic
update, and records what the layer held so that **Undo last update** can bring it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QMessageBox, QPushButton, QVBoxLayout, QWidget

from freesolo_napari.layers import color_labels, labels_name, points_name, set_labels, source_color
from freesolo_napari.stack_layers import restore_stack, stack_planes

MAX_UNDO = 10


@dataclass
class _Snapshot:
    name: str  # image layer name
    labels: np.ndarray | None  # None: the Labels layer did not exist before the update
    table: object = None
    automatic: np.ndarray | None = None
    planes: dict | None = None  # a stack's plane tables (``stack_layers.PLANES_KEY``); None: a 2-D image


class ReviewControls(QWidget):
    """'colour by score', 'colour by source' (one or neither) and 'Undo last update', plus the
    replace-my-edits question.

    ``confirm_replace(image_name) -> bool`` decides whether edited masks may be replaced; it
    asks with a dialog by default and can be swapped (tests, scripts).
    """

    def __init__(self, viewer, state, set_status: Callable[[str], None]):
        super().__init__()
        self.viewer, self.state, self.set_status = viewer, state, set_status
        self.color_check = QCheckBox("colour by score", toolTip="Colour each mask by its score (viridis: dark = low, "
                                     "yellow = high) instead of random label colours")
        self.source_check = QCheckBox("colour by source", toolTip="Colour each mask by the generator that made it "
                                      "(Free Mask orange, MaskCut blue, classical green, edited pink; others "
                                      "one colour each) instead of random label colours")
        self.color_check.toggled.connect(lambda on: self._exclusive(on, self.source_check))
        self.source_check.toggled.connect(lambda on: self._exclusive(on, self.color_check))
        self.legend = QLabel(visible=False, wordWrap=True, toolTip="The colour of each source on the masks layers")
        self.undo_button = QPushButton("Undo last update", enabled=False,
                                       toolTip="Bring back the masks (and their table) from before the last "
                                       "automatic update")
        self.undo_button.clicked.connect(self.undo)
        self.confirm_replace: Callable[[str], bool] = self._ask_replace
        self._history: list[_Snapshot] = []
        self._asking = False
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.color_check)
        row.addWidget(self.source_check)
        row.addWidget(self.undo_button)
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(row)
        column.addWidget(self.legend)

    # ---- edits ----------------------------------------------------------------------------
    def is_edited(self, name: str, index: tuple[int, ...] = ()) -> bool:
        """Whether the masks of image ``name`` (of its plane ``index``, for a stack) differ from its last
        automatic result (imported or hand-made masks with no automatic result count as edited)."""
        viewer = self.viewer
        if labels_name(name) not in viewer.layers:
            return False
        data = np.asarray(viewer.layers[labels_name(name)].data)
        auto = self.state.automatic.get(name)
        if index and data.ndim == len(index) + 2:  # one plane of a stack's masks
            data, auto = data[index], (auto[index] if auto is not None and auto.shape == data.shape else auto)
        if auto is None:
            return bool(data.any())
        return auto.shape != data.shape or not np.array_equal(auto, data)

    def allow_update(self, name: str, index: tuple[int, ...] = ()) -> bool:
        """Called before an automatic update replaces the masks of ``name`` (its plane ``index``); False = keep them."""
        viewer = self.viewer
        lname = labels_name(name)
        if lname not in viewer.layers:
            self._push(_Snapshot(name, None))
            return True
        if self.is_edited(name, index):
            if self._asking:  # a newer update while the question is open: keep what is there
                return False
            self._asking = True
            try:
                keep = not self.confirm_replace(name)
            finally:
                self._asking = False
            if keep:
                self.set_status(f"Kept your edits on '{name}': the automatic update was not applied "
                                          "(Run again to be asked again).")
                return False
        layer = viewer.layers[lname]
        auto = self.state.automatic.get(name)
        planes = stack_planes(layer)
        self._push(_Snapshot(name, np.asarray(layer.data).copy(), layer.features.copy(),
                             None if auto is None else auto.copy(), None if planes is None else dict(planes)))
        return True

    def after_update(self, labels_layer) -> None:
        """Called after the masks of a layer changed: apply the colouring."""
        by = self.coloring()
        if by is not None:
            color_labels(labels_layer, by)
        if by == "source":
            self._show_legend()

    def coloring(self) -> str | None:
        """What the masks are coloured by: 'score', 'source' or None (napari's random colours)."""
        return "score" if self.color_check.isChecked() else "source" if self.source_check.isChecked() else None

    def forget(self, name: str) -> None:
        """Drop the undo history of an image that is no longer shown."""
        self._history = [s for s in self._history if s.name != name]
        self.undo_button.setEnabled(bool(self._history))

    def _push(self, snap: _Snapshot) -> None:
        self._history = (self._history + [snap])[-MAX_UNDO:]
        self.undo_button.setEnabled(True)

    def undo(self) -> bool:
        """Restore the masks from before the last automatic update; False if nothing was done."""
        if not self._history:
            return False
        snap = self._history[-1]
        viewer, automatic = self.viewer, self.state.automatic
        if self.is_edited(snap.name) and not self.confirm_replace(snap.name):
            self.set_status(f"Kept your edits on '{snap.name}'; nothing undone.")
            return False
        self._history.pop()
        self.undo_button.setEnabled(bool(self._history))
        if snap.labels is None:  # the update created the layer: undo removes it
            for layer_name in (labels_name(snap.name), points_name(snap.name)):
                if layer_name in viewer.layers:
                    viewer.layers.remove(layer_name)
            automatic.pop(snap.name, None)
        else:
            if snap.planes is not None and labels_name(snap.name) in viewer.layers:
                layer = restore_stack(viewer, snap.name, snap.labels, snap.planes)
            else:
                layer = set_labels(viewer, snap.name, snap.labels, snap.table)
            if snap.automatic is None:
                automatic.pop(snap.name, None)
            else:
                automatic[snap.name] = snap.automatic
            self.after_update(layer)
        self.set_status(f"Undone: '{snap.name}' shows its masks from before the last automatic update.")
        return True

    # ---- colour ---------------------------------------------------------------------------
    def _exclusive(self, on: bool, other: QCheckBox) -> None:
        if on and other.isChecked():
            other.setChecked(False)  # its own signal recolours with this box's colouring
        self._recolor_all()

    def _masks_layers(self) -> list:
        from napari.layers import Labels

        return [layer for layer in self.viewer.layers if isinstance(layer, Labels) and layer.name.endswith(labels_name(""))]

    def _recolor_all(self) -> None:
        by = self.coloring()
        for layer in self._masks_layers():
            color_labels(layer, by)
        self._show_legend()

    def _show_legend(self) -> None:
        """Colour by source: a coloured square and the name of every source on the masks layers."""
        on = self.source_check.isChecked()
        sources = sorted({str(s) for layer in self._masks_layers() if "source" in layer.features.columns
                          for s in layer.features["source"]} - {"background"}) if on else []
        swatches = []
        for source in sources:
            r, g, b = (round(255 * c) for c in source_color(source)[:3])
            swatches.append(f'<span style="color: #{r:02x}{g:02x}{b:02x}">■</span> {source}')
        self.legend.setText(" &nbsp; ".join(swatches))
        self.legend.setVisible(bool(sources))

    def _ask_replace(self, name: str) -> bool:
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("FreeSOLO")
        box.setText(f"The masks of '{name}' were edited (or imported) since the last automatic update.\n"
                    "Replace them with the new automatic masks?")
        box.setInformativeText("Undo last update brings them back afterwards.")
        replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
        keep = box.addButton("Keep my edits", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(keep)
        box.exec()
        return box.clickedButton() is replace
